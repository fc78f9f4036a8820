# syntax=docker/dockerfile:1
#
# unclip-server images. Two targets:
#
#   docker build -t unclip-server:cuda .               # default: CUDA runtime, for GPU hosts
#   docker build -t unclip-server:cpu --target cpu .   # CPU only (development, CI, compose)
#
# Both serve the embedded default model (a copy of weights/default) unless another model
# directory is mounted and named by UNCLIP_MODEL_DIR:
#
#   docker run --gpus 1 -p 8000:8000 -v /srv/models/shapes:/models:ro \
#       -e UNCLIP_MODEL_DIR=/models -e UNCLIP_API_KEYS=sk-... unclip-server:cuda
#
# The process runs as uid/gid 10001 (numeric, so that Kubernetes' runAsNonRoot can check
# it), writes nothing outside /tmp (the root filesystem may be read-only), and is PID 1
# through an exec-form ENTRYPOINT so that SIGTERM reaches the server and it drains.
# See docs/deploy.md.

ARG PYTHON_IMAGE=python:3.12-slim-bookworm
# The torch 2.14.1 wheels on PyPI for Linux x86_64 are built against CUDA 13.0 and carry
# their own CUDA libraries; the base image brings the NVIDIA container-runtime settings
# (NVIDIA_VISIBLE_DEVICES, NVIDIA_REQUIRE_CUDA: the driver must support CUDA 13.0).
ARG CUDA_IMAGE=nvidia/cuda:13.0.1-base-ubuntu24.04

# ---------------------------------------------------------------------------------------
# The project source, once, for both builders.
FROM scratch AS src
COPY pyproject.toml README.md /src/
COPY pipelines /src/pipelines
COPY server /src/server
COPY tools /src/tools

# ---------------------------------------------------------------------------------------
# CPU builder: a virtualenv in /opt/venv with the CPU build of torch.
FROM ${PYTHON_IMAGE} AS cpu-build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_CONSTRAINT=/tmp/pins.txt
# Pinned together, as in the Makefile (TORCH_PINS): these builds pair with each other.
ARG TORCH_VERSION=2.14.1
ARG TORCHVISION_VERSION=0.29.1
# The CPU-only wheels (no CUDA libraries: a much smaller image).
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
RUN printf 'torch==%s\ntorchvision==%s\n' "$TORCH_VERSION" "$TORCHVISION_VERSION" > /tmp/pins.txt \
 && python -m venv /opt/venv \
 && /opt/venv/bin/pip install --index-url "$TORCH_INDEX_URL" \
        "torch==$TORCH_VERSION" "torchvision==$TORCHVISION_VERSION"
COPY --from=src /src /src
# The constraint file keeps the pinned torch: a dependency that wanted another fails the
# build instead of silently replacing it. EXTRAS: hf serves Kandinsky 2.2 and Karlo snapshots
# (diffusers, transformers), c2pa signs content credentials; empty for the smallest image.
ARG EXTRAS=hf,c2pa
RUN /opt/venv/bin/pip install "/src${EXTRAS:+[$EXTRAS]}" \
 && /opt/venv/bin/python -c "import torch, server, pipelines; print('torch', torch.__version__)"

# ---------------------------------------------------------------------------------------
# CUDA base: Ubuntu's Python 3.12 on the CUDA image (builder and runtime share it, so the
# virtualenv's interpreter path is the same in both).
FROM ${CUDA_IMAGE} AS cuda-base
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
 && rm -rf /var/lib/apt/lists/*

# CUDA builder: torch from PyPI (CUDA 13.0 build) and the project with its `gpu` extra
# (xformers).
FROM cuda-base AS cuda-build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_CONSTRAINT=/tmp/pins.txt
ARG TORCH_VERSION=2.14.1
ARG TORCHVISION_VERSION=0.29.1
# Empty: PyPI's default build. Set to a PyTorch index (e.g. .../whl/cu128) for another
# CUDA build; then pick a CUDA_IMAGE whose CUDA version matches it.
ARG TORCH_INDEX_URL=
RUN printf 'torch==%s\ntorchvision==%s\n' "$TORCH_VERSION" "$TORCHVISION_VERSION" > /tmp/pins.txt \
 && python3 -m venv /opt/venv \
 && /opt/venv/bin/pip install ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} \
        "torch==$TORCH_VERSION" "torchvision==$TORCHVISION_VERSION"
COPY --from=src /src /src
# xformers wheels are built for one torch release each: with the constraint above pip picks
# one made for the pinned torch, or fails here. EXTRAS as in the CPU image, plus gpu (xformers).
ARG EXTRAS=gpu,hf,c2pa
RUN /opt/venv/bin/pip install "/src[$EXTRAS]" \
 && /opt/venv/bin/python -c "import torch, xformers, server, pipelines; print('torch', torch.__version__, 'cuda', torch.version.cuda)"

# ---------------------------------------------------------------------------------------
# CPU runtime: `docker build --target cpu .`
FROM ${PYTHON_IMAGE} AS cpu
RUN groupadd --system --gid 10001 unclip \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /tmp \
        --shell /usr/sbin/nologin unclip
COPY --from=cpu-build /opt/venv /opt/venv
# The embedded default model, read-only for the server's user.
COPY weights/default /opt/unclip/weights/default
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    XDG_CACHE_HOME=/tmp/.cache \
    TORCH_HOME=/tmp/.cache/torch \
    TRITON_CACHE_DIR=/tmp/.cache/triton \
    HF_HOME=/tmp/.cache/huggingface \
    HF_HUB_OFFLINE=1 \
    UNCLIP_MODEL_DIR=/opt/unclip/weights/default \
    UNCLIP_HOST=0.0.0.0 \
    UNCLIP_PORT=8000
WORKDIR /opt/unclip
USER 10001:10001
EXPOSE 8000
STOPSIGNAL SIGTERM
# Liveness only (/health): readiness (/ready) is for load balancers. No curl in the image.
HEALTHCHECK --interval=30s --timeout=5s --start-period=300s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('UNCLIP_PORT', '8000'), timeout=4)"]
ENTRYPOINT ["/opt/venv/bin/python", "-m", "server"]

# ---------------------------------------------------------------------------------------
# CUDA runtime (the default target: last stage).
FROM cuda-base AS cuda
RUN groupadd --system --gid 10001 unclip \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /tmp \
        --shell /usr/sbin/nologin unclip
COPY --from=cuda-build /opt/venv /opt/venv
COPY weights/default /opt/unclip/weights/default
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    XDG_CACHE_HOME=/tmp/.cache \
    TORCH_HOME=/tmp/.cache/torch \
    TRITON_CACHE_DIR=/tmp/.cache/triton \
    HF_HOME=/tmp/.cache/huggingface \
    HF_HUB_OFFLINE=1 \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    UNCLIP_MODEL_DIR=/opt/unclip/weights/default \
    UNCLIP_HOST=0.0.0.0 \
    UNCLIP_PORT=8000
WORKDIR /opt/unclip
USER 10001:10001
EXPOSE 8000
STOPSIGNAL SIGTERM
# A generous start period: large weights take minutes to load onto the GPU.
HEALTHCHECK --interval=30s --timeout=5s --start-period=900s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('UNCLIP_PORT', '8000'), timeout=4)"]
ENTRYPOINT ["/opt/venv/bin/python", "-m", "server"]
