# One image for the train, eval and tensorboard services (compose.cpu.yml, docker-compose.yml).
# It installs the project as the README does: torch first, then the project.
FROM python:3.11-slim

# Where torch comes from is chosen by scripts/torch-index, as `make` chooses it: TORCH_INDEX=auto picks
# PyPI's CUDA build where nvidia-smi sees a GPU (which a plain `docker build` never does) and PyTorch's
# CPU index elsewhere; a URL, or empty for PyPI, overrides. The compose files pass PyPI (TORCH_INDEX in
# .env), since their trainer gets a GPU; for a small CPU-only image:
#   --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cpu
ARG TORCH=torch
ARG TORCH_INDEX=auto

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN useradd --create-home --uid 1000 trainval
WORKDIR /app
COPY pyproject.toml README.md ./
COPY shared ./shared
COPY scripts/torch-index ./scripts/
RUN index="$(TORCH_INDEX="$TORCH_INDEX" scripts/torch-index)" \
    && pip install ${index:+--index-url "$index"} "$TORCH" \
    && pip install .
COPY train.py eval.py ./
COPY configs ./configs

# A new named volume takes the owner of its mount point from the image: the non-root user can write it.
RUN mkdir -p /runs && chown trainval:trainval /runs
USER trainval
VOLUME /runs
