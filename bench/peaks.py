"""Peak memory of the service's heaviest answers, measured as the rise of a process's resident set.

    PYTHONPATH=. python bench/peaks.py masks [--side 2000] [--boxes 10,30,60]
    PYTHONPATH=. python bench/peaks.py render [--width 7000 --height 5000] [--requests 4] [--tasks segment,instances]

`masks`: the RLEs of an instance answer (models.InstanceMasks.regions -> service.rle.encode_regions, as
service/responses.py builds them) for N large boxes on a side x side frame, once per N, each in a fresh
child process. Prints per N: the peak RSS rise (VmHWM after /proc/self/clear_refs reset, minus the RSS
before), the sum of the boxes' areas, seconds, and a digest of the RLEs (equal digests: equal answers).

`render`: a real `python -m service` (untrained models saved to a temporary store, the checkout's code),
then per task `--requests` concurrent requests of one large PNG, first as JSON, then with ?render=png.
Prints per phase the server's peak RSS rise over its RSS before the phase (VmHWM reset between phases),
its RSS once the phase is over, the statuses and the seconds.

Run it with PYTHONPATH at two checkouts to compare them; the script uses only APIs both share.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import io
import json
import multiprocessing
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

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


def _random_store(root: Path) -> None:
    from models import DEFAULT_ARCH, Category, Manifest, build_model, get_arch, save_entry

    torch.manual_seed(0)
    for task in ("segment", "instances"):
        spec = get_arch(task, DEFAULT_ARCH[task])
        model: Any = build_model(task, spec.name, num_classes=4)  # a torchvision module, attributes by task
        if task == "instances":  # wider classifier weights: scores that pass a threshold, so masks to draw
            torch.nn.init.normal_(model.roi_heads.box_predictor.cls_score.weight, std=2.0)
        categories = [Category(1, "circle"), Category(2, "square"), Category(3, "triangle")]
        manifest = Manifest(task=task, arch=spec.name, num_classes=4, categories=categories, input=dict(spec.input))
        save_entry(root, manifest, model.state_dict())


def _large_png(width: int, height: int) -> bytes:
    """Coloured rectangles on a grey ground: a few hundred kB as PNG, however many megapixels."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (width, height), (120, 120, 120))
    draw = ImageDraw.Draw(image)
    generator = torch.Generator().manual_seed(3)
    for _ in range(12):
        x, y = (torch.rand(2, generator=generator) * torch.tensor([width * 0.8, height * 0.8])).tolist()
        w, h = (torch.rand(2, generator=generator) * torch.tensor([width * 0.3, height * 0.3]) + 50).tolist()
        colour = tuple(int(v) for v in torch.randint(0, 256, (3,), generator=generator))
        draw.rectangle([x, y, x + w, y + h], fill=colour)
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def _status_of(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} for process {pid}")


async def _phase(url: str, pid: int, path: str, params: dict[str, str], data: bytes, count: int) -> dict[str, object]:
    import httpx

    Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM := VmRSS
    before = _status_of(pid, "VmRSS")
    start = time.perf_counter()
    headers = {"Content-Type": "image/png"}
    async with httpx.AsyncClient(base_url=url, timeout=600) as client:
        calls = [client.post(path, params=params, content=data, headers=headers) for _ in range(count)]
        answers = await asyncio.gather(*calls)
    seconds = time.perf_counter() - start
    await asyncio.sleep(2)  # let freed memory go back, where the allocator returns it
    pictures = {_png_size(a.content) for a in answers if a.headers.get("content-type") == "image/png"}
    return {
        "path": path,
        "params": params,
        "statuses": [a.status_code for a in answers],
        "peak_rise_mib": round((_status_of(pid, "VmHWM") - before) / 1024),
        "rss_after_rise_mib": round((_status_of(pid, "VmRSS") - before) / 1024),
        "seconds": round(seconds, 1),
        "png_sizes": sorted(pictures),
    }


def _png_size(data: bytes) -> str:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        return f"{image.width}x{image.height}"


def render(width: int, height: int, requests: int, tasks: list[str]) -> list[dict[str, object]]:
    import httpx

    data = _large_png(width, height)
    print(json.dumps({"upload": f"{width}x{height}", "png_bytes": len(data)}))
    with tempfile.TemporaryDirectory() as folder:
        _random_store(Path(folder))
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        env = {
            **os.environ,
            "DENSEPRED_MODEL_DIR": folder,
            "DENSEPRED_DEVICE": "cpu",
            "DENSEPRED_PORT": str(port),
            "DENSEPRED_TASKS": ",".join(tasks),
            "DENSEPRED_REQUEST_TIMEOUT_S": "600",
            "OMP_NUM_THREADS": "1",
        }
        url = f"http://127.0.0.1:{port}"
        # cwd: the store's folder, so that `-m service` imports the PYTHONPATH checkout, not the current folder's.
        server = subprocess.Popen([sys.executable, "-m", "service"], env=env, cwd=folder,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        try:
            deadline = time.monotonic() + 600
            while True:
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                        break
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the server did not become ready")
                time.sleep(0.5)
            rows = []
            for task in tasks:
                params = {"score_threshold": "0", "max_detections": "10"} if task == "instances" else {}
                for extra in ({}, {"render": "png"}):
                    row = asyncio.run(_phase(url, server.pid, f"/{task}", {**params, **extra}, data, requests))
                    print(json.dumps(row), flush=True)
                    rows.append(row)
            return rows
        finally:
            server.terminate()
            server.wait(60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    mask_args = commands.add_parser("masks", help="instance-mask RLEs of many large boxes")
    mask_args.add_argument("--side", type=int, default=2000)
    mask_args.add_argument("--boxes", default="10,30,60")
    render_args = commands.add_parser("render", help="concurrent ?render=png of one large PNG, on a real server")
    render_args.add_argument("--width", type=int, default=7000)
    render_args.add_argument("--height", type=int, default=5000)
    render_args.add_argument("--requests", type=int, default=4)
    render_args.add_argument("--tasks", default="segment,instances")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.command == "render":
        render(args.width, args.height, args.requests, args.tasks.split(","))
    if args.command == "masks":
        for row in masks(args.side, [int(n) for n in args.boxes.split(",")]):
            print(json.dumps(row))


if __name__ == "__main__":
    main()
