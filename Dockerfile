# syntax=docker/dockerfile:1
# EvoTok Serve images. Two targets, never both onnxruntime flavours in one image:
#
#   docker build --target cpu -t evotok-serve:cpu .   # python slim + onnxruntime (CPU) + torch CPU   (default)
#   docker build --target gpu -t evotok-serve:gpu .   # NVIDIA TensorRT base + onnxruntime-gpu + TensorRT
#
# Entry points (deploy/docker/entrypoint.sh): `api` (default), `serve` (= `api`, named for where `evotok serve`
# runs the model itself: compose's `evotok` service on the GPU image), `worker`, `export [ARGS]`, `healthcheck`.
# Engines are built on first start into the cache volume $EVOTOK_CACHE_DIR when missing.
# Dependencies are installed from pyproject.toml before the source is copied, so code changes reuse them.
# See docs/deployment.md for the choices (base images, CUDA 13 for onnxruntime-gpu, torch CPU build).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
# onnxruntime-gpu from PyPI is built for CUDA 13 + cuDNN 9: pick a TensorRT container release on CUDA 13.
ARG GPU_BASE_IMAGE=nvcr.io/nvidia/tensorrt:25.10-py3

############################################################################ CPU: dependencies
FROM ${PYTHON_IMAGE} AS cpu-deps
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# torch is used for `evotok export` (ONNX export) and the torch backend; the CPU build keeps the image small.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml constraints-cpu.txt deploy/docker/requirements.py ./
# torch first from its own index (pinned by constraints-cpu.txt), then the rest from PyPI.
RUN pip install --no-cache-dir --index-url "${TORCH_INDEX_URL}" -c constraints-cpu.txt torch \
 && python requirements.py pyproject.toml cpu,torch,images,oip > requirements.txt \
 && pip install --no-cache-dir -c constraints-cpu.txt -r requirements.txt

############################################################################ GPU: dependencies
FROM ${GPU_BASE_IMAGE} AS gpu-deps
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# TensorRT wheels (tensorrt-cu13) are real only on NVIDIA's index; PyPI holds placeholders.
ARG TRT_INDEX_URL=https://pypi.nvidia.com
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3-venv \
 && rm -rf /var/lib/apt/lists/*
# A venv without the base image's site-packages: the Python TensorRT is the one from the `trt` extra,
# so `import tensorrt` and the engine cache key agree on one TensorRT version.
RUN python3 -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml constraints-cpu.txt deploy/docker/requirements.py ./
RUN pip install --no-cache-dir --index-url "${TORCH_INDEX_URL}" -c constraints-cpu.txt torch \
 && python requirements.py pyproject.toml gpu,torch,trt,images,oip > requirements.txt \
 && pip install --no-cache-dir --extra-index-url "${TRT_INDEX_URL}" -c constraints-cpu.txt -r requirements.txt

############################################################################ GPU: runtime
FROM gpu-deps AS gpu
ENV EVOTOK_WEIGHTS=/opt/evotok/weights/evotok-small \
    EVOTOK_CACHE_DIR=/var/cache/evotok \
    EVOTOK_BACKEND=tensorrt \
    EVOTOK_DEVICE=cuda \
    EVOTOK_HOST=0.0.0.0 \
    EVOTOK_PORT=8000 \
    XDG_CACHE_HOME=/tmp/cache \
    HOME=/tmp
COPY README.md ./
COPY evotok ./evotok
COPY model ./model
COPY export ./export
COPY service ./service
COPY bench ./bench
# pyproject.toml maps weights/ into the package (the wheel's own copy of the model, docs/install.md); the image
# keeps its model at $EVOTOK_WEIGHTS (below), so weights/ is empty here and the model is not in the image twice.
RUN mkdir -p weights \
 && pip install --no-cache-dir --no-deps /src \
 && python -m evotok.tools.check_env \
 && groupadd --gid 10001 evotok \
 && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin evotok \
 && mkdir -p /var/cache/evotok \
 && chown 10001:10001 /var/cache/evotok
COPY weights/evotok-small /opt/evotok/weights/evotok-small
COPY --chmod=0755 deploy/docker/entrypoint.sh /usr/local/bin/evotok-entrypoint
COPY deploy/docker/healthcheck.py /usr/local/lib/evotok/healthcheck.py
WORKDIR /var/cache/evotok
USER 10001:10001
EXPOSE 8000 8001 9100
# Long start period: the first start builds TensorRT engines into the cache volume.
HEALTHCHECK --interval=15s --timeout=5s --start-period=15m --retries=3 \
    CMD ["python", "/usr/local/lib/evotok/healthcheck.py"]
ENTRYPOINT ["/usr/local/bin/evotok-entrypoint"]
CMD ["worker"]

############################################################################ CPU: runtime (default target)
FROM cpu-deps AS cpu
ENV EVOTOK_WEIGHTS=/opt/evotok/weights/evotok-small \
    EVOTOK_CACHE_DIR=/var/cache/evotok \
    EVOTOK_BACKEND=onnxruntime \
    EVOTOK_DEVICE=cpu \
    EVOTOK_HOST=0.0.0.0 \
    EVOTOK_PORT=8000 \
    XDG_CACHE_HOME=/tmp/cache \
    HOME=/tmp
COPY README.md ./
COPY evotok ./evotok
COPY model ./model
COPY export ./export
COPY service ./service
COPY bench ./bench
# pyproject.toml maps weights/ into the package (the wheel's own copy of the model, docs/install.md); the image
# keeps its model at $EVOTOK_WEIGHTS (below), so weights/ is empty here and the model is not in the image twice.
RUN mkdir -p weights \
 && pip install --no-cache-dir --no-deps /src \
 && python -m evotok.tools.check_env \
 && groupadd --gid 10001 evotok \
 && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin evotok \
 && mkdir -p /var/cache/evotok \
 && chown 10001:10001 /var/cache/evotok
COPY weights/evotok-small /opt/evotok/weights/evotok-small
COPY --chmod=0755 deploy/docker/entrypoint.sh /usr/local/bin/evotok-entrypoint
COPY deploy/docker/healthcheck.py /usr/local/lib/evotok/healthcheck.py
WORKDIR /var/cache/evotok
USER 10001:10001
EXPOSE 8000 8001 9100
HEALTHCHECK --interval=15s --timeout=5s --start-period=5m --retries=3 \
    CMD ["python", "/usr/local/lib/evotok/healthcheck.py"]
ENTRYPOINT ["/usr/local/bin/evotok-entrypoint"]
CMD ["api"]
