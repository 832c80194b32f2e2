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
# The wheels are first downloaded into a wheelhouse in the build's pip cache mount (a file already
# there is not fetched again), then installed from it alone. pip's own HTTP cache would not do: it
# keeps nothing when a proxy strips the caching headers, as ours does.
wheels="${WHEELHOUSE:-/root/.cache/pip/wheelhouse}"
mkdir -p "$wheels"
grep -E '^(torch|torchvision)[^a-z_-]' "$here/requirements.txt" > /tmp/torch.txt
pip download --progress-bar off --dest "$wheels" --index-url "$index" -r /tmp/torch.txt
# torch and torchvision resolve to the files just fetched (a +cpu build sorts above PyPI's of the
# same release), so the index's builds are kept.
pip download --progress-bar off --dest "$wheels" --find-links "$wheels" -r "$here/requirements.txt"
pip install --progress-bar off --no-index --find-links "$wheels" -r "$here/requirements.txt"
rm /tmp/torch.txt
