#!/bin/sh
# Install densepred's runtime dependencies, with pyproject.toml's version ranges, into the active venv:
# torch and torchvision from the wheel index given as $1 (CPU-only or one CUDA build), the rest from PyPI.
# Reading the list from pyproject.toml keeps one source of truth, and lets Docker cache this layer
# until the dependencies change rather than on every source edit.
set -eu
index="$1"
python - pyproject.toml > /tmp/requirements.txt <<'PY'
import sys, tomllib
with open(sys.argv[1], "rb") as f:
    print("\n".join(tomllib.load(f)["project"]["dependencies"]))
PY
grep -E '^(torch|torchvision)[^a-z_-]' /tmp/requirements.txt > /tmp/torch.txt
pip install --index-url "$index" -r /tmp/torch.txt
# torch and torchvision are satisfied by now, so pip keeps that index's builds.
pip install -r /tmp/requirements.txt
rm /tmp/requirements.txt /tmp/torch.txt
