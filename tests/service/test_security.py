"""The API key, what stays open without it, safe model loading, and dependency floors."""

from __future__ import annotations

import ast
from importlib.metadata import version
from pathlib import Path

import pytest
from packaging.version import Version
from service_helpers import as_raw, blocks_image, encode, serve, settings_for

from models import Predictor

pytestmark = pytest.mark.anyio

REPO = Path(__file__).resolve().parents[2]
KEY = "s3cret-key"


async def test_api_key_guards_inference_and_models_only(store: Path, predictors: dict[str, Predictor]) -> None:
    data = encode(blocks_image(900, 32, 32))
    async with serve(settings_for(store, api_key=KEY), lambda task, device: predictors[task]) as client:
        for path in ("/segment", "/detect", "/instances"):
            missing = await client.post(path, **as_raw(data))
            assert missing.status_code == 401
            assert missing.json()["error"]["code"] == "unauthorized"
            assert missing.headers["www-authenticate"] == "Bearer"
            wrong = await client.post(path, headers={"Authorization": "Bearer nope", "Content-Type": "image/png"})
            assert wrong.status_code == 401
            bearer = as_raw(data)
            bearer["headers"]["Authorization"] = f"Bearer {KEY}"
            assert (await client.post(path, **bearer)).status_code == 200
        assert (await client.get("/models")).status_code == 401
        assert (await client.get("/models", headers={"X-API-Key": KEY})).status_code == 200
        for path in ("/healthz", "/readyz", "/metrics"):  # probes and scrapes need no key
            assert (await client.get(path)).status_code == 200
        spec = (await client.get("/openapi.json")).json()
    assert spec["paths"]["/detect"]["post"]["security"]
    assert "401" in spec["paths"]["/detect"]["post"]["responses"]
    assert KEY not in str(spec)


async def test_without_a_key_nothing_asks_for_one(client: object) -> None:
    spec = (await client.get("/openapi.json")).json()  # type: ignore[attr-defined]
    assert "security" not in spec["paths"]["/detect"]["post"]
    assert "securitySchemes" not in spec.get("components", {})


def test_the_key_is_not_in_the_settings_repr(store: Path) -> None:
    settings = settings_for(store, api_key=KEY)
    assert KEY not in repr(settings)
    assert settings_for(store, api_key="  ").api_key is None  # an empty variable means no key


def _torch_load_calls(path: Path) -> list[ast.Call]:
    tree = ast.parse(path.read_text(), str(path))
    return [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "load"
        and isinstance(node.func.value, ast.Name)
        and node.func.value.id == "torch"
    ]


def test_every_torch_load_is_weights_only_and_nothing_unpickles() -> None:
    sources = [p for package in ("models", "service", "trainer") for p in (REPO / package).rglob("*.py")]
    assert sources
    for path in sources:
        text = path.read_text()
        assert "import pickle" not in text, path
        assert "torch.hub" not in text, path
        for call in _torch_load_calls(path):
            flags = {k.arg: k.value for k in call.keywords}
            weights_only = flags.get("weights_only")
            assert isinstance(weights_only, ast.Constant), f"{path}:{call.lineno}"
            assert weights_only.value is True, f"{path}:{call.lineno}"


@pytest.mark.parametrize(
    ("package", "floor"),
    [
        ("python-multipart", "0.0.31"),  # CVE-2026-53540 and the part-header / preamble DoS fixes
        ("starlette", "0.47.2"),  # CVE-2025-54121, CVE-2024-47874
        ("h11", "0.16.0"),  # CVE-2025-43859
        ("pillow", "12.3.0"),  # decompression-bomb bypasses fixed in 12.2 and 12.3
        ("torch", "2.6.0"),  # CVE-2025-32434 (torch.load weights_only bypass)
        ("torchvision", "0.21.0"),  # the release paired with torch 2.6
    ],
)
def test_installed_dependencies_meet_the_security_floors(package: str, floor: str) -> None:
    assert Version(version(package)) >= Version(floor)
    pyproject = (REPO / "pyproject.toml").read_text()
    assert f'"{package}>={floor}' in pyproject, f"pyproject.toml lacks {package}>={floor}"
