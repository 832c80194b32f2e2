#!/usr/bin/env bash
# Make sure a Docker engine answers: install Debian's docker.io when there is none (root, apt), and
# start dockerd in the background when it is installed but not running (no systemd here).
#
#   docker/engine.sh              # then: docker info
#
# DOCKER: the CLI to use (default /usr/bin/docker, Debian's, which builds with BuildKit; a static CLI
# without the buildx plugin refuses `RUN --mount`). DOCKERD_LOG: dockerd's output (/tmp/dockerd.log).
set -euo pipefail
docker="${DOCKER:-/usr/bin/docker}"
log="${DOCKERD_LOG:-/tmp/dockerd.log}"

if ! [ -x "$docker" ] || ! command -v dockerd >/dev/null; then
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
        echo "no Docker engine: install Docker (https://docs.docker.com/engine/install/)" >&2
        exit 1
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends docker.io >/dev/null
fi
if "$docker" info >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    echo "the Docker daemon is not running and only root can start it here" >&2
    exit 1
fi
# setsid: dockerd outlives the shell (and the make or CI step) that started it.
setsid nohup dockerd >>"$log" 2>&1 </dev/null &
for _ in $(seq 60); do
    if "$docker" info >/dev/null 2>&1; then
        echo "started dockerd (log: $log)"
        exit 0
    fi
    sleep 1
done
echo "dockerd did not start within 60 s; see $log" >&2
tail -20 "$log" >&2
exit 1
