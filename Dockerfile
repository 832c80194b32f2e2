# densepred images, one target per device. On a machine that reaches Docker Hub:
#
#   DOCKER_BUILDKIT=1 docker build --target cpu  -t densepred:cpu  .
#   DOCKER_BUILDKIT=1 docker build --target cuda -t densepred:cuda .
#
# Without Docker Hub, `make image` (docker/image.sh) builds the cpu target on a Python base made from
# Debian packages (docker/base-image.sh), passed as PYTHON_IMAGE.
#
# Behind a TLS-intercepting proxy, hand pip the proxy's CA bundle as a BuildKit secret; it is mounted
# only while pip runs and never lands in a layer:
#   docker build --secret id=ca,src=/etc/ssl/certs/ca-certificates.crt --target cpu -t densepred:cpu .
#
# No `# syntax=` line: that makes BuildKit fetch its front end from Docker Hub; the one built into
# Docker 20.10 and later handles the RUN --mount flags used here.
#
# Model weights: by default the image holds none and serves the store mounted at /models
# (`docker run -v "$PWD/artifacts/models:/models:ro" ...`). With `--build-arg MODELS=trained`, a build
# stage trains the default models with the MODELS_PRESET preset (`quick`) on the build machine's CPU
# and bakes them in. The build needs the network for package installs only (apt, PyPI and the PyTorch
# wheel index). Versions: docker/constraints.txt pins every Python package the image installs.

ARG MODELS=mounted
ARG MODELS_PRESET=quick
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG CUDA_IMAGE=nvidia/cuda:12.6.3-runtime-ubuntu24.04
ARG CPU_TORCH_INDEX=https://download.pytorch.org/whl/cpu
ARG CUDA_TORCH_INDEX=https://download.pytorch.org/whl/cu126

# ---- The runtime dependencies, read from pyproject.toml. Only this list reaches the install steps, so
# an edit elsewhere in pyproject.toml (tool settings, dev extras) keeps their layers in the build cache ----
FROM ${PYTHON_IMAGE} AS requirements
RUN --mount=type=bind,source=pyproject.toml,target=/tmp/pyproject.toml \
    python3 -c 'import tomllib; print("\n".join(tomllib.load(open("/tmp/pyproject.toml", "rb"))["project"]["dependencies"]))' \
        > /requirements.txt

# ---- Python with the dependencies, CPU flavour: CPU-only torch wheels, a fraction of the CUDA size ----
FROM ${PYTHON_IMAGE} AS cpu-python
ARG CPU_TORCH_INDEX
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv
# The inputs are bind-mounted, not copied: nothing but the installed packages stays in the layer. pip's
# download cache lives in a BuildKit cache mount, so a rebuild with other dependencies reuses the wheels.
RUN --mount=type=bind,from=requirements,source=/requirements.txt,target=/tmp/build/requirements.txt \
    --mount=type=bind,source=docker/install-deps.sh,target=/tmp/build/install-deps.sh \
    --mount=type=bind,source=docker/constraints.txt,target=/tmp/build/constraints.txt \
    --mount=type=cache,target=/root/.cache/pip,id=densepred-pip \
    --mount=type=secret,id=ca \
    sh /tmp/build/install-deps.sh "${CPU_TORCH_INDEX}"

# ---- Python with the dependencies, CUDA flavour: the NVIDIA runtime base, torch built for its CUDA ----
# (The torch wheels bring their own cuDNN and CUDA libraries; the base adds the driver hooks and matching CUDA.)
FROM ${CUDA_IMAGE} AS cuda-python
ARG CUDA_TORCH_INDEX
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH
# The base image's tag pins the Ubuntu release, and with it the python3 it ships (DL3008: no finer pins).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/venv
RUN --mount=type=bind,from=requirements,source=/requirements.txt,target=/tmp/build/requirements.txt \
    --mount=type=bind,source=docker/install-deps.sh,target=/tmp/build/install-deps.sh \
    --mount=type=bind,source=docker/constraints.txt,target=/tmp/build/constraints.txt \
    --mount=type=cache,target=/root/.cache/pip,id=densepred-pip \
    --mount=type=secret,id=ca \
    sh /tmp/build/install-deps.sh "${CUDA_TORCH_INDEX}"

# ---- The densepred package as a wheel (pure Python: the same file serves both flavours) ----
FROM cpu-python AS wheel
WORKDIR /tmp/src
COPY pyproject.toml README.md ./
COPY models/ models/
COPY service/ service/
COPY trainer/ trainer/
COPY client/ client/
# The build back end (setuptools) comes from PyPI, at the version docker/constraints.txt pins.
RUN --mount=type=bind,source=docker/constraints.txt,target=/tmp/constraints.txt \
    --mount=type=cache,target=/root/.cache/pip,id=densepred-pip \
    --mount=type=secret,id=ca \
    if [ -f /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi \
    && PIP_CONSTRAINT=/tmp/constraints.txt pip wheel --no-deps --wheel-dir /wheels .

# ---- Model store: empty (mount one at /models) or trained here with the quick preset ----
FROM cpu-python AS models-mounted
RUN mkdir /models

FROM cpu-python AS models-trained
ARG MODELS_PRESET
RUN --mount=type=bind,from=wheel,source=/wheels,target=/tmp/wheels \
    pip install --no-cache-dir --no-deps /tmp/wheels/*.whl
# The dataset and the run folders stay in this stage: only /models reaches the image.
WORKDIR /tmp/train
RUN python -m trainer bootstrap --out /models --data /tmp/shapes --preset "${MODELS_PRESET}" --device cpu

# A stage name, chosen by the MODELS build argument, not an image from a registry (DL3006 does not apply).
# hadolint ignore=DL3006
FROM models-${MODELS} AS models

# ---- Runtime images ----
FROM cpu-python AS cpu
RUN --mount=type=bind,from=wheel,source=/wheels,target=/tmp/wheels \
    pip install --no-cache-dir --no-deps /tmp/wheels/*.whl \
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
    pip install --no-cache-dir --no-deps /tmp/wheels/*.whl \
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
