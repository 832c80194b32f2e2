#!/usr/bin/env bash
# Build the Python base image from Debian packages, for machines that cannot pull from Docker Hub.
#
#   docker/base-image.sh [NAME]        # default densepred-python:3.11-bookworm
#
# python:3.11-slim-bookworm is Debian bookworm with Python 3.11; this is the same release made with
# debootstrap (Debian's python3 3.11, python3-venv, the `python` command from python-is-python3, and
# Debian's CA bundle), imported as one layer. Built once per machine: an existing NAME is kept
# (FORCE=1 rebuilds it). Pass it to the build as PYTHON_IMAGE (docker/image.sh does).
# Needs root (debootstrap), docker and debootstrap (apt-get install debootstrap), and a Debian mirror
# (MIRROR, default deb.debian.org; a snapshot.debian.org URL pins the packages by date).
set -euo pipefail
name="${1:-densepred-python:3.11-bookworm}"
mirror="${MIRROR:-http://deb.debian.org/debian}"
docker="${DOCKER:-/usr/bin/docker}"

if [ -z "${FORCE:-}" ] && "$docker" image inspect "$name" >/dev/null 2>&1; then
    echo "base image $name exists"
    exit 0
fi
command -v debootstrap >/dev/null || { echo "debootstrap is missing: apt-get install debootstrap" >&2; exit 1; }

root="$(mktemp -d /tmp/densepred-base.XXXXXX)"
trap 'rm -rf "$root"' EXIT
debootstrap --variant=minbase --include=python3,python3-venv,python-is-python3,ca-certificates \
    bookworm "$root" "$mirror"
# What the slim image leaves out too: package lists, downloaded .debs, logs, docs and man pages.
chroot "$root" apt-get clean
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/log/* "$root"/usr/share/doc/* "$root"/usr/share/man/* \
    "$root"/usr/share/info/* "$root"/var/cache/debconf/*-old "$root"/tmp/*
# The image must not hold the build machine's resolver or host names.
: > "$root/etc/resolv.conf"
: > "$root/etc/hostname"
python_version="$(chroot "$root" python3 -c 'import platform; print(platform.python_version())')"

# Sorted names and numeric owners. (File times stay: Python checks its .pyc files against them.)
tar --sort=name --numeric-owner -C "$root" -c . \
    | "$docker" import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8' \
        --change 'CMD ["python3"]' \
        --change "LABEL org.opencontainers.image.description=\"Debian bookworm minbase, Python $python_version\"" \
        --message "debootstrap bookworm from $mirror" - "$name"
echo "built base image $name (Python $python_version)"
