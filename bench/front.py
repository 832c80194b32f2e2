"""nginx in front of service replicas, as `docker compose --scale api=N` deploys them.

The configuration is the repository's docker/nginx.conf with two lines pointed at loopback: the
`server api:8000` upstream (one line per replica) and `listen 8080`. tests/deploy/test_nginx.py runs
the same file through these functions, so the benchmark measures what the tests check.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from harness import REPO, wait_until_up

UPSTREAM = re.compile(r"^(\s*)server api:8000( [^;]*)?;$", re.MULTILINE)
LISTEN = re.compile(r"^(\s*)listen 8080;$", re.MULTILINE)
TEMP_KINDS = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")


def site_config(upstreams: list[str], port: int) -> str:
    """docker/nginx.conf with one upstream line per `host:port` and the listener on 127.0.0.1:`port`."""
    text = (REPO / "docker/nginx.conf").read_text()
    text, found = UPSTREAM.subn(lambda m: "".join(f"{m[1]}server {u}{m[2] or ''};\n" for u in upstreams), text)
    assert found == 1, "docker/nginx.conf must have exactly one `server api:8000 ...;` line"
    text, found = LISTEN.subn(rf"\g<1>listen 127.0.0.1:{port};", text)
    assert found == 1, "docker/nginx.conf must have exactly one `listen 8080;` line"
    return text


def main_config(folder: Path, site: Path, workers: int | str = 1) -> str:
    """What the nginx image provides around conf.d/ (1024 connections per worker process; its worker count
    is `auto`, one per core), with every path inside `folder`."""
    temp = " ".join(f"{kind}_temp_path {folder / kind};" for kind in TEMP_KINDS)
    return (
        f"daemon off; worker_processes {workers}; pid {folder / 'nginx.pid'}; error_log {folder / 'error.log'} warn;\n"
        f"events {{ worker_connections 1024; }}\n"
        f"http {{ access_log {folder / 'access.log'}; {temp} include {site}; }}\n"
    )


NO_NGINX = "nginx is not installed (apt-get install nginx)"


def find_nginx() -> str | None:
    # /usr/sbin is not on every user's PATH, and nginx lives there.
    return shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/bin")


def prepare(folder: Path, upstreams: list[str], port: int, workers: int | str = 1) -> list[str]:
    """Write the configuration into `folder`; returns the command that runs nginx on it."""
    binary = find_nginx()
    if binary is None:
        raise SystemExit(NO_NGINX)
    os.chmod(folder, 0o755)  # nginx's workers drop root: they must reach the temp folders
    for kind in TEMP_KINDS:
        (folder / kind).mkdir(mode=0o777, exist_ok=True)
    site = folder / "densepred.conf"
    site.write_text(site_config(upstreams, port))
    (folder / "nginx.conf").write_text(main_config(folder, site, workers))
    return [binary, "-p", str(folder), "-c", str(folder / "nginx.conf")]


@contextlib.contextmanager
def nginx(upstreams: list[str], port: int, workers: int | str = "auto") -> Iterator[subprocess.Popen[bytes]]:
    """nginx on 127.0.0.1:`port` in front of `upstreams`, once /readyz answers 200 through it. A session
    of its own, so that its CPU (master and worker) can be read with cpuuse.session_cpu."""
    with tempfile.TemporaryDirectory(prefix="densepred-nginx-") as name, open(Path(name) / "nginx.out", "wb") as log:
        folder = Path(name)
        process = subprocess.Popen(prepare(folder, upstreams, port, workers), stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)  # fmt: skip
        try:
            wait_until_up(process, f"http://127.0.0.1:{port}/readyz", "nginx", lambda: _output(folder), 30)
            yield process
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            process.wait(30)


def _output(folder: Path) -> str:
    return "".join(path.read_text() for path in (folder / "nginx.out", folder / "error.log") if path.exists())
