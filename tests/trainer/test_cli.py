"""The trainer CLI end to end at smoke scale: synth → train → eval → a store entry that loads and predicts."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torchvision.models import detection

from models import Detections, SemanticMap, build_model, load_predictor, read_manifest
from trainer.bootstrap import Stage, init_source, plan, stage_config
from trainer.cli import main
from trainer.data import CocoDataset
from trainer.transfer import warm_start


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("shapes")
    # The module entry point, as a user runs it.
    cmd = [sys.executable, "-m", "trainer", "synth", "--out", str(out), "--train", "24", "--val", "8", "--seed", "1"]
    subprocess.run(cmd, check=True, capture_output=True)
    return out


@pytest.fixture(scope="module")
def store(shapes: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    store = tmp_path_factory.mktemp("store")
    for task in ("segment", "detect", "instances"):
        argv = ["train", "--task", task, "--data", str(shapes), "--out", str(store), "--preset", "smoke"]
        assert main([*argv, "--no-progress", "--run-dir", str(tmp_path_factory.mktemp(f"run-{task}"))]) == 0
    return store


@pytest.mark.parametrize("task", ["segment", "detect", "instances"])
def test_smoke_training_writes_an_entry_that_loads_and_predicts(shapes: Path, store: Path, task: str) -> None:
    manifest = read_manifest(store, task)
    assert manifest.trained["preset"] == "smoke"
    assert manifest.trained["steps"] > 0
    assert [c.name for c in manifest.categories] == ["circle", "square", "triangle"]
    assert "val" in manifest.metrics
    # Written with the umask's modes, like any other file: readable by the container's user where 022.
    umask = os.umask(0o022)
    os.umask(umask)
    for path in (store / task, *(store / task).iterdir()):
        wanted = (0o777 if path.is_dir() else 0o666) & ~umask
        assert stat.S_IMODE(path.stat().st_mode) == wanted, path
    predictor = load_predictor(store, task)
    val = CocoDataset(shapes, "val", task)
    images = [val.read_image(0), val.read_image(1)]
    for image, result in zip(images, predictor.predict(images), strict=True):
        if task == "segment":
            assert isinstance(result, SemanticMap)
            assert result.labels.shape == image.shape[-2:]
            assert int(result.labels.max()) <= 3
        else:
            assert isinstance(result, Detections)
            assert result.boxes.shape[1] == 4


def test_eval_prints_coco_metrics_as_json(shapes: Path, store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for task, keys in (("detect", {"bbox"}), ("instances", {"bbox", "segm"}), ("segment", {"mIoU", "iou"})):
        assert main(["eval", "--task", task, "--data", str(shapes), "--model", str(store)]) == 0
        report = json.loads(capsys.readouterr().out)
        assert keys <= set(report)
        assert report["images"] == 8
        if task != "segment":
            assert 0.0 <= report["bbox"]["mAP50"] <= 1.0
        else:
            assert set(report["iou"]) <= {"background", "circle", "square", "triangle"}


def test_instances_can_start_from_the_detector(shapes: Path, store: Path, tmp_path: Path) -> None:
    argv = ["train", "--task", "instances", "--data", str(shapes), "--out", str(tmp_path), "--preset", "smoke"]
    argv += ["--steps", "1", "--no-progress", "--run-dir", str(tmp_path / "run")]
    assert main([*argv, "--init-from", str(store / "detect")]) == 0
    detector = load_predictor(store, "detect").model.state_dict()
    tuned = load_predictor(tmp_path, "instances").model.state_dict()
    key = "backbone.body.stem.0.0.weight"
    # One step of AdamW moves weights by about lr; a fresh init would be far away.
    assert (tuned[key] - detector[key]).abs().max() < 1e-2
    assert read_manifest(tmp_path, "instances").trained["init_from"] == str(store / "detect")


def test_bootstrap_chains_the_tasks_through_one_backbone(store: Path, tmp_path: Path) -> None:
    stages = plan(["detect", "instances", "segment"])
    assert stages == [Stage("detect"), Stage("instances"), Stage("detect", refine=True), Stage("segment")]
    assert plan(["detect", "segment"]) == [Stage("detect"), Stage("segment")]  # no instances: no refinement
    sources = [init_source(store, stage) for stage in stages]
    assert sources == [None, store / "detect", store / "instances", store / "instances"]
    assert init_source(tmp_path, Stage("segment")) is None  # nothing to start from: from scratch
    for preset in ("quick", "full"):  # the refinement is a short run in both chains
        assert stage_config(stages[2], preset).steps < stage_config(stages[0], preset).steps
    # Faster R-CNN is Mask R-CNN less its mask head: every detector tensor comes from the instances entry.
    detector = build_model("detect", "fasterrcnn_small", 4)
    assert warm_start(detector, store / "instances", "detect") == []


def test_bootstrap_trains_what_the_store_lacks_with_the_seed_and_precision_given(
    shapes: Path, store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    partial = tmp_path / "store"
    for task in ("instances", "segment"):
        shutil.copytree(store / task, partial / task)
    monkeypatch.chdir(tmp_path)  # run folders go under ./artifacts/runs
    monkeypatch.setattr("trainer.precision.native_cpu_bf16", lambda: True)  # bf16 autocast runs on any CPU
    argv = ["bootstrap", "--out", str(partial), "--data", str(shapes), "--preset", "smoke", "--device", "cpu"]
    assert main([*argv, "--seed", "3", "--amp"]) == 0
    trained = read_manifest(partial, "detect").trained
    assert (trained["seed"], trained["preset"], trained["init_from"]) == (3, "smoke", None)
    assert trained["precision"] == "bfloat16"
    assert read_manifest(partial, "instances").trained == read_manifest(store, "instances").trained  # kept


def test_import_torchvision_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = detection.fasterrcnn_mobilenet_v3_large_320_fpn(weights=None, weights_backbone=None, num_classes=3)
    torch.save(model.state_dict(), tmp_path / "m.pth")
    argv = ["import-torchvision", "--task", "detect", "--arch", "fasterrcnn_mobilenet_v3_large_320_fpn"]
    assert main([*argv, "--weights", str(tmp_path / "m.pth"), "--out", str(tmp_path), "--categories", "cat,dog"]) == 0
    assert json.loads(capsys.readouterr().out)["imported"] == str(tmp_path / "detect")
    assert read_manifest(tmp_path, "detect").category_names() == {1: "cat", 2: "dog"}


def test_user_errors_exit_2_with_a_message(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    argv = ["train", "--task", "detect", "--data", str(tmp_path / "missing"), "--out", str(tmp_path), "--no-progress"]
    assert main(argv) == 2
    assert "no train annotations" in caplog.text
    assert main(["eval", "--task", "segment", "--data", str(tmp_path), "--model", str(tmp_path)]) == 2
    assert "no model for task 'segment'" in caplog.text


def test_init_from_a_hostile_pickle_runs_no_code(shapes: Path, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self) -> tuple[object, tuple[str, str]]:
            return (open, (str(marker), "w"))

    torch.save({"model": {"backbone.weight": Exploit()}}, tmp_path / "evil.pth")
    argv = ["train", "--task", "detect", "--data", str(shapes), "--out", str(tmp_path), "--preset", "smoke"]
    assert main([*argv, "--no-progress", "--init-from", str(tmp_path / "evil.pth")]) == 2
    assert not marker.exists()
    assert not (tmp_path / "detect").exists()


def test_dice_weight_is_a_training_flag_recorded_with_its_loss_term(shapes: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    argv = ["train", "--task", "segment", "--data", str(shapes), "--out", str(tmp_path), "--preset", "smoke",
            "--steps", "2", "--dice-weight", "0.5", "--run-dir", str(run_dir), "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    assert read_manifest(tmp_path, "segment").trained["config"]["dice_weight"] == 0.5
    assert (run_dir / "metrics.csv").read_text().splitlines()[0].split(",")[-1] == "loss_dice"


@pytest.mark.parametrize("weight", ["-1", "inf", "nan"])
def test_a_dice_weight_below_zero_or_not_finite_is_refused(
    weight: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["train", "--task", "segment", "--data", str(tmp_path), "--out", str(tmp_path), f"--dice-weight={weight}"]
    with pytest.raises(SystemExit) as refused:
        main(argv)
    assert refused.value.code == 2
    assert f"--dice-weight: must be a finite number, 0 or more, not {weight}" in capsys.readouterr().err


def test_a_dice_weight_for_an_rcnn_is_refused(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    argv = ["train", "--task", "detect", "--data", str(tmp_path), "--out", str(tmp_path), "--dice-weight", "1"]
    assert main(argv) == 2
    assert "--dice-weight is a segment loss; detect has none" in caplog.text
    assert not (tmp_path / "detect").exists()
