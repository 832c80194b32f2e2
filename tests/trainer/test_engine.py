"""The training loop's parts: data order, mixed-precision choice, checkpoints, the run folder and its plots."""

from __future__ import annotations

import json
import random
from itertools import islice
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import Tensor, nn

from models import Detections, InstanceMasks, SemanticMap, read_manifest
from models.small import SkipFCN
from trainer.checkpoint import load_checkpoint, save_checkpoint
from trainer.cli import main
from trainer.data import IGNORE, Target
from trainer.engine import LossComputer, make_state, seed_everything, soft_dice_loss
from trainer.plots import draw_result
from trainer.precision import Precision, choose_precision
from trainer.presets import TrainConfig
from trainer.runlog import METRICS_FILE, read_metrics
from trainer.sampling import EpochBatchSampler, batch_stream


class CountingData:
    """Item (epoch, i) is the scalar tensor i; counts the items it loads."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.loads = 0

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, key: tuple[int, int]) -> tuple[Tensor, Target]:
        self.loads += 1
        return torch.tensor(key[1]), {}


def test_epoch_order_is_a_pure_function_of_seed_and_epoch() -> None:
    sampler = EpochBatchSampler(10, 2, seed=5)
    assert sampler.epoch_batches(3) == EpochBatchSampler(10, 2, seed=5).epoch_batches(3)
    assert sampler.epoch_batches(0) != sampler.epoch_batches(1)
    assert sampler.epoch_batches(0) != EpochBatchSampler(10, 2, seed=6).epoch_batches(0)
    assert sorted(i for batch in sampler.epoch_batches(0) for i in batch) == list(range(10))


def test_ranks_take_disjoint_equal_shares_of_each_epoch() -> None:
    shares = [EpochBatchSampler(13, 2, seed=1, rank=r, world_size=3).epoch_batches(4) for r in range(3)]
    assert [len(share) for share in shares] == [2, 2, 2]  # 13 // 3 = 4 images each: two steps in lockstep
    taken = [i for share in shares for batch in share for i in batch]
    assert len(taken) == len(set(taken)) == 12
    with pytest.raises(ValueError, match="cannot fill one batch"):
        EpochBatchSampler(5, 2, seed=0, world_size=4)


def test_grouped_batches_hold_one_group_and_keep_the_epoch_shape() -> None:
    groups = [i % 3 == 0 for i in range(20)]  # 7 of one group, 13 of the other
    for rank, world_size in ((0, 1), (1, 2)):
        plain = EpochBatchSampler(20, 4, seed=2, rank=rank, world_size=world_size)
        grouped = EpochBatchSampler(20, 4, seed=2, rank=rank, world_size=world_size, groups=[int(g) for g in groups])
        for epoch in range(3):
            a, b = plain.epoch_batches(epoch), grouped.epoch_batches(epoch)
            assert len(a) == len(b)
            assert sorted(i for x in a for i in x) == sorted(i for x in b for i in x)
            assert sum(len({groups[i] for i in batch}) > 1 for batch in b) <= 1  # only the remainders mix
        assert grouped.epoch_batches(1) == grouped.epoch_batches(1)


def test_a_stream_reenters_at_any_step_without_loading_what_it_skips() -> None:
    def ids(batches: list[tuple[list[Tensor], list[Target]]]) -> list[list[int]]:
        return [[int(x) for x in images] for images, _ in batches]

    full = ids(list(islice(batch_stream(CountingData(5), EpochBatchSampler(5, 2, seed=0)), 7)))  # type: ignore[arg-type]
    data = CountingData(5)
    resumed = ids(list(islice(batch_stream(data, EpochBatchSampler(5, 2, seed=0), start_step=3), 4)))  # type: ignore[arg-type]
    assert resumed == full[3:]
    assert data.loads == 8


def test_a_cpu_without_native_bf16_trains_in_float32_and_refuses_amp(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("trainer.precision.native_cpu_bf16", lambda: False)
    precision = choose_precision(torch.device("cpu"))
    assert (precision.dtype, precision.name, precision.grad_scaler()) == (None, "float32", None)
    with precision.autocast():
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
    with pytest.raises(ValueError, match="--amp needs a CUDA device or a CPU with native bf16"):
        choose_precision(torch.device("cpu"), amp=True)


def test_a_cpu_with_native_bf16_autocasts_to_bf16_unless_told_not_to(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("trainer.precision.native_cpu_bf16", lambda: True)
    for precision in (choose_precision(torch.device("cpu")), choose_precision(torch.device("cpu"), amp=True)):
        assert (precision.dtype, precision.grad_scaler()) == (torch.bfloat16, None)  # bf16 needs no loss scaling
        with precision.autocast():
            assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    assert choose_precision(torch.device("cpu"), amp=False).dtype is None


@pytest.mark.parametrize(("bf16", "dtype", "scaled"), [(True, torch.bfloat16, False), (False, torch.float16, True)])
def test_cuda_autocasts_to_bfloat16_where_supported_else_float16_with_loss_scaling(
    monkeypatch: pytest.MonkeyPatch, bf16: bool, dtype: torch.dtype, scaled: bool
) -> None:
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: bf16)
    precision = choose_precision(torch.device("cuda", 0))
    assert (precision.dtype, precision.needs_scaler) == (dtype, scaled)
    assert choose_precision(torch.device("cuda"), amp=False).dtype is None


def test_checkpoint_restores_training_state_and_every_rng(tmp_path: Path) -> None:
    state = make_state(nn.Linear(3, 2), TrainConfig(steps=4, batch_size=1, lr=0.1), Precision("cpu"))
    state.model(torch.ones(1, 3)).sum().backward()
    state.optimizer.step()
    state.step = 1
    seed_everything(1)
    save_checkpoint(tmp_path / "checkpoint.pt", state)
    expected = (random.random(), np.random.rand(), torch.rand(1), np.random.normal())
    weights = {k: v.clone() for k, v in state.model.state_dict().items()}

    seed_everything(2)
    restored = make_state(nn.Linear(3, 2), TrainConfig(steps=4, batch_size=1, lr=0.1), Precision("cpu"))
    load_checkpoint(tmp_path / "checkpoint.pt", restored)  # torch.load(weights_only=True) inside
    assert (random.random(), np.random.rand(), torch.rand(1), np.random.normal()) == expected
    assert restored.step == 1
    assert all(torch.equal(v, weights[k]) for k, v in restored.model.state_dict().items())
    assert restored.optimizer.state_dict()["state"][0]["step"] == 1


def test_run_folder_has_per_term_metrics_and_plots(tiny_shapes: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    argv = ["train", "--task", "instances", "--data", str(tiny_shapes), "--out", str(tmp_path), "--preset", "smoke",
            "--steps", "2", "--batch-size", "1", "--run-dir", str(run_dir), "--no-progress", "--no-amp"]  # fmt: skip
    assert main(argv) == 0
    rows = read_metrics(run_dir / METRICS_FILE)
    assert list(rows[0]) == ["step", "lr", "loss", "loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness",
                             "loss_rpn_box_reg"]  # fmt: skip
    assert [row["step"] for row in rows] == [1, 2]
    with Image.open(run_dir / "loss.png") as plot:
        assert plot.format == "PNG"
        assert plot.width >= 400
    with Image.open(run_dir / "val_overlay.png") as grid:
        assert grid.size == (2 * (256 + 4) + 4, 256 + 8)  # two val images in 256 px tiles
    assert json.loads((run_dir / "run.json").read_text())["config"]["steps"] == 2
    trained = read_manifest(tmp_path, "instances").trained
    assert (trained["run_dir"], trained["world_size"], trained["precision"]) == (str(run_dir), 1, "float32")  # --no-amp


def test_overlays_draw_masks_and_boxes_where_predicted() -> None:
    image = torch.zeros(3, 40, 60, dtype=torch.uint8)
    box = torch.tensor([[10.0, 10, 30, 20]])
    mask = InstanceMasks(torch.ones(1, 28, 28), box, (40, 60))  # the whole box
    found = Detections(box, torch.tensor([2]), torch.tensor([0.9]), mask)
    drawn = draw_result(image, found, {2: "square"})
    assert drawn[:, 15, 20].any()  # mask fill
    assert not drawn[:, 35, 50].any()  # untouched background
    labels = torch.zeros(40, 60, dtype=torch.uint8)
    labels[0:5, 0:5] = 1
    painted = draw_result(image, SemanticMap(labels), {1: "circle"})
    assert painted[:, 2, 2].any()
    assert not painted[:, 30, 30].any()


def test_ablation_flags_an_architecture_lacks_are_refused(
    tiny_shapes: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    argv = ["train", "--task", "segment", "--data", str(tiny_shapes), "--out", str(tmp_path), "--no-progress"]
    assert main([*argv, "--arch", "fcn_resnet50", "--skips", "16s"]) == 2
    assert "fcn_resnet50 has no option 'skips'" in caplog.text
    assert main([*argv, "--roi-op", "pool"]) == 2
    assert "fcn_small has no option 'roi_op' (its options: skips)" in caplog.text
    assert not list(tmp_path.iterdir())  # refused before anything was written


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_mixed_precision_training_on_cuda(tiny_shapes: Path, tmp_path: Path) -> None:
    argv = ["train", "--task", "instances", "--data", str(tiny_shapes), "--out", str(tmp_path), "--preset", "smoke",
            "--steps", "3", "--batch-size", "2", "--device", "cuda", "--run-dir", str(tmp_path / "run"),
            "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    trained = read_manifest(tmp_path, "instances").trained
    assert trained["precision"] in ("bfloat16", "float16")
    assert trained["device"].startswith("cuda")


def test_tensorboard_gets_the_same_scalars_when_installed(tiny_shapes: Path, tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    argv = ["train", "--task", "detect", "--data", str(tiny_shapes), "--out", str(tmp_path), "--preset", "smoke",
            "--steps", "2", "--batch-size", "1", "--run-dir", str(tmp_path / "run"), "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    assert {"train/loss", "train/loss_box_reg", "train/lr"} <= set(events.Tags()["scalars"])
    assert [event.step for event in events.Scalars("train/loss")] == [1, 2]


def test_soft_dice_is_zero_for_a_confident_match_and_one_minus_the_overlap_otherwise() -> None:
    target = torch.tensor([[[0, 0, 1, 1], [0, 2, 2, 1]]])
    confident = 50 * torch.nn.functional.one_hot(target, 3).permute(0, 3, 1, 2).float()
    assert soft_dice_loss(confident, target) == pytest.approx(0, abs=1e-4)
    # Every pixel predicted as class 0 with certainty: class 0 overlaps 3 of its 3 pixels among 8 predicted,
    # classes 1 and 2 not at all; Dice (2|A∩B| + 1) / (|A| + |B| + 1) per class, smoothed by 1.
    all_zero = 50 * torch.nn.functional.one_hot(torch.zeros_like(target), 3).permute(0, 3, 1, 2).float()
    expected = 1 - ((2 * 3 + 1) / (8 + 3 + 1) + 1 / (0 + 3 + 1) + 1 / (0 + 2 + 1)) / 3
    assert soft_dice_loss(all_zero, target) == pytest.approx(expected, abs=1e-4)


def test_soft_dice_ignores_pixels_labelled_ignore() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 8, 8)
    target = torch.randint(0, 4, (2, 8, 8))
    target[:, :, 5:] = IGNORE
    changed = logits.clone()
    changed[:, :, :, 5:] = torch.randn(2, 4, 8, 3) * 10  # what the network says on ignored pixels
    assert soft_dice_loss(changed, target) == pytest.approx(float(soft_dice_loss(logits, target)), abs=1e-6)
    assert soft_dice_loss(logits, target) != pytest.approx(float(soft_dice_loss(logits, target.clamp(max=3))))


def test_the_segment_loss_carries_a_dice_term_only_when_weighted() -> None:
    spec = {"mean": [0.5] * 3, "std": [0.25] * 3, "size_divisor": 32}
    model = SkipFCN(num_classes=3).eval()
    images = [torch.rand(3, 40, 56)]
    targets: list[Target] = [{"mask": torch.randint(0, 3, (40, 56))}]
    plain = LossComputer("segment", torch.device("cpu"), spec)(model, images, targets)
    weighted = LossComputer("segment", torch.device("cpu"), spec, dice_weight=2.0)(model, images, targets)
    assert set(plain) == {"loss_seg"}
    assert set(weighted) == {"loss_seg", "loss_dice"}
    assert float(weighted["loss_seg"]) == pytest.approx(float(plain["loss_seg"]))
    assert 0 < float(weighted["loss_dice"]) <= 2.0
