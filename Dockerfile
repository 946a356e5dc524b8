# One image for the train, eval and tensorboard services (compose.cpu.yml, docker-compose.yml).
# It installs the project as the README does: torch first, then the project.
FROM python:3.11-slim

# The default PyPI torch wheel carries CUDA. For a small CPU-only image:
#   --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cpu   (or TORCH_INDEX in .env)
ARG TORCH=torch
ARG TORCH_INDEX=https://pypi.org/simple

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN useradd --create-home --uid 1000 trainval
WORKDIR /app
COPY pyproject.toml README.md ./
COPY shared ./shared
RUN pip install --index-url "$TORCH_INDEX" --extra-index-url https://pypi.org/simple "$TORCH" \
    && pip install .
COPY train.py eval.py ./
COPY configs ./configs

# A new named volume takes the owner of its mount point from the image: the non-root user can write it.
RUN mkdir -p /runs && chown trainval:trainval /runs
USER trainval
VOLUME /runs
