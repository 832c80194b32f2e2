"""Peak memory of the service's heaviest answers, measured as the rise of this process's resident set.

    PYTHONPATH=. python bench/peaks.py masks [--side 2000] [--boxes 10,30,60]

`masks`: the RLEs of an instance answer (models.InstanceMasks.regions -> service.rle.encode_regions, as
service/responses.py builds them) for N large boxes on a side x side frame, once per N, each in a fresh
child process. Prints per N: the peak RSS rise (VmHWM after /proc/self/clear_refs reset, minus the RSS
before), the sum of the boxes' areas, seconds, and a digest of the RLEs (equal digests: equal answers).
Run it with PYTHONPATH at two checkouts to compare them; the script uses only APIs both share.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import time
from pathlib import Path

import torch


def rss_kib(field: str = "VmRSS") -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def reset_peak() -> None:
    """Linux: writing 5 to clear_refs resets VmHWM to the current RSS."""
    Path("/proc/self/clear_refs").write_text("5")


def _masks_child(side: int, boxes: int, out: multiprocessing.Queue) -> None:
    from models import InstanceMasks
    from service.rle import encode_regions

    generator = torch.Generator().manual_seed(boxes)
    # Mask R-CNN's 28 x 28 grids, smooth (a blob per box, as trained heads give), over boxes of 40 to 95 %
    # of the frame's side, placed at random inside it.
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 28), torch.linspace(-1, 1, 28), indexing="ij")
    radius = torch.rand(boxes, 1, 1, generator=generator) * 0.5 + 0.5
    probs = (1 - (yy**2 + xx**2) / radius).clamp(0, 1)
    sizes = (torch.rand(boxes, 2, generator=generator) * 0.55 + 0.4) * side
    corners = torch.rand(boxes, 2, generator=generator) * (side - sizes)
    box_tensor = torch.cat([corners, corners + sizes], 1)
    masks = InstanceMasks(probs, box_tensor, (side, side), 0.5)
    area = int((sizes[:, 0] * sizes[:, 1]).sum())
    before = rss_kib()
    reset_peak()
    start = time.perf_counter()
    rles, areas = encode_regions(masks.regions(), masks.size)
    seconds = time.perf_counter() - start
    peak = rss_kib("VmHWM")
    digest = hashlib.sha256(json.dumps([rles, areas]).encode()).hexdigest()[:16]
    out.put({"boxes": boxes, "side": side, "box_pixels": area, "peak_rise_mib": round((peak - before) / 1024, 1),
             "seconds": round(seconds, 3), "digest": digest})  # fmt: skip


def masks(side: int, counts: list[int]) -> list[dict[str, object]]:
    context = multiprocessing.get_context("spawn")  # a fresh process per case: no peak carried over
    results = []
    for boxes in counts:
        queue = context.Queue()
        child = context.Process(target=_masks_child, args=(side, boxes, queue))
        child.start()
        results.append(queue.get(timeout=600))
        child.join()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    mask_args = commands.add_parser("masks", help="instance-mask RLEs of many large boxes")
    mask_args.add_argument("--side", type=int, default=2000)
    mask_args.add_argument("--boxes", default="10,30,60")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.command == "masks":
        for row in masks(args.side, [int(n) for n in args.boxes.split(",")]):
            print(json.dumps(row))


if __name__ == "__main__":
    main()
