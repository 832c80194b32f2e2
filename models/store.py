"""The model store: one folder per task holding `weights.safetensors` and `manifest.json`.

Weights are never pickled. The only unpickling path in the project is `read_torchvision_checkpoint`,
which goes through `torch.load(weights_only=True)` and is used when importing a user's checkpoint.
Publishing an entry, the versions kept when it is replaced, and promoting one back: history.py.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

FORMAT = 1
WEIGHTS_FILE = "weights.safetensors"
MANIFEST_FILE = "manifest.json"


class StoreError(Exception):
    """A store entry is missing, malformed or does not match its recorded checksum."""


@dataclass(frozen=True)
class Category:
    id: int
    name: str


@dataclass
class Manifest:
    task: str
    arch: str
    num_classes: int
    categories: list[Category]
    input: dict[str, Any]
    options: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    trained: dict[str, Any] = field(default_factory=dict)
    sha256: str = ""
    version: str = ""
    format: int = FORMAT

    def category_names(self) -> dict[int, str]:
        return {c.id: c.name for c in self.categories}

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Manifest:
        if data.get("format") != FORMAT:
            raise StoreError(f"unsupported manifest format {data.get('format')!r} (expected {FORMAT})")
        try:
            fields = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
            fields["categories"] = [Category(int(c["id"]), str(c["name"])) for c in data["categories"]]
            return cls(**fields)
        except (KeyError, TypeError, ValueError) as exc:
            raise StoreError(f"malformed manifest: {exc}") from exc


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _umask() -> int:
    """The process's file-mode creation mask, read without changing it (os.umask can only swap it)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)  # no /proc: swap and restore (a thread creating a file meanwhile gets 022)
    os.umask(mask)
    return mask


def stage_entry(store: Path | str, manifest: Manifest, state_dict: dict[str, Tensor]) -> Path:
    """Write a complete entry into a new temp folder inside `store` (the same filesystem, so that it can be
    renamed into place); sets the manifest's sha256 and version. history.save_entry publishes it."""
    store = Path(store)
    store.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{manifest.task}.", dir=store))
    try:
        weights = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
        save_file(weights, str(tmp / WEIGHTS_FILE))
        manifest.sha256 = sha256_file(tmp / WEIGHTS_FILE)
        manifest.version = manifest.sha256[:12]
        with (tmp / MANIFEST_FILE).open("w") as f:
            json.dump(manifest.to_json(), f, indent=2)
            f.flush()
            os.fsync(f.fileno())
        # The modes any new file would get (umask 022: folder 0755, files 0644), so that a service running
        # as another user (the container's uid 10001, the store mounted) can read it; mkdtemp makes the
        # folder 0700 and safetensors writes the weights 0600.
        mask = _umask()
        for path in (tmp / WEIGHTS_FILE, tmp / MANIFEST_FILE):
            os.chmod(path, 0o666 & ~mask)
        os.chmod(tmp, 0o777 & ~mask)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return tmp


@contextlib.contextmanager
def _pinned(folder: Path) -> Iterator[Path]:
    """`folder` as it is now, even if a writer swaps another entry into its place meanwhile: on Linux a
    path through an open descriptor (/proc/self/fd/N), so that the manifest and the weights read belong
    to one entry. Elsewhere, or when the folder is missing, the plain path (whose reads then say why)."""
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        yield folder
        return
    try:
        pinned = Path(f"/proc/self/fd/{fd}")
        yield pinned if pinned.is_dir() else folder
    finally:
        os.close(fd)


def read_manifest(store: Path | str, task: str) -> Manifest:
    return read_entry_manifest(Path(store) / task, task)


def read_entry_manifest(folder: Path, task: str, shown: Path | None = None) -> Manifest:
    """The manifest of the entry in `folder` (served or kept); `shown` is the path error messages name."""
    shown = shown or folder
    path = folder / MANIFEST_FILE
    if not path.is_file():
        raise StoreError(f"no model for task {task!r} in {shown.parent} (missing {shown / MANIFEST_FILE})")
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise StoreError(f"cannot read {shown / MANIFEST_FILE}: {exc}") from exc
    manifest = Manifest.from_json(data)
    if manifest.task != task:
        raise StoreError(f"{shown / MANIFEST_FILE} describes task {manifest.task!r}, not {task!r}")
    return manifest


def check_weights(folder: Path, manifest: Manifest, shown: Path | None = None) -> None:
    """Refuse weights whose sha256 differs from the manifest's."""
    weights, shown_weights = folder / WEIGHTS_FILE, (shown or folder) / WEIGHTS_FILE
    if not weights.is_file():
        raise StoreError(f"missing {shown_weights}")
    actual = sha256_file(weights)
    if actual != manifest.sha256:
        raise StoreError(
            f"checksum mismatch for {shown_weights}: manifest says {manifest.sha256[:12]}…, file is {actual[:12]}…; "
            "the weights were modified or corrupted; re-export or re-import them"
        )


def verify_entry(folder: Path, task: str) -> Manifest:
    """The manifest of a complete, intact entry in `folder`; StoreError says what is wrong otherwise."""
    with _pinned(folder) as pinned:
        manifest = read_entry_manifest(pinned, task, shown=folder)
        check_weights(pinned, manifest, shown=folder)
    return manifest


def load_entry(store: Path | str, task: str) -> tuple[Manifest, dict[str, Tensor]]:
    """Read a store entry, refusing weights whose sha256 differs from the manifest's. Manifest and weights
    come from one entry even while a writer replaces it."""
    folder = Path(store) / task
    with _pinned(folder) as pinned:
        manifest = read_entry_manifest(pinned, task, shown=folder)
        check_weights(pinned, manifest, shown=folder)
        try:
            return manifest, load_file(str(pinned / WEIGHTS_FILE))
        except Exception as exc:  # safetensors raises its own error types for corrupt headers
            raise StoreError(f"cannot read {folder / WEIGHTS_FILE}: {exc}") from exc


def read_torchvision_checkpoint(path: Path | str) -> dict[str, Tensor]:
    """Load a `.pth` state dict with the restricted unpickler; accepts `{"model": state_dict}` wrappers."""
    try:
        obj = torch.load(Path(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError for hostile files, others for truncated ones
        raise StoreError(f"refusing {path}: not a plain tensor checkpoint ({type(exc).__name__}: {exc})") from exc
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        obj = obj["model"]
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise StoreError(f"{path} does not hold a state dict of tensors")
    return {str(k).removeprefix("module."): v for k, v in obj.items()}
