"""`python -m trainer {synth,train,eval,import-torchvision,bootstrap,archs,versions,promote}`: the offline half of
densepred.

Data-parallel training goes through the standard launcher: `torchrun --nproc_per_node=N -m trainer train ...`.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from dataclasses import replace
from pathlib import Path

from models import DEFAULT_ARCH, TASKS, Category, StoreError, arch_names, get_arch, history, load_predictor
from models.checkpoints import import_torchvision_checkpoint
from models.devices import resolve_device
from models.small import ROI_OPS, SKIPS
from trainer import synth
from trainer.augment import POLICIES
from trainer.bootstrap import bootstrap
from trainer.datasets import open_dataset
from trainer.evaluate import evaluate
from trainer.presets import PRESETS, get_preset
from trainer.train import TrainJob, load_job, run
from trainer.transfer import FREEZE_BN, INIT_SCOPES

LAYOUTS = ("COCO layout: images/ and annotations/{train,val}.json; or VOC layout (segment only): JPEGImages/, "
           "SegmentationClass/ and ImageSets/Segmentation/{train,val}.txt")  # fmt: skip
ARCH_CHOICES = ("roi_op", "skips", "norm")
# What a resumed run takes from its run.json rather than from the command line.
JOB_FLAGS = ("task", "data", "out", "arch", "preset", "steps", "batch_size", "lr", "dice_weight", "seed", "augment",
             "init_from", "init_scope", "freeze_stages", "freeze_bn", *ARCH_CHOICES, "run_dir",
             "checkpoint_every")  # fmt: skip


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not 0 <= value < math.inf:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be a finite number, 0 or more, not {text}")
    return value


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {value}")
    return value


def _add_train_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("train", help="train one task on a COCO- or VOC-layout dataset and export it to the store")
    p.add_argument("--task", choices=TASKS, help="required unless --resume")
    p.add_argument("--data", type=Path, help=f"dataset folder; required unless --resume. {LAYOUTS}")
    p.add_argument("--out", type=Path, help="model store; writes OUT/<task>/; required unless --resume")
    p.add_argument("--arch", help="architecture (default: the task's small model); see the 'archs' command")
    p.add_argument("--preset", choices=PRESETS, help="smoke, quick (default) or full")
    p.add_argument("--steps", type=int, help="override the preset's optimizer steps")
    p.add_argument("--batch-size", type=int, help="images per step and process")
    p.add_argument("--lr", type=float)
    p.add_argument("--dice-weight", type=_non_negative_float, help="segment: weight of a soft Dice term beside "
                   "cross-entropy (default: the preset's; 0: cross-entropy alone)")  # fmt: skip
    p.add_argument("--seed", type=int, help="default 0; a seeded CPU run is reproducible")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (torchrun: one GPU per rank)")
    p.add_argument(
        "--amp",
        action=argparse.BooleanOptionalAction,
        help="mixed precision (default: on for CUDA and for a CPU with native bf16, where it is bf16)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar (logs only)")
    p.add_argument("--augment", choices=tuple(POLICIES), help="augmentation policy (default: the preset's, strong)")
    p.add_argument("--workers", type=_non_negative, help="data-loading processes (default: as the cores allow)")
    _add_keep(p)
    g = p.add_argument_group("transfer learning")
    g.add_argument("--init-from", type=Path, help="store entry/root or torchvision .pth to start from")
    g.add_argument("--init-scope", choices=INIT_SCOPES, help="copy every tensor that fits (all, default) or backbone.*")
    g.add_argument("--freeze-stages", type=_non_negative, help="freeze the first K backbone stages (ResNet: stem, "
                   "layer1..4; the small models: stem, layer2..4)")  # fmt: skip
    g.add_argument("--freeze-bn", choices=FREEZE_BN, help="freeze the backbone's BatchNorm statistics; auto (default): "
                   "as torchvision does when it loads weights (R-CNN ResNet-50/MobileNet v1 builders)")  # fmt: skip
    g = p.add_argument_group("ablations (recorded as architecture options)")
    g.add_argument("--roi-op", choices=ROI_OPS, help="RoIAlign or RoI max pooling in the small R-CNNs' heads")
    g.add_argument("--norm", action=argparse.BooleanOptionalAction, help="BatchNorm in the small R-CNNs' FPN and heads")
    g.add_argument("--skips", choices=SKIPS, help="FCN-32s, -16s or -8s (fcn_small)")
    g = p.add_argument_group("run folder")
    g.add_argument("--run-dir", type=Path, help="for metrics.csv, checkpoint.pt, plots (artifacts/runs/<task>-<UTC>)")
    g.add_argument("--checkpoint-every", type=_positive, help="steps between checkpoints (default 200, and the last)")
    g.add_argument("--resume", type=Path, metavar="RUN_DIR", help="continue an interrupted run from its checkpoint, "
                   "with its own settings (only --device, --amp, --workers, --keep and --no-progress may "
                   "change)")  # fmt: skip


def _add_keep(p: argparse.ArgumentParser) -> None:
    p.add_argument("--keep", type=_non_negative, help=f"replaced versions kept in STORE/.history/<task>/ for "
                   f"'promote' (default {history.DEFAULT_KEEP}; 0 keeps none)")  # fmt: skip


def _add_lifecycle_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("versions", help="the served and kept versions of each task, with metrics and training facts")
    p.add_argument("--store", type=Path, required=True, help="model store")
    p.add_argument("--task", choices=TASKS, help="one task (default: all)")
    p.add_argument("--verify", action="store_true", help="also check every version's sha256 (reads all weights)")
    p = sub.add_parser("promote", help="serve a kept version again, atomically (the served one is kept instead)")
    p.add_argument("--store", type=Path, required=True, help="model store")
    p.add_argument("--task", choices=TASKS, required=True)
    p.add_argument("--version", required=True, help="a version 'versions' lists as kept")
    _add_keep(p)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m trainer", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("synth", help="generate the procedural shapes dataset in COCO format")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--train", type=int, default=800, help="training images")
    p.add_argument("--val", type=int, default=100, help="validation images")
    p.add_argument("--seed", type=int, default=0)

    _add_train_parser(sub)

    p = sub.add_parser("eval", help="evaluate a stored model on a dataset split; prints JSON")
    p.add_argument("--task", choices=TASKS, required=True)
    p.add_argument("--data", type=Path, required=True, help=LAYOUTS)
    p.add_argument("--model", type=Path, required=True, help="model store root")
    p.add_argument("--split", default="val")
    p.add_argument("--device", default="auto")
    p.add_argument("--limit", type=int, help="evaluate only the first N images")
    p.add_argument("--by", help="also report each value of this image field separately (e.g. background)")

    p = sub.add_parser("import-torchvision", help="wrap a torchvision .pth state dict into the store")
    p.add_argument("--task", choices=TASKS, required=True)
    p.add_argument("--arch", required=True)
    p.add_argument("--weights", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--categories", help="comma-separated names for ids 1..N (default: COCO/VOC names by size)")
    _add_keep(p)

    p = sub.add_parser("bootstrap", help="train every task the store lacks (quick preset), generating data if needed")
    p.add_argument("--out", type=Path, required=True, help="model store")
    p.add_argument("--data", type=Path, required=True, help="dataset folder (generated when absent)")
    p.add_argument("--preset", choices=PRESETS, default="quick")
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0, help="training seed of every stage (the data stay seed 0)")
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, help="every stage's mixed precision (as train's)")

    sub.add_parser("archs", help="list the architectures per task")
    _add_lifecycle_parsers(sub)
    return parser


def _emit(result: object) -> None:
    """Results go to stdout as JSON (logs and progress bars go to stderr), so they can be piped."""
    sys.stdout.write(json.dumps(result, indent=2) + "\n")


def cmd_synth(args: argparse.Namespace) -> int:
    synth.generate_dataset(args.out, train=args.train, val=args.val, seed=args.seed)
    logging.info("wrote %d train and %d val images to %s", args.train, args.val, args.out)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    resume = args.resume is not None
    manifest = run(_resumed_job(args) if resume else _new_job(args), resume=resume)
    if manifest is not None:  # None on torchrun's other ranks: rank 0 reports
        _emit({"task": manifest.task, "arch": manifest.arch, "version": manifest.version,
               "trained": manifest.trained, "metrics": manifest.metrics})  # fmt: skip
    return 0


def _new_job(args: argparse.Namespace) -> TrainJob:
    missing = [f"--{name}" for name in ("task", "data", "out") if getattr(args, name) is None]
    if missing:
        raise ValueError(f"train needs {', '.join(missing)} (or --resume RUN_DIR)")
    arch = args.arch or DEFAULT_ARCH[args.task]
    options = {name: getattr(args, name) for name in ARCH_CHOICES if getattr(args, name) is not None}
    get_arch(args.task, arch).with_choices(**options)  # fail fast on a bad name or an option it lacks
    if args.dice_weight is not None and args.task != "segment":
        raise ValueError(f"--dice-weight is a segment loss; {args.task} has none")
    preset = args.preset or "quick"
    config = get_preset(args.task, preset, arch_is_small=arch == DEFAULT_ARCH[args.task])
    config = config.with_overrides(steps=args.steps, batch_size=args.batch_size, lr=args.lr, augment=args.augment,
                                   dice_weight=args.dice_weight)  # fmt: skip
    given = {name: getattr(args, name) for name in ("seed", "init_from", "init_scope", "freeze_stages", "freeze_bn",
                                                    "amp", "run_dir", "checkpoint_every", "workers",
                                                    "keep")}  # fmt: skip
    return TrainJob(task=args.task, data=args.data, out=args.out, arch=arch, preset=preset, config=config,
                    device=resolve_device(args.device), options=options, progress=not args.no_progress,
                    **{name: value for name, value in given.items() if value is not None})  # fmt: skip


def _resumed_job(args: argparse.Namespace) -> TrainJob:
    """The interrupted run's own job: anything that would make it a different run is refused."""
    given = [f"--{name.replace('_', '-')}" for name in JOB_FLAGS if getattr(args, name) is not None]
    if given:
        raise ValueError(f"--resume continues a run with its recorded settings; drop {', '.join(given)}")
    job = load_job(args.resume, resolve_device(args.device), progress=not args.no_progress, workers=args.workers)
    job = replace(job, amp=args.amp) if args.amp is not None else job
    return replace(job, keep=args.keep) if args.keep is not None else job


def cmd_eval(args: argparse.Namespace) -> int:
    predictor = load_predictor(args.model, args.task, resolve_device(args.device))
    dataset = open_dataset(args.data, args.split, args.task)
    _emit(evaluate(predictor, dataset, limit=args.limit, by=args.by))
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    categories = None
    if args.categories:
        names = [n.strip() for n in args.categories.split(",") if n.strip()]
        categories = [Category(i, name) for i, name in enumerate(names, start=1)]
    keep = history.DEFAULT_KEEP if args.keep is None else args.keep
    path = import_torchvision_checkpoint(args.task, args.arch, args.weights, args.out, categories, keep)
    _emit({"imported": str(path)})
    return 0


def cmd_bootstrap(args: argparse.Namespace) -> int:
    bootstrap(args.out, args.data, args.preset, args.device, seed=args.seed, amp=args.amp)
    return 0


def cmd_archs(args: argparse.Namespace) -> int:
    _emit({task: arch_names(task) for task in TASKS})
    return 0


def cmd_versions(args: argparse.Namespace) -> int:
    """JSON: task -> its versions, the served one first, then the kept ones, most recently replaced first."""
    tasks = [args.task] if args.task else list(TASKS)
    listing = {task: [v.to_json() for v in history.versions(args.store, task, args.verify)] for task in tasks}
    _emit({task: found for task, found in listing.items() if found or args.task})
    return 0


def cmd_promote(args: argparse.Namespace) -> int:
    keep = history.DEFAULT_KEEP if args.keep is None else args.keep
    previous = history.promote(args.store, args.task, args.version, keep)
    _emit({"task": args.task, "served": args.version, "previous": previous})
    return 0


COMMANDS = {"synth": cmd_synth, "train": cmd_train, "eval": cmd_eval, "import-torchvision": cmd_import,
            "bootstrap": cmd_bootstrap, "archs": cmd_archs, "versions": cmd_versions,
            "promote": cmd_promote}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except (StoreError, ValueError, FileNotFoundError) as exc:
        logging.getLogger("trainer").error("%s", exc)
        return 2
