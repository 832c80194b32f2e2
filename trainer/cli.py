"""`python -m trainer {synth,train,eval,import-torchvision}`: the offline half of densepred."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from models import DEFAULT_ARCH, TASKS, Category, StoreError, arch_names, get_arch, load_predictor
from models.checkpoints import import_torchvision_checkpoint
from trainer import synth
from trainer.bootstrap import bootstrap
from trainer.data import CocoDataset
from trainer.evaluate import evaluate
from trainer.presets import PRESETS, get_preset
from trainer.train import TrainJob, resolve_device, run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m trainer", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("synth", help="generate the procedural shapes dataset in COCO format")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--train", type=int, default=800, help="training images")
    p.add_argument("--val", type=int, default=100, help="validation images")
    p.add_argument("--seed", type=int, default=0)

    p = sub.add_parser("train", help="train one task on a COCO-format dataset and export it to the store")
    p.add_argument("--task", choices=TASKS, required=True)
    p.add_argument("--data", type=Path, required=True, help="dataset folder: images/ and annotations/{train,val}.json")
    p.add_argument("--out", type=Path, required=True, help="model store; writes OUT/<task>/")
    p.add_argument("--arch", help="architecture (default: the task's small model); see --help of 'archs'")
    p.add_argument("--preset", choices=PRESETS, default="quick")
    p.add_argument("--steps", type=int, help="override the preset's optimizer steps")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--init-from", type=Path, help="store entry/root or torchvision .pth to start from")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (logs only)")

    p = sub.add_parser("eval", help="evaluate a stored model on a dataset split; prints JSON")
    p.add_argument("--task", choices=TASKS, required=True)
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--model", type=Path, required=True, help="model store root")
    p.add_argument("--split", default="val")
    p.add_argument("--device", default="auto")
    p.add_argument("--limit", type=int, help="evaluate only the first N images")

    p = sub.add_parser("import-torchvision", help="wrap a torchvision .pth state dict into the store")
    p.add_argument("--task", choices=TASKS, required=True)
    p.add_argument("--arch", required=True)
    p.add_argument("--weights", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--categories", help="comma-separated names for ids 1..N (default: COCO/VOC names by size)")

    p = sub.add_parser("bootstrap", help="train every task the store lacks (quick preset), generating data if needed")
    p.add_argument("--out", type=Path, required=True, help="model store")
    p.add_argument("--data", type=Path, required=True, help="dataset folder (generated when absent)")
    p.add_argument("--preset", choices=PRESETS, default="quick")
    p.add_argument("--device", default="auto")

    sub.add_parser("archs", help="list the architectures per task")
    return parser


def _emit(result: object) -> None:
    """Results go to stdout as JSON (logs and progress bars go to stderr), so they can be piped."""
    sys.stdout.write(json.dumps(result, indent=2) + "\n")


def cmd_synth(args: argparse.Namespace) -> int:
    synth.generate_dataset(args.out, train=args.train, val=args.val, seed=args.seed)
    logging.info("wrote %d train and %d val images to %s", args.train, args.val, args.out)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    arch = args.arch or DEFAULT_ARCH[args.task]
    get_arch(args.task, arch)  # fail fast on a bad name
    config = get_preset(args.task, args.preset, arch_is_small=arch == DEFAULT_ARCH[args.task])
    config = config.with_overrides(steps=args.steps, batch_size=args.batch_size, lr=args.lr)
    job = TrainJob(
        task=args.task,
        data=args.data,
        out=args.out,
        arch=arch,
        preset=args.preset,
        config=config,
        device=resolve_device(args.device),
        seed=args.seed,
        init_from=args.init_from,
        progress=not args.no_progress,
    )
    manifest = run(job)
    _emit({"task": manifest.task, "arch": manifest.arch, "version": manifest.version,
           "trained": manifest.trained, "metrics": manifest.metrics})  # fmt: skip
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    predictor = load_predictor(args.model, args.task, resolve_device(args.device))
    dataset = CocoDataset(args.data, args.split, args.task)
    _emit(evaluate(predictor, dataset, limit=args.limit))
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    categories = None
    if args.categories:
        names = [n.strip() for n in args.categories.split(",") if n.strip()]
        categories = [Category(i, name) for i, name in enumerate(names, start=1)]
    path = import_torchvision_checkpoint(args.task, args.arch, args.weights, args.out, categories)
    _emit({"imported": str(path)})
    return 0


def cmd_bootstrap(args: argparse.Namespace) -> int:
    bootstrap(args.out, args.data, args.preset, args.device)
    return 0


def cmd_archs(args: argparse.Namespace) -> int:
    _emit({task: arch_names(task) for task in TASKS})
    return 0


COMMANDS = {"synth": cmd_synth, "train": cmd_train, "eval": cmd_eval, "import-torchvision": cmd_import,
            "bootstrap": cmd_bootstrap, "archs": cmd_archs}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except (StoreError, ValueError, FileNotFoundError) as exc:
        logging.getLogger("trainer").error("%s", exc)
        return 2
