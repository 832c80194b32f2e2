"""One cross-renderer image per background kind, with a stored model's predictions drawn on it.

    python bench/cross_overlay.py --store artifacts/models --task instances --data CROSS_DIR --out docs/x.png

The cross set (bench/cross_render.py) is never trained on; the picture shows what the scores of
bench/preset.py's cross rows look like.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch.nn.functional as F
from PIL import Image
from torchvision.utils import make_grid

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from models import load_predictor  # noqa: E402
from trainer.datasets import open_dataset  # noqa: E402
from trainer.plots import OVERLAY_QUERY, draw_result  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, required=True)
    parser.add_argument("--task", default="instances")
    parser.add_argument("--data", type=Path, required=True, help="a cross_render.py folder")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--tile", type=int, default=320)
    args = parser.parse_args()
    predictor = load_predictor(args.store, args.task)
    dataset = open_dataset(args.data, "val", args.task)
    names = predictor.manifest.category_names()
    first_of_kind: dict[str, int] = {}
    for index, image_id in enumerate(dataset.image_ids):
        first_of_kind.setdefault(str(dataset.coco.imgs[image_id].get("background")), index)
    tiles = []
    for index in first_of_kind.values():
        image = dataset.read_image(index)
        (result,) = predictor.predict([image], [OVERLAY_QUERY])
        drawn = draw_result(image, result, names).float()
        scale = args.tile / max(drawn.shape[-2:])
        size = [max(1, round(s * scale)) for s in drawn.shape[-2:]]
        tiles.append(F.interpolate(drawn[None], size=size, mode="bilinear", antialias=True)[0])
    side = args.tile
    padded = [F.pad(t, (0, side - t.shape[-1], 0, side - t.shape[-2]), value=255) for t in tiles]
    grid = make_grid(padded, nrow=4, padding=4, pad_value=255).round().clamp(0, 255).byte()
    Image.fromarray(grid.permute(1, 2, 0).numpy()).save(args.out)
    print(f"{args.out}: {', '.join(first_of_kind)}")


if __name__ == "__main__":
    main()
