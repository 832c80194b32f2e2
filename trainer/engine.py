"""The training loop: data → model → summed losses → optimizer, one step at a time from wherever a run stands."""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trainer.checkpoint import TrainState
from trainer.data import IGNORE, Target, segmentation_batch
from trainer.precision import Precision
from trainer.presets import TrainConfig

StepHook = Callable[[TrainState, dict[str, float]], None]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def warmup_cosine(warmup: int, total: int, floor: float = 0.05) -> Any:
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


class LossComputer:
    """Turns a batch of augmented samples (trainer/augment.py) into a dict of named losses, the way each
    task's model expects it."""

    def __init__(self, task: str, device: torch.device, input_spec: dict[str, Any], dice_weight: float = 0.0) -> None:
        self.task = task
        self.device = device
        self.dice_weight = dice_weight
        self.divisor = int(input_spec.get("size_divisor", 32))
        self.mean = torch.tensor(input_spec["mean"]).view(3, 1, 1)
        self.std = torch.tensor(input_spec["std"]).view(3, 1, 1)

    def __call__(self, model: nn.Module, images: list[Tensor], targets: list[Target]) -> dict[str, Tensor]:
        if self.task == "segment":
            return self._segment(model, images, targets)
        wanted = ("boxes", "labels", "masks") if self.task == "instances" else ("boxes", "labels")
        inputs = [_unit_range(image.to(self.device)) for image in images]
        rcnn_targets = [{k: t[k].to(self.device) for k in wanted} for t in targets]
        losses: dict[str, Tensor] = model(inputs, rcnn_targets)
        return losses

    def _segment(self, model: nn.Module, images: list[Tensor], targets: list[Target]) -> dict[str, Tensor]:
        x, y = segmentation_batch(images, targets, self.mean, self.std, self.divisor)
        out = model(x.to(self.device))
        y = y.to(self.device)
        losses = {"loss_seg": F.cross_entropy(out["out"], y, ignore_index=IGNORE)}
        if self.dice_weight:
            losses["loss_dice"] = self.dice_weight * soft_dice_loss(out["out"], y)
        if "aux" in out:  # torchvision FCNs' auxiliary head, weighted as in its reference trainer
            losses["loss_aux"] = 0.5 * F.cross_entropy(out["aux"], y, ignore_index=IGNORE)
        return losses


def soft_dice_loss(logits: Tensor, target: Tensor) -> Tensor:
    """1 - the soft Dice coefficient of each class over the batch, averaged; pixels labelled IGNORE left out.

    Cross-entropy alone is dominated by background pixels and lets the FCN miss small and low-contrast
    shapes; Dice weighs every class's overlap equally (bench/results/accuracy_experiments.md).
    """
    classes = logits.shape[1]
    valid = (target != IGNORE).unsqueeze(1)
    probs = logits.float().softmax(1) * valid
    # scatter_ into a float tensor: 3x faster than F.one_hot's int64 through the same arithmetic.
    truth = torch.zeros_like(probs).scatter_(1, target.clamp(max=classes - 1).unsqueeze(1), 1.0) * valid
    dims = (0, 2, 3)
    dice = (2 * (probs * truth).sum(dims) + 1) / (probs.sum(dims) + truth.sum(dims) + 1)
    return 1 - dice.mean()


def _unit_range(image: Tensor) -> Tensor:
    return image.float().div_(255) if image.dtype == torch.uint8 else image.float()


def make_state(model: nn.Module, config: TrainConfig, precision: Precision) -> TrainState:
    """AdamW over the trainable parameters (frozen stages excluded), warmup then cosine decay."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(config.warmup_steps, config.steps))
    return TrainState(model, optimizer, schedule, precision.grad_scaler())


def train_steps(
    network: nn.Module,
    state: TrainState,
    batches: Iterator[tuple[list[Tensor], list[Target]]],
    compute_losses: LossComputer,
    total_steps: int,
    precision: Precision,
    after_step: StepHook | None = None,
    all_finite: Callable[[Tensor], bool] | None = None,
) -> None:
    """Optimizer steps from `state.step` up to `total_steps`.

    `network` is what to call: the model itself, or its DistributedDataParallel wrapper (which averages the
    gradients across processes during backward). `after_step` sees the state and the step's record.
    `all_finite(loss)` says whether every process's loss is finite (default: this one's).
    """
    finite = all_finite or (lambda loss: bool(torch.isfinite(loss)))
    while state.step < total_steps:
        started = time.perf_counter()
        images, targets = next(batches)
        with precision.autocast():
            losses = compute_losses(network, images, targets)
        losses = {name: value.float() for name, value in losses.items()}
        loss = torch.stack(list(losses.values())).sum()
        if not finite(loss):
            raise RuntimeError(f"non-finite loss at step {state.step} (this process: "
                               f"{ {k: v.item() for k, v in losses.items()} })")  # fmt: skip
        lr = state.optimizer.param_groups[0]["lr"]
        optimize(state, loss)
        state.step += 1
        state.seconds += time.perf_counter() - started
        if after_step is not None:
            terms = {name: value.item() for name, value in losses.items()}
            after_step(state, {"step": state.step, "lr": lr, "loss": loss.item(), **terms})


def optimize(state: TrainState, loss: Tensor, max_norm: float = 10.0) -> None:
    """Backward, clip, step; through the float16 loss scaler when there is one."""
    params = [p for group in state.optimizer.param_groups for p in group["params"]]
    state.optimizer.zero_grad(set_to_none=True)
    if state.scaler is None:
        loss.backward()
        nn.utils.clip_grad_norm_(params, max_norm=max_norm)
        state.optimizer.step()
    else:
        state.scaler.scale(loss).backward()
        state.scaler.unscale_(state.optimizer)  # clip the true gradients, not the scaled ones
        nn.utils.clip_grad_norm_(params, max_norm=max_norm)
        state.scaler.step(state.optimizer)
        state.scaler.update()
    state.schedule.step()
