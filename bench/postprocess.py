"""Instance post-processing (everything after the forward pass) for 100 instances on one 800 x 800 image.

    python bench/postprocess.py --out bench/results/postprocess_cpu.json [--device cuda]

Both routes start from the same Mask R-CNN output (100 mask grids and boxes, from an untrained
maskrcnn_small on a seeded 800 x 800 image: untrained heads keep the 100-detection cap full):
  full-frame: torchvision's paste_masks_in_image (N x H x W floats), threshold, pycocotools.encode, area
  regions:    models.InstanceMasks (paste within each box, run lengths on the device), then
              pycocotools' string compression of the run lengths (service.rle.encode_regions)
The RLE strings must be identical; the figure is the ratio of median times. Also timed: the whole
response (schemas + JSON bytes) the service builds from the same result.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from harness import machine
from pycocotools import mask as mask_utils
from torchvision.models.detection.roi_heads import paste_masks_in_image

from models import DEFAULT_ARCH, Category, Detections, Manifest, Query, build_model, get_arch, make_predictor
from service import responses
from service.rle import encode_regions
from service.schemas import InstancesResponse


def model_output(device: torch.device, size: int) -> Detections:
    torch.manual_seed(0)
    spec = get_arch("instances", DEFAULT_ARCH["instances"])
    categories = [Category(1, "circle"), Category(2, "square"), Category(3, "triangle")]
    manifest = Manifest("instances", spec.name, 4, categories, dict(spec.input))
    predictor = make_predictor(build_model("instances", spec.name, num_classes=4), manifest, device)
    image = torch.randint(0, 256, (3, size, size), dtype=torch.uint8)
    result = predictor.predict([image], [Query(score_threshold=0.0)])[0]
    assert isinstance(result, Detections)
    assert result.masks is not None
    return result


def full_frame(result: Detections) -> list[dict[str, Any]]:
    masks = result.masks
    assert masks is not None
    pasted = paste_masks_in_image(masks.probs[:, None], masks.boxes, masks.size)[:, 0] >= masks.threshold
    frames = np.asfortranarray(pasted.permute(1, 2, 0).cpu().numpy().astype(np.uint8))
    encoded = mask_utils.encode(frames)
    areas = mask_utils.area(encoded)
    return [
        {"counts": rle["counts"].decode("ascii"), "area": int(area)} for rle, area in zip(encoded, areas, strict=True)
    ]


def regions(result: Detections) -> list[dict[str, Any]]:
    masks = result.masks
    assert masks is not None
    rles, areas = encode_regions(masks.regions(), masks.size)
    return [{"counts": rle["counts"], "area": area} for rle, area in zip(rles, areas, strict=True)]


def whole_response(result: Detections) -> bytes:
    names = {1: "circle", 2: "square", 3: "triangle"}
    found = responses.instances(result, names)
    body = InstancesResponse.model_construct(detections=found)
    return body.model_dump_json(include={"detections"}).encode()


def median_ms(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return round(statistics.median(times) * 1000, 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", type=int, default=800)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    device = torch.device(args.device)
    result = model_output(device, args.size)
    count = len(result.boxes)
    identical = full_frame(result) == regions(result)
    full_ms = median_ms(lambda: full_frame(result), device, args.repeats)
    region_ms = median_ms(lambda: regions(result), device, args.repeats)
    response_ms = median_ms(lambda: whole_response(result), device, args.repeats)
    report = {
        "benchmark": "instance post-processing after the forward pass",
        "machine": machine() | {"device": str(device)},
        "image": [args.size, args.size],
        "instances": count,
        "repeats": args.repeats,
        "identical_rle_and_area": identical,
        "full_frame_ms": full_ms,
        "regions_ms": region_ms,
        "speedup": round(full_ms / region_ms, 1),
        "whole_response_ms": response_ms,
        "response_bytes": len(whole_response(result)),
    }
    print(json.dumps(report, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    if not identical:
        raise SystemExit("the two routes disagree")


if __name__ == "__main__":
    main()
