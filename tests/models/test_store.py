from __future__ import annotations

import json
import os
import pickle
import stat
from pathlib import Path

import pytest
import torch

from models import StoreError, load_entry, load_predictor, read_manifest
from models.checkpoints import import_torchvision_checkpoint
from models.store import MANIFEST_FILE, WEIGHTS_FILE, read_torchvision_checkpoint, sha256_file
from tests.conftest import save_random_model


class _Exploit:
    """Unpickling this creates a marker file: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (str(self.marker), "w"))


def _write_exploit(path: Path, marker: Path) -> None:
    with path.open("wb") as f:
        pickle.dump({"model": {"weight": _Exploit(marker)}}, f)


def test_round_trip_keeps_weights_and_manifest(tmp_path: Path) -> None:
    manifest = save_random_model(tmp_path, "detect")
    loaded, state_dict = load_entry(tmp_path, "detect")
    assert loaded == manifest
    assert loaded.sha256
    assert loaded.version == loaded.sha256[:12]
    assert json.loads((tmp_path / "detect" / "manifest.json").read_text())["format"] == 1
    assert "roi_heads.box_predictor.cls_score.weight" in state_dict
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lock", "detect"]  # no temp folders left behind


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_entry_gets_the_modes_of_the_umask(tmp_path: Path, umask: int) -> None:
    # 0600 weights under umask 022 kept the container's uid 10001 from reading a mounted store.
    previous = os.umask(umask)
    try:
        save_random_model(tmp_path, "segment")
        save_random_model(tmp_path, "segment", seed=1)  # replacing an entry too
    finally:
        os.umask(previous)
    entry = tmp_path / "segment"
    assert stat.S_IMODE(entry.stat().st_mode) == 0o777 & ~umask
    for name in (WEIGHTS_FILE, MANIFEST_FILE):
        assert stat.S_IMODE((entry / name).stat().st_mode) == 0o666 & ~umask, name


def test_overwrite_replaces_entry_atomically(tmp_path: Path) -> None:
    first = save_random_model(tmp_path, "segment", seed=0)
    second = save_random_model(tmp_path, "segment", seed=1)
    assert first.sha256 != second.sha256
    assert read_manifest(tmp_path, "segment").sha256 == second.sha256
    # The replaced entry is kept for `trainer promote` (tests/models/test_history.py); no temp folder is left.
    assert sorted(p.name for p in tmp_path.iterdir()) == [".history", ".lock", "segment"]
    assert [p.name for p in (tmp_path / ".history" / "segment").iterdir()] == [first.version]


def test_tampered_weights_are_refused(tmp_path: Path) -> None:
    save_random_model(tmp_path, "segment")
    weights = tmp_path / "segment" / WEIGHTS_FILE
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(StoreError, match="checksum mismatch"):
        load_predictor(tmp_path, "segment")


def test_missing_entry_and_wrong_task_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="no model for task 'detect'"):
        load_entry(tmp_path, "detect")
    save_random_model(tmp_path, "detect")
    (tmp_path / "detect").rename(tmp_path / "instances")
    with pytest.raises(StoreError, match="describes task 'detect'"):
        read_manifest(tmp_path, "instances")


def test_weights_of_another_architecture_are_refused(tmp_path: Path) -> None:
    save_random_model(tmp_path, "detect")
    manifest_path = tmp_path / "detect" / "manifest.json"
    data = json.loads(manifest_path.read_text())
    data["arch"] = "fasterrcnn_mobilenet_v3_large_320_fpn"
    manifest_path.write_text(json.dumps(data))
    with pytest.raises(StoreError, match="do not fit"):
        load_predictor(tmp_path, "detect")


@pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")  # the hostile file's own protocol
def test_malicious_pickle_is_never_executed(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pth"
    _write_exploit(evil, marker)
    with pytest.raises(StoreError, match="refusing"):
        read_torchvision_checkpoint(evil)
    with pytest.raises(StoreError):
        import_torchvision_checkpoint("detect", "fasterrcnn_small", evil, tmp_path / "store")
    # A pickle smuggled in place of the safetensors file, with a matching checksum, is not unpickled either.
    save_random_model(tmp_path / "store", "detect")
    entry = tmp_path / "store" / "detect"
    _write_exploit(entry / WEIGHTS_FILE, marker)
    manifest = json.loads((entry / "manifest.json").read_text())
    manifest["sha256"] = sha256_file(entry / WEIGHTS_FILE)
    (entry / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(StoreError, match="cannot read"):
        load_predictor(tmp_path / "store", "detect")
    assert not marker.exists()


def test_checkpoint_wrapped_in_model_key_is_unwrapped(tmp_path: Path) -> None:
    path = tmp_path / "ckpt.pth"
    torch.save({"model": {"module.layer.weight": torch.ones(2)}, "epoch": 3}, path)
    assert list(read_torchvision_checkpoint(path)) == ["layer.weight"]
