"""Service fixtures: a store of tiny real models, and the main app serving them over ASGI.

Helpers that tests import live in service_helpers.py (a conftest is not meant to be imported).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import torch
from service_helpers import serve, settings_for

import models
from models import DEFAULT_ARCH, TASKS, Category, Manifest, Predictor, build_model, get_arch, save_entry

SHAPES = [Category(1, "circle"), Category(2, "square"), Category(3, "triangle")]


def _untrained(task: str) -> torch.nn.Module:
    model = build_model(task, DEFAULT_ARCH[task], num_classes=4)
    # Freshly initialised heads score every class alike (one class everywhere, all scores near 1/4).
    # Wider random classifier weights make outputs depend on the image, so filters have work to do.
    if task == "segment":
        for conv in (model.head32[-1], model.score16, model.score8):
            torch.nn.init.normal_(conv.weight, std=1.0)
            torch.nn.init.normal_(conv.bias, std=0.5)
    else:
        torch.nn.init.normal_(model.roi_heads.box_predictor.cls_score.weight, std=2.0)
    return model


@pytest.fixture(scope="session")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("service-store")
    torch.manual_seed(0)
    for task in TASKS:
        spec = get_arch(task, DEFAULT_ARCH[task])
        manifest = Manifest(task=task, arch=spec.name, num_classes=4, categories=list(SHAPES), input=dict(spec.input))
        save_entry(root, manifest, _untrained(task).state_dict())
    return root


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def predictors(store: Path) -> dict[str, Predictor]:
    """The store's predictors; the main app is given these very objects, so tests can call them directly."""
    return {task: models.load_predictor(store, task, "cpu") for task in TASKS}


@pytest.fixture(scope="module")
async def client(store: Path, predictors: dict[str, Predictor]) -> AsyncIterator[httpx.AsyncClient]:
    async with serve(settings_for(store), lambda task, device: predictors[task]) as c:
        yield c
