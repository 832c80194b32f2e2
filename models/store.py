"""The model store: one folder per task holding `weights.safetensors` and `manifest.json`.

Weights are never pickled. The only unpickling path in the project is `read_torchvision_checkpoint`,
which goes through `torch.load(weights_only=True)` and is used when importing a user's checkpoint.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
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


def save_entry(store: Path | str, manifest: Manifest, state_dict: dict[str, Tensor]) -> Path:
    """Write `store/<task>/` atomically: a complete temp folder is renamed into place.

    The entry gets the modes any new file would (umask 022: folder 0755, files 0644), so that a service
    running as another user, such as the container's uid 10001 with the store mounted, can read it.
    mkdtemp makes the folder 0700 and safetensors writes the weights 0600, hence the chmods.
    """
    store = Path(store)
    store.mkdir(parents=True, exist_ok=True)
    final = store / manifest.task
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
        mask = _umask()
        for path in (tmp / WEIGHTS_FILE, tmp / MANIFEST_FILE):
            os.chmod(path, 0o666 & ~mask)
        os.chmod(tmp, 0o777 & ~mask)
        _swap_into_place(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def _swap_into_place(tmp: Path, final: Path) -> None:
    # rename() cannot replace a non-empty folder, so the old entry steps aside first; a reader sees
    # either the old complete entry, no entry, or the new complete entry, never a half-written one.
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old.{os.getpid()}")
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
    tmp.rename(final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def read_manifest(store: Path | str, task: str) -> Manifest:
    path = Path(store) / task / MANIFEST_FILE
    if not path.is_file():
        raise StoreError(f"no model for task {task!r} in {Path(store)} (missing {path})")
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise StoreError(f"cannot read {path}: {exc}") from exc
    manifest = Manifest.from_json(data)
    if manifest.task != task:
        raise StoreError(f"{path} describes task {manifest.task!r}, not {task!r}")
    return manifest


def load_entry(store: Path | str, task: str) -> tuple[Manifest, dict[str, Tensor]]:
    """Read a store entry, refusing weights whose sha256 differs from the manifest's."""
    manifest = read_manifest(store, task)
    weights = Path(store) / task / WEIGHTS_FILE
    if not weights.is_file():
        raise StoreError(f"missing {weights}")
    actual = sha256_file(weights)
    if actual != manifest.sha256:
        raise StoreError(
            f"checksum mismatch for {weights}: manifest says {manifest.sha256[:12]}…, file is {actual[:12]}…; "
            "the weights were modified or corrupted; re-export or re-import them"
        )
    try:
        return manifest, load_file(str(weights))
    except Exception as exc:  # safetensors raises its own error types for corrupt headers
        raise StoreError(f"cannot read {weights}: {exc}") from exc


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
