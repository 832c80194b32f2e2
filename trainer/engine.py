"""The training loop: data → model → summed losses → optimizer, with a progress bar showing loss and ETA."""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from trainer.data import IGNORE, CocoDataset, Target, collate, forever, segmentation_batch
from trainer.presets import TrainConfig


@dataclass
class TrainResult:
    steps: int
    seconds: float
    history: list[dict[str, float]] = field(default_factory=list)


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def warmup_cosine(warmup: int, total: int, floor: float = 0.05) -> Any:
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


class LossComputer:
    """Turns a batch into a dict of named losses, the way each task's model expects it."""

    def __init__(self, task: str, device: torch.device, input_spec: dict[str, Any], scale_jitter: float) -> None:
        self.task = task
        self.device = device
        self.input_spec = input_spec
        self.scale_jitter = scale_jitter
        self.mean = torch.tensor(input_spec["mean"]).view(3, 1, 1)
        self.std = torch.tensor(input_spec["std"]).view(3, 1, 1)

    def __call__(self, model: nn.Module, images: list[Tensor], targets: list[Target]) -> dict[str, Tensor]:
        if self.task == "segment":
            return self._segment(model, images, targets)
        wanted = ("boxes", "labels", "masks") if self.task == "instances" else ("boxes", "labels")
        inputs = [image.to(self.device).float().div_(255) for image in images]
        rcnn_targets = [{k: t[k].to(self.device) for k in wanted} for t in targets]
        losses: dict[str, Tensor] = model(inputs, rcnn_targets)
        return losses

    def _segment(self, model: nn.Module, images: list[Tensor], targets: list[Target]) -> dict[str, Tensor]:
        max_size = int(self.input_spec.get("max_size") or 1024)
        x, y = segmentation_batch(images, targets, max_size, self.mean, self.std, self.scale_jitter)
        out = model(x.to(self.device))
        y = y.to(self.device)
        losses = {"loss_seg": F.cross_entropy(out["out"], y, ignore_index=IGNORE)}
        if "aux" in out:  # torchvision FCNs' auxiliary head, weighted as in its reference trainer
            losses["loss_aux"] = 0.5 * F.cross_entropy(out["aux"], y, ignore_index=IGNORE)
        return losses


def train(
    model: nn.Module,
    dataset: CocoDataset,
    config: TrainConfig,
    input_spec: dict[str, Any],
    device: torch.device,
    seed: int,
    progress: bool = True,
) -> TrainResult:
    generator = seed_everything(seed)
    loader = DataLoader(
        dataset, batch_size=config.batch_size, shuffle=True, collate_fn=collate, drop_last=True, generator=generator
    )
    batches = forever(loader)
    compute_losses = LossComputer(dataset.task, device, input_spec, config.scale_jitter)
    model.to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(config.warmup_steps, config.steps))
    result = TrainResult(steps=config.steps, seconds=0.0)
    start = time.perf_counter()
    bar = tqdm(range(config.steps), desc=f"train {dataset.task}", unit="step", disable=not progress, dynamic_ncols=True)
    for step in bar:
        images, targets = next(batches)
        losses = compute_losses(model, images, targets)
        loss = sum(losses.values(), torch.zeros((), device=device))
        if not torch.isfinite(loss):
            raise RuntimeError(f"non-finite loss at step {step}: { {k: v.item() for k, v in losses.items()} }")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(params, max_norm=10.0)
        optimizer.step()
        schedule.step()
        record = {"step": float(step), "loss": loss.item(), **{k: v.item() for k, v in losses.items()}}
        result.history.append(record)
        bar.set_postfix(loss=f"{record['loss']:.3f}", lr=f"{schedule.get_last_lr()[0]:.1e}")
    result.seconds = time.perf_counter() - start
    model.eval()
    return result
