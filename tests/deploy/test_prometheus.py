"""A real Prometheus (the Debian package) scrapes a real `python -m service`, with the repo's scrape job.

Also the Grafana dashboard: valid JSON wired to the provisioned data source, and every query in it
names metrics the service exports and returns data from the same Prometheus.
"""

from __future__ import annotations

import io
import json
import math
import re
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import yaml
from PIL import Image, ImageDraw
from processes import REPO, Service, answers, free_port, require_binary, running, wait_for

TASKS = ("segment", "detect", "instances")
DASHBOARD = REPO / "docker/grafana/dashboards/densepred.json"
PROVISIONING = REPO / "docker/grafana/provisioning"
LATENCY_P95 = (
    "histogram_quantile(0.95, sum by (le, endpoint) "
    '(rate(densepred_request_duration_seconds_bucket{endpoint=~"/segment|/detect|/instances"}[1m])))'
)


class Prometheus:
    def __init__(self, url: str, service: Service) -> None:
        self.url = url
        self.service = service

    def query(self, expr: str) -> list[dict[str, Any]]:
        response = httpx.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=10)
        body = response.json()
        assert body["status"] == "success", f"{expr}: {body}"
        return body["data"]["result"]

    def traffic(self) -> None:
        """One request per endpoint, and one refused upload (so the rejection counter has a series)."""
        image = _png()
        for task in TASKS:
            response = httpx.post(f"{self.service.url}/{task}", files={"image": ("a.png", image, "image/png")})
            assert response.status_code == 200, response.text
        assert httpx.post(f"{self.service.url}/detect", files={"image": ("a.png", b"junk", "image/png")}).is_error

    def until(self, expr: str, done: Any, timeout_s: float = 45) -> list[dict[str, Any]]:
        """Re-run `expr`, sending traffic between tries, until `done(result)` (rates need two scrapes)."""
        deadline = time.monotonic() + timeout_s
        while not done(result := self.query(expr)):
            assert time.monotonic() < deadline, f"{expr} never satisfied: {result}"
            self.traffic()
            time.sleep(0.5)
        return result


def _png() -> bytes:
    image = Image.new("RGB", (96, 72), (30, 140, 200))
    ImageDraw.Draw(image).ellipse((20, 10, 70, 60), fill=(240, 200, 40))
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def scrape_config(target: str) -> dict[str, Any]:
    """docker/prometheus.yml with its one change for loopback: a static target instead of Docker's DNS."""
    config = yaml.safe_load((REPO / "docker/prometheus.yml").read_text())
    (job,) = config["scrape_configs"]
    assert job["dns_sd_configs"][0]["names"] == ["api"]
    del job["dns_sd_configs"]
    job["static_configs"] = [{"targets": [target]}]
    config["global"]["scrape_interval"] = "1s"  # the repo's 5 s, shortened so the test waits less
    return config


@pytest.fixture(scope="module")
def prometheus(live_service: Service, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    binary = require_binary("prometheus")
    folder = tmp_path_factory.mktemp("prometheus")
    config = folder / "prometheus.yml"
    config.write_text(yaml.safe_dump(scrape_config(live_service.url.removeprefix("http://"))))
    port = free_port()
    cmd = [binary, f"--config.file={config}", f"--storage.tsdb.path={folder / 'data'}",
           f"--web.listen-address=127.0.0.1:{port}"]  # fmt: skip
    with running(cmd, folder / "prometheus.log") as proc:
        url = f"http://127.0.0.1:{port}"
        wait_for(answers(f"{url}/-/ready"), 60, "prometheus", proc)
        yield Prometheus(url, live_service)


def test_repo_scrape_config_is_valid() -> None:
    promtool = require_binary("promtool")
    result = subprocess.run([promtool, "check", "config", str(REPO / "docker/prometheus.yml")], capture_output=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_histogram_quantile_has_values_for_all_three_endpoints(prometheus: Prometheus) -> None:
    def all_three(result: list[dict[str, Any]]) -> bool:
        return {r["metric"]["endpoint"] for r in result if math.isfinite(float(r["value"][1]))} == {
            f"/{t}" for t in TASKS
        }

    result = prometheus.until(LATENCY_P95, all_three)
    for series in result:
        assert 0 < float(series["value"][1]) < 30, series
    (target,) = prometheus.query('up{job="densepred"}')
    assert target["value"][1] == "1"


def _dashboard_exprs() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


def test_dashboard_is_valid_and_wired_to_the_provisioned_data_source() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    (source,) = yaml.safe_load((PROVISIONING / "datasources/prometheus.yml").read_text())["datasources"]
    (provider,) = yaml.safe_load((PROVISIONING / "dashboards/densepred.yml").read_text())["providers"]
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"
    assert dashboard["uid"]
    assert dashboard["title"]
    assert dashboard["schemaVersion"] >= 36
    panels = dashboard["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    cells: set[tuple[int, int]] = set()
    for panel in panels:
        assert panel["datasource"]["uid"] == source["uid"]
        refs = [t["refId"] for t in panel["targets"]]
        assert len(set(refs)) == len(refs) > 0
        assert all(t["datasource"]["uid"] == source["uid"] for t in panel["targets"])
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24
        columns, rows = range(grid["x"], grid["x"] + grid["w"]), range(grid["y"], grid["y"] + grid["h"])
        mine = {(x, y) for x in columns for y in rows}
        assert not cells & mine, f"panel {panel['title']!r} overlaps another"
        cells |= mine
    text = json.dumps(dashboard)
    for endpoint in TASKS:  # latency p50/p95/p99 per endpoint
        (latency,) = [p for p in panels if p["title"] == f"Latency /{endpoint}"]
        exprs = " ".join(t["expr"] for t in latency["targets"])
        assert all(f"histogram_quantile({q}," in exprs for q in ("0.5", "0.95", "0.99"))
    for metric in ("queue_wait_seconds", "batch_size", "queue_depth", "requests_rejected_total", "inference_duration"):
        assert f"densepred_{metric}" in text


def test_every_dashboard_query_names_exported_metrics_and_returns_data(prometheus: Prometheus) -> None:
    prometheus.traffic()
    exported = {
        line.split("{")[0].split(" ")[0]
        for line in httpx.get(f"{prometheus.service.url}/metrics").text.splitlines()
        if line and not line.startswith("#")
    }
    for expr in _dashboard_exprs():
        names = set(re.findall(r"\bdensepred_[a-z0-9_]+", expr))
        assert names, f"no metric in {expr}"
        assert names <= exported, f"{expr}: {names - exported} not exported by the service"
        # Grafana's $__rate_interval is at least four scrape intervals; 1m is that for the repo's 5 s.
        promql = expr.replace("$__rate_interval", "1m")
        prometheus.until(promql, lambda result: len(result) > 0)
