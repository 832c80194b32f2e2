#!/bin/sh
# Install densepred's runtime dependencies: requirements.txt beside this script (pyproject.toml's list,
# with its version ranges, written by the Dockerfile's `requirements` stage) at the exact versions of
# constraints.txt, into the active venv; torch and torchvision from the wheel index given as $1
# (CPU-only, one CUDA build, or PyPI's), the rest from PyPI.
# A CA bundle given as the BuildKit secret `ca` (a TLS-intercepting proxy's) is used by pip and never
# copied into the image.
set -eu
here="$(dirname "$0")"
index="$1"
if [ -f /run/secrets/ca ]; then
    export PIP_CERT=/run/secrets/ca
fi
export PIP_CONSTRAINT="$here/constraints.txt"
grep -E '^(torch|torchvision)[^a-z_-]' "$here/requirements.txt" > /tmp/torch.txt
pip install --progress-bar off --index-url "$index" -r /tmp/torch.txt
# torch and torchvision are satisfied by now, so pip keeps that index's builds.
pip install --progress-bar off -r "$here/requirements.txt"
rm /tmp/torch.txt
