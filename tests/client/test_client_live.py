"""The Python client and the installed `densepred` command against a real `python -m service` over HTTP."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import numpy as np
import pytest
from PIL import Image
from processes import Service, free_port
from processes import service as service_process

from client import DensepredClient, DensepredError
from client.cli import local_service_url
from client.overlay import open_image, render_overlay

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy:DeprecationWarning")

# The console script that `pip install` put beside this interpreter: the command as users get it.
DENSEPRED = str(Path(sys.executable).parent / "densepred")
SOME: dict[str, Any] = {"score_threshold": 0.0, "max_detections": 4}


@pytest.fixture(scope="module")
def photo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 120x90 JPEG whose EXIF asks to be shown rotated: 90 wide, 120 tall."""
    rng = np.random.default_rng(7)
    pixels = np.full((90, 120, 3), 200, dtype=np.uint8)
    pixels[20:60, 30:80] = rng.integers(0, 255, 3)
    exif = Image.Exif()
    exif[0x0112] = 8
    path = tmp_path_factory.mktemp("photos") / "photo.jpg"
    Image.fromarray(pixels).save(path, "JPEG", exif=exif.tobytes(), quality=95)
    return path


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([DENSEPRED, *args], capture_output=True, text=True, timeout=120, env=env)


def test_client_predicts_each_task(live_service: Service, photo: Path) -> None:
    with DensepredClient(live_service.url) as client:
        found = client.predict(photo, "detect", **SOME)
        assert (found["image"]["width"], found["image"]["height"]) == (90, 120)
        assert 1 <= len(found["detections"]) <= 4
        wanted = ["circle", "square"]
        masks = client.predict(photo.read_bytes(), "instances", mask_threshold=0.4, classes=wanted, **SOME)
        assert {d["label"] for d in masks["detections"]} <= {"circle", "square"}
        assert all("mask" in d for d in masks["detections"])
        segments = client.predict(photo, "segment", classes="circle,square,triangle")
        assert segments["model"]["task"] == "segment"
        assert [m["task"] for m in client.models()] == ["segment", "detect", "instances"]


def test_client_render_is_the_overlay_of_the_answer(live_service: Service, photo: Path) -> None:
    with DensepredClient(live_service.url) as client:
        answer = client.predict(photo, "instances", **SOME)
        png = client.render(photo, "instances", **SOME)
    expected = np.asarray(render_overlay(open_image(photo), answer))
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(png)).convert("RGB")), expected)


def test_client_raises_the_service_errors(live_service: Service) -> None:
    with DensepredClient(live_service.url) as client:
        with pytest.raises(DensepredError) as caught:
            client.predict(b"GIF89a not really", "detect")
        assert (caught.value.status, caught.value.code) == (415, "unsupported_media_type")
        with pytest.raises(DensepredError) as caught:
            client.predict(b"\x89PNG\r\n\x1a\n", "segment", classes="dragon")
        assert caught.value.status in (400, 422)
        with pytest.raises(ValueError, match="segment takes only"):
            client.predict(b"", "segment", score_threshold=0.5)


def test_cli_writes_an_overlay_of_the_displayed_size_and_the_json(
    live_service: Service, photo: Path, tmp_path: Path
) -> None:
    out, answer = tmp_path / "overlay.png", tmp_path / "answer.json"
    args = ["--url", live_service.url, "--out", str(out), "--json", str(answer), "--score-threshold", "0"]
    result = _run("predict", str(photo), "--task", "instances", "--max-detections", "3", *args)
    assert result.returncode == 0, result.stderr
    assert "overlay.png: " in result.stderr
    assert "found" in result.stderr
    body = json.loads(answer.read_text())
    assert len(body["detections"]) == 3
    picture = Image.open(out)
    assert picture.format == "PNG"
    assert picture.size == (90, 120)
    assert np.array_equal(np.asarray(picture.convert("RGB")), np.asarray(render_overlay(open_image(photo), body)))


@pytest.mark.parametrize("task", ["segment", "detect"])
def test_cli_prints_json_without_out(live_service: Service, photo: Path, task: str) -> None:
    result = _run("predict", str(photo), "--task", task, "--url", live_service.url)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["model"]["task"] == task


def test_cli_reports_failures_with_status_1(live_service: Service, tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    out = str(tmp_path / "x.png")
    refused = _run("predict", str(text), "--task", "detect", "--url", live_service.url, "--out", out)
    assert refused.returncode == 1
    assert "400 invalid_image" in refused.stderr
    assert not (tmp_path / "x.png").exists()
    nobody = _run("predict", str(text), "--task", "detect", "--url", f"http://127.0.0.1:{free_port()}")
    assert nobody.returncode == 1
    assert "cannot talk to" in nobody.stderr
    missing = _run("predict", str(tmp_path / "absent.png"), "--task", "detect")
    assert missing.returncode == 1
    assert "absent.png" in missing.stderr


def test_probe_exit_status_follows_the_endpoint(live_service: Service) -> None:
    assert _run("probe", "--url", live_service.url).returncode == 0
    assert _run("probe", "/healthz", "--url", live_service.url).returncode == 0
    assert _run("probe", "/no-such-thing", "--url", live_service.url).returncode == 1
    assert _run("probe", "--url", f"http://127.0.0.1:{free_port()}").returncode == 1
    # The same check the Dockerfile's HEALTHCHECK makes, via httpx for comparison.
    assert httpx.get(f"{live_service.url}/healthz").status_code == 200


def test_probe_finds_the_service_where_its_own_settings_put_it(live_service: Service) -> None:
    # A HEALTHCHECK runs with the container's environment: a service moved to another port stays healthy.
    port = urlsplit(live_service.url).port
    bare = {k: v for k, v in os.environ.items() if not k.startswith("DENSEPRED_")}
    here = {**bare, "DENSEPRED_HOST": "0.0.0.0", "DENSEPRED_PORT": str(port)}
    assert _run("probe", "/healthz", env=here).returncode == 0
    elsewhere = {**here, "DENSEPRED_PORT": str(free_port())}
    refused = _run("probe", "/healthz", env=elsewhere)
    assert refused.returncode == 1
    assert f"127.0.0.1:{elsewhere['DENSEPRED_PORT']}" in refused.stderr
    assert _run("probe", "/healthz", "--url", live_service.url, env=elsewhere).returncode == 0  # --url wins


@pytest.mark.parametrize(
    ("environ", "url"),
    [
        ({}, "http://127.0.0.1:8000"),
        ({"DENSEPRED_PORT": "9001"}, "http://127.0.0.1:9001"),
        ({"DENSEPRED_HOST": "0.0.0.0", "DENSEPRED_PORT": "8000"}, "http://127.0.0.1:8000"),
        ({"DENSEPRED_HOST": "::"}, "http://[::1]:8000"),
        ({"DENSEPRED_HOST": "fd00::5", "DENSEPRED_PORT": "81"}, "http://[fd00::5]:81"),
        ({"DENSEPRED_HOST": "10.1.2.3", "DENSEPRED_PORT": " "}, "http://10.1.2.3:8000"),
    ],
)
def test_probe_address_from_the_service_settings(environ: dict[str, str], url: str) -> None:
    assert local_service_url(environ) == url


def test_api_key_travels_with_the_client_and_the_command(
    random_store: Path, photo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with service_process(random_store, tmp_path / "service.log", tasks="detect", api_key="s3cret") as keyed:
        with DensepredClient(keyed.url) as anonymous, pytest.raises(DensepredError) as caught:
            anonymous.predict(photo, "detect")
        assert (caught.value.status, caught.value.code) == (401, "unauthorized")
        with DensepredClient(keyed.url, api_key="s3cret") as client:
            assert client.predict(photo, "detect")["model"]["task"] == "detect"
        monkeypatch.setenv("DENSEPRED_API_KEY", "s3cret")
        assert _run("predict", str(photo), "--task", "detect", "--url", keyed.url).returncode == 0
        # Health checks carry no key: the probes stay open.
        monkeypatch.delenv("DENSEPRED_API_KEY")
        assert _run("probe", "/readyz", "--url", keyed.url).returncode == 0
