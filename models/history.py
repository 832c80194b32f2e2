"""Publishing store entries, the versions kept when one is replaced, and promoting a kept one back.

    STORE/<task>/                      the served entry
    STORE/.history/<task>/<version>/   replaced entries, the newest `keep` (by when they were replaced)
    STORE/.lock                        taken by writers only (swap.writer_lock)

Every change of the served entry is one exchange of two folders (swap.exchange): the new entry, complete,
takes the served path's place and the old one comes out at the new one's former name, from where it
moves into the history. A crash at any step leaves a served entry (with the fallback exchange: all but
one rename); `recover`, run by the next writer under the lock, files whatever a crash left half-way:

- `.<task>.incoming` (an entry staged to be published): into the history, or served if the task has
  none. A crashed `train` thus never changes what is served; its entry can be promoted.
- `.<task>.outgoing` (the fallback exchange's side name): back to `<task>` if that is missing, else
  into the history.
- a history folder whose manifest names another version (a promote stopped after its exchange):
  renamed after its version.

The history never holds the served version: publishing or promoting a version removes its copy there.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor

from models import swap
from models.store import MANIFEST_FILE, Manifest, StoreError, read_entry_manifest, stage_entry, verify_entry

log = logging.getLogger(__name__)

HISTORY = ".history"
DEFAULT_KEEP = 3
_INCOMING, _OUTGOING = ".incoming", ".outgoing"


def save_entry(store: Path | str, manifest: Manifest, state_dict: dict[str, Tensor], keep: int = DEFAULT_KEEP) -> Path:
    """Write `store/<task>/` atomically; the entry it replaces joins the history (the newest `keep` stay)."""
    store = Path(store)
    staged = stage_entry(store, manifest, state_dict)  # the slow part, outside the lock
    try:
        with swap.writer_lock(store):
            recover(store)
            publish(store, staged, manifest.task, keep)
    finally:
        shutil.rmtree(staged, ignore_errors=True)  # gone already unless publishing failed early
    return store / manifest.task


def publish(store: Path, staged: Path, task: str, keep: int) -> None:
    """Serve the complete entry in `staged` (a folder inside `store`); under the writer lock."""
    final, incoming = store / task, store / f".{task}{_INCOMING}"
    staged.rename(incoming)
    swap.crash_point("staged")
    if not final.exists():
        incoming.rename(final)
        swap.fsync_dir(store)
    else:
        swap.exchange(incoming, final, side=store / f".{task}{_OUTGOING}")
        swap.crash_point("exchanged")
        _retire(store, task, incoming)
    _forget_served(store, task)
    prune(store, task, keep)


def promote(store: Path | str, task: str, version: str, keep: int = DEFAULT_KEEP) -> str | None:
    """Serve the kept `version` of `task` again; the served one joins the history. Returns its version."""
    store = Path(store)
    with swap.writer_lock(store):
        recover(store)
        source, final = history_dir(store, task) / version, store / task
        if not source.is_dir():
            kept = ", ".join(_kept(store, task)) or "none"
            raise StoreError(f"no kept version {version!r} of {task} in {store} (kept: {kept})")
        promoted = verify_entry(source, task)  # a damaged version never replaces a working one
        if promoted.version != version:
            raise StoreError(f"{source} holds version {promoted.version!r}, not {version!r}")
        previous = _version_of(final)
        if not final.exists():
            source.rename(final)
            swap.fsync_dir(store)
        else:
            swap.exchange(source, final, side=store / f".{task}{_OUTGOING}")
            swap.crash_point("exchanged")
            _retire(store, task, source)  # the old entry, now at the promoted one's former name
        prune(store, task, keep)
    log.info("%s: serving %s again (was %s)", task, version, previous or "none")
    return previous


def history_dir(store: Path, task: str) -> Path:
    return store / HISTORY / task


def prune(store: Path, task: str, keep: int) -> None:
    for folder in _kept_folders(store, task)[keep:]:
        log.info("%s: dropping kept version %s (keeping the newest %d)", task, folder.name, keep)
        shutil.rmtree(folder, ignore_errors=True)


def recover(store: Path) -> None:
    """Finish or undo what a crashed writer left (see the module docstring); under the writer lock."""
    for side in sorted(store.glob(f".*{_OUTGOING}")):
        task = side.name[1 : -len(_OUTGOING)]
        if not (store / task).exists():
            log.warning("%s: restoring the served entry from %s (a writer crashed mid-exchange)", task, side)
            side.rename(store / task)
        else:
            _retire(store, task, side)
    for incoming in sorted(store.glob(f".*{_INCOMING}")):
        task = incoming.name[1 : -len(_INCOMING)]
        if not (store / task).exists():
            incoming.rename(store / task)
        else:
            log.warning("%s: a writer crashed before publishing %s; it is kept, not served", task, incoming)
            _retire(store, task, incoming)
    for task_dir in sorted(p for p in (store / HISTORY).glob("*") if p.is_dir()):
        for folder in sorted(p for p in task_dir.iterdir() if p.is_dir()):
            version = _version_of(folder)
            if version not in (None, folder.name):
                _retire(store, task_dir.name, folder)
    swap.fsync_dir(store)


@dataclass(frozen=True)
class Version:
    """One version of a task, served or kept, as `trainer versions` lists it."""

    task: str
    version: str
    served: bool
    path: Path
    since: float  # served: when it was written; kept: when it was replaced (epoch seconds)
    manifest: Manifest | None
    problem: str | None = None  # why it cannot be read, or (verified) why it would be refused

    def to_json(self) -> dict[str, Any]:
        m = self.manifest
        return {
            "task": self.task,
            "version": self.version,
            "served": self.served,
            "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.since)),
            "arch": m.arch if m else None,
            "metrics": m.metrics if m else None,
            "trained": m.trained if m else None,
            "path": str(self.path),
            **({"problem": self.problem} if self.problem else {}),
        }


def versions(store: Path | str, task: str, verify: bool = False) -> list[Version]:
    """The served version of `task`, then the kept ones, newest first; `verify` checks every sha256."""
    store = Path(store)
    served = [_describe(task, store / task, True, verify)] if (store / task).is_dir() else []
    return served + [_describe(task, folder, False, verify) for folder in _kept_folders(store, task)]


def _describe(task: str, folder: Path, served: bool, verify: bool) -> Version:
    since = (folder / MANIFEST_FILE if served else folder).stat().st_mtime if folder.exists() else 0.0
    try:
        manifest = verify_entry(folder, task) if verify else read_entry_manifest(folder, task)
    except StoreError as exc:
        return Version(task, folder.name if not served else "?", served, folder, since, None, str(exc))
    return Version(task, manifest.version, served, folder, since, manifest)


def _kept_folders(store: Path, task: str) -> list[Path]:
    """Kept entries, most recently replaced first (their folder's mtime is set when they are filed)."""
    root = history_dir(store, task)
    if not root.is_dir():
        return []
    folders = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]
    return sorted(folders, key=lambda p: p.stat().st_mtime, reverse=True)


def _kept(store: Path, task: str) -> list[str]:
    return [p.name for p in _kept_folders(store, task)]


def _version_of(folder: Path) -> str | None:
    try:
        version = json.loads((folder / MANIFEST_FILE).read_text()).get("version")
    except (OSError, ValueError, AttributeError):
        return None
    return str(version) if version else None


def _retire(store: Path, task: str, folder: Path) -> None:
    """File a replaced entry under the history, named after its version (now its 'replaced at' time)."""
    served = _version_of(store / task)
    version = _version_of(folder) or f"unreadable-{time.strftime('%Y%m%dT%H%M%S')}"
    target = history_dir(store, task) / version
    if version == served or (target.exists() and target != folder):
        shutil.rmtree(folder, ignore_errors=True)  # the same weights are served, or kept already
        if version != served:
            os.utime(target)
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    if target != folder:
        folder.rename(target)
    os.utime(target)
    swap.fsync_dir(target.parent)


def _forget_served(store: Path, task: str) -> None:
    """The history never holds the served version (it would be listed twice, and pruned wrongly)."""
    served = _version_of(store / task)
    if served and (history_dir(store, task) / served).is_dir():
        shutil.rmtree(history_dir(store, task) / served, ignore_errors=True)
