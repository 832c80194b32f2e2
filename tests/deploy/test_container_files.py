"""Dockerfile and docker-compose.yml: hadolint, the Compose specification's schema, and what they promise.

What can be proven without a Docker engine; test_image.py and test_compose.py run the real thing.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from deploy_helpers import drain_seconds
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version
from processes import REPO

from client.api import DEFAULT_URL

BIN = Path(sys.executable).parent
DOCKERFILE = (REPO / "Dockerfile").read_text()
COMPOSE: dict[str, Any] = yaml.safe_load((REPO / "docker-compose.yml").read_text())
API_SERVICES = ("api", "api-cpu")


def stages() -> dict[str, str]:
    """Dockerfile stage name -> its text (from its FROM line to the next)."""
    parts = re.split(r"^(?=FROM )", DOCKERFILE, flags=re.MULTILINE)
    named = {}
    for part in parts[1:]:
        match = re.match(r"FROM \S+ AS (\S+)", part)
        assert match, f"unnamed stage: {part.splitlines()[0]}"
        named[match[1]] = part
    return named


def seconds(duration: str) -> float:
    return float(duration.removesuffix("s")) if duration.endswith("s") else float(duration)


def test_hadolint_passes_at_error_level() -> None:
    result = subprocess.run(
        [BIN / "hadolint", "--failure-threshold", "error", "Dockerfile"], cwd=REPO, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_targets_run_unprivileged_with_a_health_check() -> None:
    named = stages()
    port = urlsplit(DEFAULT_URL).port
    for target in ("cpu", "cuda"):
        stage = named[target]
        user = re.findall(r"^USER (\S+)$", stage, re.MULTILINE)
        assert user, f"{target}: no USER"
        assert user[-1] not in ("root", "0")
        assert re.search(r'^HEALTHCHECK .*CMD \["densepred", "probe", "/healthz"\]$', stage, re.MULTILINE)
        # The probe's default address is the port the image serves on.
        assert f"DENSEPRED_PORT={port}" in stage
        assert "DENSEPRED_HOST=0.0.0.0" in stage
        assert "COPY --from=models /models /models" in stage
        assert re.search(r'^CMD \["python", "-m", "service"\]$', stage, re.MULTILINE)
    assert named["cpu"].startswith("FROM cpu-python ")
    assert named["cuda"].startswith("FROM cuda-python ")


def test_dockerfile_weights_are_mounted_or_trained_with_the_quick_preset() -> None:
    named = stages()
    assert re.search(r"^ARG MODELS=mounted$", DOCKERFILE, re.MULTILINE)
    assert re.search(r"^ARG MODELS_PRESET=quick$", DOCKERFILE, re.MULTILINE)
    assert "FROM models-${MODELS} AS models" in DOCKERFILE
    assert "RUN mkdir /models" in named["models-mounted"]
    trained = named["models-trained"]
    assert "python -m trainer bootstrap --out /models --data /tmp/shapes" in trained
    assert '--preset "${MODELS_PRESET}"' in trained


def test_dockerfile_needs_the_network_for_package_installs_only() -> None:
    urls = re.findall(r"https?://\S+", DOCKERFILE)
    assert urls, "the torch wheel indexes should be build arguments"
    for line in DOCKERFILE.splitlines():
        if re.search(r"https?://", line) and not line.startswith("#"):
            assert re.match(r"ARG (CPU|CUDA)_TORCH_INDEX=https://download\.pytorch\.org/whl/", line), line
    assert not re.search(r"^\s*(ADD|RUN).*\b(curl|wget|git clone)\b", DOCKERFILE, re.MULTILINE)
    assert re.search(r"^ARG CPU_TORCH_INDEX=https://download\.pytorch\.org/whl/cpu$", DOCKERFILE, re.MULTILINE)
    installer = REPO / "docker/install-deps.sh"
    assert subprocess.run(["sh", "-n", str(installer)], capture_output=True).returncode == 0


def test_docker_build_context_leaves_out_local_state() -> None:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    patterns = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    assert patterns[0] == "*", "ignore everything, then allow what the Dockerfile copies"
    allowed = {p.removeprefix("!").rstrip("/") for p in patterns if p.startswith("!")}
    copied = set(re.findall(r"^COPY (?!--from)(.+) \S+$", DOCKERFILE, re.MULTILINE))
    assert copied
    # Build inputs bind-mounted from the context (no from=) must be in it too.
    copied |= set(re.findall(r"--mount=type=bind,source=([^,\s]+),target=", DOCKERFILE))
    for sources in copied:
        for source in sources.split():
            assert source.rstrip("/") in allowed, f"{source} is copied but excluded from the context"
    assert not allowed & {".venv", "artifacts", ".git"}


def test_dockerfile_builds_without_docker_hub_front_ends_or_secrets_in_layers() -> None:
    # A `# syntax=` line makes BuildKit fetch its front end from Docker Hub.
    assert not re.search(r"^#\s*syntax\s*=", DOCKERFILE, re.MULTILINE)
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11-slim-bookworm$", DOCKERFILE, re.MULTILINE)
    runs = re.findall(r"^RUN (?:.*\\\n)*.*$", DOCKERFILE, re.MULTILINE)
    pip_runs = [run for run in runs if re.search(r"install-deps\.sh|pip wheel", run)]
    assert len(pip_runs) == 3  # the CPU and CUDA dependencies, the wheel (its build back end)
    for run in pip_runs:
        # The proxy's CA only as a BuildKit secret, mounted while pip runs; pip's downloads in a cache mount.
        assert "--mount=type=secret,id=ca" in run
        assert "--mount=type=cache,target=/root/.cache/pip" in run
        assert "constraints.txt" in run
    installer = (REPO / "docker/install-deps.sh").read_text()
    assert "PIP_CERT=/run/secrets/ca" in installer
    assert 'PIP_CONSTRAINT="$here/constraints.txt"' in installer
    assert not re.search(r"^(COPY|ADD) .*(\.crt|\.pem|secrets)", DOCKERFILE, re.MULTILINE)
    assert "PIP_NO_CACHE_DIR" not in DOCKERFILE  # it would disable the cache mount too


def test_constraints_pin_every_dependency_inside_its_range() -> None:
    pins = {}
    for line in (REPO / "docker/constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, version = line.split("==")
            pins[canonicalize_name(name)] = Version(version)
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    for dependency in project["dependencies"]:
        requirement = Requirement(dependency)
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{name} is not pinned in docker/constraints.txt"
        assert requirement.specifier.contains(pins[name], prereleases=True), (name, pins[name])
    build_backend = Requirement(tomllib.loads((REPO / "pyproject.toml").read_text())["build-system"]["requires"][0])
    assert build_backend.specifier.contains(pins[canonicalize_name(build_backend.name)])


def test_compose_file_is_valid_against_the_compose_specification() -> None:
    result = subprocess.run(
        [BIN / "check-jsonschema", "--builtin-schema", "vendor.compose-spec", "docker-compose.yml"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("name", API_SERVICES)
def test_compose_api_is_locked_down_and_outlasts_the_drain(name: str) -> None:
    api = COMPOSE["services"][name]
    assert api["read_only"] is True
    assert any(t.startswith("/tmp") for t in api["tmpfs"])
    assert api["cap_drop"] == ["ALL"]
    assert "no-new-privileges:true" in api["security_opt"]
    assert "/readyz" in api["healthcheck"]["test"]
    assert seconds(api["stop_grace_period"]) > drain_seconds(api["environment"])
    assert api["environment"]["DENSEPRED_HOST"] == "0.0.0.0"
    (models,) = api["volumes"]
    assert models["target"] == api["environment"]["DENSEPRED_MODEL_DIR"]
    assert models["read_only"] is True


def test_compose_gpu_and_cpu_profiles() -> None:
    gpu, cpu = COMPOSE["services"]["api"], COMPOSE["services"]["api-cpu"]
    assert gpu["profiles"] == ["gpu"]
    assert gpu["build"]["target"] == "cuda"
    (device,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia"
    assert "gpu" in device["capabilities"]
    assert cpu["profiles"] == ["cpu"]
    assert cpu["build"]["target"] == "cpu"
    assert "deploy" not in cpu
    # Both answer to `api`, the name nginx and Prometheus look up.
    assert cpu["networks"]["default"]["aliases"] == ["api"]


def test_compose_wiring_of_nginx_prometheus_and_grafana() -> None:
    services = COMPOSE["services"]
    for service in services.values():
        for volume in service.get("volumes", []):
            if isinstance(volume, str) and volume.startswith("./"):
                assert (REPO / volume.split(":")[0]).exists(), volume
    nginx = services["nginx"]
    assert set(nginx["depends_on"]) == set(API_SERVICES)
    assert all(d["condition"] == "service_healthy" for d in nginx["depends_on"].values())
    config = (REPO / "docker/nginx.conf").read_text()
    port = services["api"]["environment"]["DENSEPRED_PORT"]
    assert f"server api:{port} " in config
    assert nginx["ports"][0].endswith(":8080")
    assert "listen 8080;" in config
    scrape = yaml.safe_load((REPO / "docker/prometheus.yml").read_text())["scrape_configs"][0]
    assert scrape["dns_sd_configs"][0] == {**scrape["dns_sd_configs"][0], "names": ["api"], "port": int(port)}
    source = yaml.safe_load((REPO / "docker/grafana/provisioning/datasources/prometheus.yml").read_text())
    assert urlsplit(source["datasources"][0]["url"]).hostname == "prometheus"
    assert "./docker/grafana/dashboards:/var/lib/grafana/dashboards:ro" in services["grafana"]["volumes"]
