# One image for the train, eval and tensorboard services (see docker-compose.yml).
FROM python:3.11-slim

# The default PyPI torch wheel carries CUDA; pass --build-arg TORCH=torch==2.13.0+cpu with the CPU index for a small image.
ARG TORCH=torch
ARG TORCH_INDEX=https://pypi.org/simple

RUN useradd --create-home --uid 1000 trainval
WORKDIR /app
COPY pyproject.toml README.md ./
COPY shared ./shared
RUN pip install --no-cache-dir --index-url "$TORCH_INDEX" --extra-index-url https://pypi.org/simple "$TORCH" \
    && pip install --no-cache-dir .
COPY train.py eval.py ./
COPY configs ./configs

RUN mkdir -p /runs && chown trainval:trainval /runs
USER trainval
VOLUME /runs
