# syntax=docker/dockerfile:1
# densepred images, one target per device:
#
#   docker build --target cpu  -t densepred:cpu  .
#   docker build --target cuda -t densepred:cuda .
#
# Model weights: by default the image holds none and serves the store mounted at /models
# (`docker run -v "$PWD/artifacts/models:/models:ro" ...`). With `--build-arg MODELS=trained`, a build
# stage trains the default models with the `quick` preset on the build machine's CPU and bakes them in.
# The build needs the network for package installs only (apt, PyPI and the PyTorch wheel index).

ARG MODELS=mounted
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG CUDA_IMAGE=nvidia/cuda:12.6.3-runtime-ubuntu24.04
ARG CPU_TORCH_INDEX=https://download.pytorch.org/whl/cpu
ARG CUDA_TORCH_INDEX=https://download.pytorch.org/whl/cu126

# ---- Python with the dependencies, CPU flavour: CPU-only torch wheels, a fraction of the CUDA size ----
FROM ${PYTHON_IMAGE} AS cpu-python
ARG CPU_TORCH_INDEX
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH
WORKDIR /tmp/build
RUN python -m venv /opt/venv
COPY pyproject.toml docker/install-deps.sh ./
RUN sh install-deps.sh "${CPU_TORCH_INDEX}"

# ---- Python with the dependencies, CUDA flavour: the NVIDIA runtime base, torch built for its CUDA ----
# (The torch wheels bring their own cuDNN and CUDA libraries; the base adds the driver hooks and matching CUDA.)
FROM ${CUDA_IMAGE} AS cuda-python
ARG CUDA_TORCH_INDEX
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH
# The base image's tag pins the Ubuntu release, and with it the python3 it ships (DL3008: no finer pins).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /tmp/build
RUN python3 -m venv /opt/venv
COPY pyproject.toml docker/install-deps.sh ./
RUN sh install-deps.sh "${CUDA_TORCH_INDEX}"

# ---- The densepred package as a wheel (pure Python: the same file serves both flavours) ----
FROM cpu-python AS wheel
WORKDIR /tmp/src
COPY pyproject.toml README.md ./
COPY models/ models/
COPY service/ service/
COPY trainer/ trainer/
COPY client/ client/
RUN pip wheel --no-deps --wheel-dir /wheels .

# ---- Model store: empty (mount one at /models) or trained here with the quick preset ----
FROM cpu-python AS models-mounted
RUN mkdir /models

FROM cpu-python AS models-trained
RUN --mount=type=bind,from=wheel,source=/wheels,target=/tmp/wheels \
    pip install --no-deps /tmp/wheels/*.whl
# The dataset is generated in the same step and deleted with it: only the store reaches the image.
RUN python -m trainer bootstrap --out /models --data /tmp/shapes --device cpu && rm -rf /tmp/shapes

# A stage name, chosen by the MODELS build argument, not an image from a registry (DL3006 does not apply).
# hadolint ignore=DL3006
FROM models-${MODELS} AS models

# ---- Runtime images ----
FROM cpu-python AS cpu
RUN --mount=type=bind,from=wheel,source=/wheels,target=/tmp/wheels \
    pip install --no-deps /tmp/wheels/*.whl \
    && useradd --system --uid 10001 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin densepred
# Owned by root and read-only to the service: a compromised process cannot swap the weights.
COPY --from=models /models /models
# HOME on /tmp: the only writable place when the container runs with a read-only root (docker-compose.yml).
ENV DENSEPRED_MODEL_DIR=/models DENSEPRED_HOST=0.0.0.0 DENSEPRED_PORT=8000 DENSEPRED_DEVICE=cpu HOME=/tmp
# Two allocator arenas keep memory flat under mixed image sizes (bench/soak.py). oneDNN keeps its default
# kernel cache (1024 per-shape kernels): capping it at 64 cost 10-25 % of CPU throughput (README).
ENV MALLOC_ARENA_MAX=2
WORKDIR /tmp
USER 10001
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 CMD ["densepred", "probe", "/healthz"]
CMD ["python", "-m", "service"]

FROM cuda-python AS cuda
RUN --mount=type=bind,from=wheel,source=/wheels,target=/tmp/wheels \
    pip install --no-deps /tmp/wheels/*.whl \
    && useradd --system --uid 10001 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin densepred
COPY --from=models /models /models
ENV MALLOC_ARENA_MAX=2
# DEVICE=cuda rather than auto: without a GPU this image should fail loudly, not serve slowly on the CPU.
ENV DENSEPRED_MODEL_DIR=/models DENSEPRED_HOST=0.0.0.0 DENSEPRED_PORT=8000 DENSEPRED_DEVICE=cuda HOME=/tmp \
    NVIDIA_VISIBLE_DEVICES=all NVIDIA_DRIVER_CAPABILITIES=compute,utility
WORKDIR /tmp
USER 10001
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 CMD ["densepred", "probe", "/healthz"]
CMD ["python", "-m", "service"]
