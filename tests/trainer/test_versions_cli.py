"""`trainer train --keep`, `trainer versions` and `trainer promote`, through the CLI's own entry point."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from models import read_manifest
from tests.conftest import save_random_model
from trainer.cli import main


def _json(capsys: pytest.CaptureFixture[str]) -> object:
    return json.loads(capsys.readouterr().out)


def test_training_over_an_entry_keeps_the_replaced_one(tiny_shapes: Path, tmp_path: Path) -> None:
    store = tmp_path / "store"
    before = save_random_model(store, "segment").version
    argv = ["train", "--task", "segment", "--data", str(tiny_shapes), "--out", str(store), "--preset", "smoke",
            "--steps", "1", "--no-progress", "--run-dir", str(tmp_path / "run"), "--keep", "1"]  # fmt: skip
    assert main(argv) == 0
    assert read_manifest(store, "segment").version != before
    assert [p.name for p in (store / ".history" / "segment").iterdir()] == [before]


def test_versions_lists_served_then_kept_and_promote_swaps_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first = save_random_model(tmp_path, "detect", seed=0).version
    second = save_random_model(tmp_path, "detect", seed=1).version
    save_random_model(tmp_path, "segment")
    capsys.readouterr()
    assert main(["versions", "--store", str(tmp_path), "--task", "detect"]) == 0
    listing = _json(capsys)
    assert isinstance(listing, dict)
    assert [(v["version"], v["served"]) for v in listing["detect"]] == [(second, True), (first, False)]
    assert listing["detect"][0]["arch"] == "fasterrcnn_small"
    assert {"metrics", "trained", "since", "path"} <= listing["detect"][0].keys()

    assert main(["versions", "--store", str(tmp_path), "--verify"]) == 0
    everything = _json(capsys)
    assert isinstance(everything, dict)
    assert sorted(everything) == ["detect", "segment"]  # tasks without an entry are left out
    assert not any("problem" in v for found in everything.values() for v in found)

    assert main(["promote", "--store", str(tmp_path), "--task", "detect", "--version", first]) == 0
    assert _json(capsys) == {"task": "detect", "served": first, "previous": second}
    assert read_manifest(tmp_path, "detect").version == first


def test_promoting_a_version_that_is_not_kept_exits_2_and_says_which_are(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    first = save_random_model(tmp_path, "detect", seed=0).version
    save_random_model(tmp_path, "detect", seed=1)
    assert main(["promote", "--store", str(tmp_path), "--task", "detect", "--version", "0123456789ab"]) == 2
    assert f"kept: {first}" in caplog.text
