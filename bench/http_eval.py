"""Score what a user receives: the three endpoints, through HTTP, on a COCO-format dataset folder.

    python bench/http_eval.py --model-dir STORE --data DIR [--split val] [--by background] --out RESULT.json
    python bench/http_eval.py ... --setting precision=fp32    # any DENSEPRED_* setting of the service

Starts `python -m service` on the store (a loopback port), posts every image of the split to /detect,
/instances and /segment as the raw file, and scores the answers the way `trainer eval` scores the
predictor: COCOeval on the boxes and the RLE masks as they arrive (pycocotools decodes them), mIoU on the
label map rebuilt from the segments. The two should agree: the service and the evaluation are one code
path (models/predictors.py) for uploads within MAX_IMAGE_SIDE.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import harness  # bench/, the script's own folder; it puts the repository on sys.path
import httpx
import numpy as np
import torch
from pycocotools import mask as mask_utils

from trainer.data import CocoDataset
from trainer.evaluate import coco_metrics, confusion_matrix, segmentation_scores

MEDIA = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".webp": "image/webp"}
# What trainer eval asks of the predictor: everything down to the models' own score floor, the cap of 100.
QUERY = {"score_threshold": "0.05", "max_detections": "100"}


def _post(client: httpx.Client, url: str, path: Path, params: dict[str, str]) -> dict[str, Any]:
    response = client.post(url, params=params, content=path.read_bytes(),
                           headers={"Content-Type": MEDIA[path.suffix.lower()]})  # fmt: skip
    response.raise_for_status()
    return dict(response.json())


def _records(image_id: int, answer: dict[str, Any]) -> list[dict[str, Any]]:
    records = []
    for found in answer["detections"]:
        x1, y1, x2, y2 = found["box"]
        record = {"image_id": image_id, "category_id": found["label_id"], "bbox": [x1, y1, x2 - x1, y2 - y1],
                  "score": found["score"]}  # fmt: skip
        if "mask" in found:
            record["segmentation"] = dict(found["mask"])
        records.append(record)
    return records


def _label_map(answer: dict[str, Any]) -> torch.Tensor:
    labels = np.zeros((answer["image"]["height"], answer["image"]["width"]), np.int64)
    for segment in answer["segments"]:
        rle = {"size": segment["mask"]["size"], "counts": segment["mask"]["counts"].encode("ascii")}
        labels[mask_utils.decode(rle).astype(bool)] = segment["label_id"]
    return torch.from_numpy(labels)


def score(url: str, data: Path, split: str, by: str | None) -> dict[str, Any]:
    """Every task's figures from the answers of the service at `url`, overall and per value of `by`."""
    datasets = {task: CocoDataset(data, split, task) for task in ("detect", "instances", "segment")}
    reference = datasets["detect"]
    groups: dict[str, list[int]] = {}
    for image_id in reference.image_ids:
        groups.setdefault(str(reference.coco.imgs[image_id].get(by)) if by else "all", []).append(image_id)
    records: dict[str, list[dict[str, Any]]] = {"detect": [], "instances": []}
    confusion: dict[int, torch.Tensor] = {}
    num_classes = max(c.id for c in reference.categories) + 1
    started = time.perf_counter()
    with httpx.Client(timeout=60) as client:
        for index, image_id in enumerate(reference.image_ids):
            path = data / "images" / reference.coco.imgs[image_id]["file_name"]
            for task in ("detect", "instances"):
                records[task] += _records(image_id, _post(client, f"{url}/{task}", path, QUERY))
            labels = _label_map(_post(client, f"{url}/segment", path, {}))
            truth = datasets["segment"].semantic_truth(index)
            confusion[image_id] = confusion_matrix(truth, labels, num_classes)
    result: dict[str, Any] = {"images": len(reference.image_ids), "seconds": round(time.perf_counter() - started, 1)}
    empty = torch.zeros(num_classes, num_classes, dtype=torch.int64)
    for task in ("detect", "instances"):
        result[task] = coco_metrics(datasets[task], records[task], reference.image_ids, task)
    result["segment"] = segmentation_scores(sum(confusion.values(), empty), reference, len(confusion))
    if by:
        for task in ("detect", "instances"):
            result[task][f"by_{by}"] = {name: coco_metrics(datasets[task], records[task], ids, task)
                                        for name, ids in sorted(groups.items())}  # fmt: skip
        result["segment"][f"by_{by}"] = {
            name: segmentation_scores(sum((confusion[i] for i in ids), empty), reference, len(ids))
            for name, ids in sorted(groups.items())
        }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--split", default="val")
    parser.add_argument("--by", help="also score each value of this image field (e.g. background)")
    parser.add_argument("--setting", action="append", default=[], metavar="KEY=VALUE", help="a service setting")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    settings = dict(item.split("=", 1) for item in args.setting)
    with harness.service(args.model_dir, **settings) as served:
        result = score(served.url, args.data, args.split, args.by)
        # Which runtime answered (PRECISION=auto chooses per model at warm-up): the parity check's subject.
        listed = httpx.get(f"{served.url}/models", timeout=30).json()
        result["settings"] = settings
        result["runtimes"] = {entry["task"]: entry.get("runtime") for entry in listed["models"]}
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
