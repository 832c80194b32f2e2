#!/usr/bin/env bash
# `make image`: build densepred:cpu from the shipped Dockerfile on a machine that cannot pull from
# Docker Hub, preparing what is missing: the engine (docker/engine.sh) and the Debian-built Python
# base image (docker/base-image.sh, once per machine). Extra arguments go to `docker build`:
#
#   docker/image.sh                                          # densepred:cpu, store mounted at run time
#   TAG=densepred:cpu-trained docker/image.sh --build-arg MODELS=trained
#
# Settings (environment):
#   TARGET           Dockerfile target (cpu)                  TAG  image name (densepred:$TARGET)
#   PYTHON_IMAGE     base image; unset: the Debian-built one, made when missing
#   CA_BUNDLE        CA bundle for pip, given to the build as the BuildKit secret `ca` (default
#                    /etc/ssl/certs/ca-certificates.crt when it exists; empty: none). The secret is
#                    mounted only while pip runs, never copied into a layer.
#   CPU_TORCH_INDEX  where torch and torchvision come from; unset: the PyTorch CPU index, or PyPI
#                    (whose x86_64 torch brings the CUDA libraries, several GB) when that index cannot
#                    be reached
#   DOCKER           the CLI (default /usr/bin/docker)
set -euo pipefail
cd "$(dirname "$0")/.."
target="${TARGET:-cpu}"
tag="${TAG:-densepred:$target}"
export DOCKER="${DOCKER:-/usr/bin/docker}"

docker/engine.sh
if [ -z "${PYTHON_IMAGE:-}" ]; then
    PYTHON_IMAGE=densepred-python:3.11-bookworm
    if ! "$DOCKER" image inspect "$PYTHON_IMAGE" >/dev/null 2>&1; then
        command -v debootstrap >/dev/null || {
            apt-get update -qq
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >/dev/null
        }
        docker/base-image.sh "$PYTHON_IMAGE"
    fi
fi

ca="${CA_BUNDLE-/etc/ssl/certs/ca-certificates.crt}"
secret=()
if [ -n "$ca" ] && [ -f "$ca" ]; then
    secret=(--secret "id=ca,src=$ca")
fi

reachable() {
    python3 - "$1" "$ca" <<'PY'
import ssl, sys, urllib.request
cafile = sys.argv[2] or None
try:
    urllib.request.urlopen(sys.argv[1], timeout=10, context=ssl.create_default_context(cafile=cafile))
except Exception:
    sys.exit(1)
PY
}
if [ -z "${CPU_TORCH_INDEX:-}" ]; then
    CPU_TORCH_INDEX=https://download.pytorch.org/whl/cpu
    if ! reachable "$CPU_TORCH_INDEX/torch/"; then
        echo "image.sh: $CPU_TORCH_INDEX cannot be reached; torch comes from PyPI (with its CUDA libraries)" >&2
        CPU_TORCH_INDEX=https://pypi.org/simple
    fi
fi

echo "image.sh: building $tag (target $target) on $PYTHON_IMAGE, torch from $CPU_TORCH_INDEX"
DOCKER_BUILDKIT=1 "$DOCKER" build --progress=plain --target "$target" \
    --build-arg "PYTHON_IMAGE=$PYTHON_IMAGE" --build-arg "CPU_TORCH_INDEX=$CPU_TORCH_INDEX" \
    "${secret[@]}" --tag "$tag" "$@" .
