"""Equal answers, checked: a faster runtime's predictions against fp32's on the same images.

Tolerances (a candidate runtime is kept only within all of them, on every image):
- detections: each detection fp32 reports at the default score threshold (0.5) has one of the
  candidate's with the same label, box corners within `BOX_PX` pixels and score within `SCORE`, among
  the candidate's detections down to 0.5 - `SCORE`; and the same the other way round. A detection
  scoring just above the threshold in one run and just below it in the other is therefore no failure.
- instance masks: each matched pair's masks overlap with IoU >= `MASK_IOU` (pixels of the frame).
- label maps: at least `LABEL_AGREEMENT` of the pixels carry the same class.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torchvision.ops import box_iou

from models.predictors import Detections, Query, Result, SemanticMap

BOX_PX = 3.0
SCORE = 0.05
MASK_IOU = 0.95
LABEL_AGREEMENT = 0.99
THRESHOLD = Query().score_threshold  # what a client gets by default
# Predict down to here, so that detections near the threshold can still find their match.
PARITY_QUERY = Query(score_threshold=THRESHOLD - SCORE)


@dataclass
class Parity:
    """The worst figures over the images compared, and whether they are within the tolerances."""

    images: int = 0
    label_agreement: float = 1.0  # lowest share of pixels with the same class (label maps)
    box_px: float = 0.0  # largest corner difference of matched boxes
    score: float = 0.0  # largest score difference of matched detections
    mask_iou: float = 1.0  # lowest IoU of matched masks
    unmatched: int = 0  # detections at the threshold with no match
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, object]:
        return {"ok": self.ok, "images": self.images, "label_agreement": round(self.label_agreement, 5),
                "box_px": round(self.box_px, 3), "score": round(self.score, 4), "mask_iou": round(self.mask_iou, 4),
                "unmatched": self.unmatched, "problems": self.problems[:5]}  # fmt: skip


def compare(reference: Sequence[Result], candidate: Sequence[Result]) -> Parity:
    """Compare results image by image (both predicted with PARITY_QUERY)."""
    if len(reference) != len(candidate):
        raise ValueError(f"{len(reference)} reference results but {len(candidate)} candidate results")
    parity = Parity(images=len(reference))
    for i, (ref, cand) in enumerate(zip(reference, candidate, strict=True)):
        if isinstance(ref, SemanticMap) and isinstance(cand, SemanticMap):
            _compare_maps(parity, i, ref, cand)
        elif isinstance(ref, Detections) and isinstance(cand, Detections):
            _compare_detections(parity, i, ref, cand)
            _compare_detections(parity, i, cand, ref, masks=False)  # nothing extra the other way round
        else:
            raise TypeError(f"image {i}: cannot compare {type(ref).__name__} with {type(cand).__name__}")
    if parity.label_agreement < LABEL_AGREEMENT:
        parity.problems.append(f"label maps agree on {parity.label_agreement:.4f} of pixels < {LABEL_AGREEMENT}")
    if parity.mask_iou < MASK_IOU:
        parity.problems.append(f"a mask IoU of {parity.mask_iou:.3f} < {MASK_IOU}")
    return parity


def _compare_maps(parity: Parity, index: int, ref: SemanticMap, cand: SemanticMap) -> None:
    if ref.labels.shape != cand.labels.shape:
        parity.problems.append(f"image {index}: label maps of shapes {tuple(ref.labels.shape)} and "
                               f"{tuple(cand.labels.shape)}")  # fmt: skip
        parity.label_agreement = 0.0
        return
    agreement = float((ref.labels == cand.labels).float().mean())
    parity.label_agreement = min(parity.label_agreement, agreement)


def _compare_detections(parity: Parity, index: int, ref: Detections, cand: Detections, masks: bool = True) -> None:
    """Every detection of `ref` at THRESHOLD needs a match in `cand` (all of it, down to THRESHOLD - SCORE)."""
    kept = (ref.scores >= THRESHOLD).nonzero().flatten().tolist()
    if not kept:
        return
    iou = box_iou(ref.boxes, cand.boxes) if len(cand.boxes) else torch.zeros(len(ref.boxes), 0)
    taken: set[int] = set()
    dense_ref = ref.masks.dense() if masks and ref.masks is not None else None
    dense_cand = cand.masks.dense() if masks and cand.masks is not None else None
    for r in kept:  # in descending score: torchvision and the predictor sort detections so
        options = [c for c in range(len(cand.boxes)) if c not in taken and int(cand.labels[c]) == int(ref.labels[r])]
        if not options:
            _unmatched(parity, index, ref, r, "no detection of its class")
            continue
        c = max(options, key=lambda k: float(iou[r, k]))
        px = float((ref.boxes[r] - cand.boxes[c]).abs().max())
        score = abs(float(ref.scores[r] - cand.scores[c]))
        if px > BOX_PX or score > SCORE:
            _unmatched(parity, index, ref, r, f"nearest box {px:.1f} px off, score {score:.3f} off")
            continue
        taken.add(c)
        parity.box_px, parity.score = max(parity.box_px, px), max(parity.score, score)
        if dense_ref is not None and dense_cand is not None:
            parity.mask_iou = min(parity.mask_iou, _mask_iou(dense_ref[r], dense_cand[c]))


def _unmatched(parity: Parity, index: int, ref: Detections, r: int, why: str) -> None:
    parity.unmatched += 1
    box = [round(v) for v in ref.boxes[r].tolist()]
    parity.problems.append(f"image {index}: detection {box} label {int(ref.labels[r])} "
                           f"score {float(ref.scores[r]):.3f} unmatched: {why}")  # fmt: skip


def _mask_iou(a: torch.Tensor, b: torch.Tensor) -> float:
    union = int((a | b).sum())
    return 1.0 if union == 0 else int((a & b).sum()) / union
