"""The store's history: replaced entries kept, promoted back atomically, and a crash at any step recovered.

Entries here hold a tiny tensor, not a model: the store never looks inside the weights, only at the
manifest and the checksum, and the crash tests fork the test process for every step they kill.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from models import Category, Manifest, StoreError, history, swap
from models.store import WEIGHTS_FILE, read_manifest, verify_entry

CRASHED, FINISHED = 17, 0


def publish(store: Path, seed: int, task: str = "detect", keep: int = history.DEFAULT_KEEP) -> str:
    """A new entry for `task` (distinct weights per seed); returns its version."""
    manifest = Manifest(task=task, arch="fasterrcnn_small", num_classes=2, categories=[Category(1, "circle")],
                        input={}, trained={"seed": seed})  # fmt: skip
    history.save_entry(store, manifest, {"w": torch.full((4,), float(seed))}, keep)
    return manifest.version


def kept(store: Path, task: str = "detect") -> list[str]:
    return [v.version for v in history.versions(store, task) if not v.served]


def served(store: Path, task: str = "detect") -> str:
    return read_manifest(store, task).version


def test_a_replaced_entry_is_kept_and_the_oldest_beyond_keep_dropped(tmp_path: Path) -> None:
    versions = [publish(tmp_path, seed, keep=2) for seed in range(4)]
    assert served(tmp_path) == versions[3]
    assert kept(tmp_path) == [versions[2], versions[1]]  # most recently replaced first
    listing = history.versions(tmp_path, "detect")
    assert [v.served for v in listing] == [True, False, False]
    assert listing[0].to_json()["trained"] == {"seed": 3}
    publish(tmp_path, 9, keep=0)
    assert kept(tmp_path) == []


def test_promote_serves_a_kept_version_and_keeps_the_served_one(tmp_path: Path) -> None:
    first, second, third = (publish(tmp_path, seed) for seed in range(3))
    assert history.promote(tmp_path, "detect", first) == third
    assert served(tmp_path) == first
    assert kept(tmp_path) == [third, second]
    verify_entry(tmp_path / "detect", "detect")  # the promoted entry is whole
    # Promoting back and forth keeps every version exactly once.
    history.promote(tmp_path, "detect", third)
    assert served(tmp_path) == third
    assert sorted(kept(tmp_path)) == sorted([first, second])


def test_promote_refuses_an_unknown_or_damaged_version_and_changes_nothing(tmp_path: Path) -> None:
    first, second = publish(tmp_path, 0), publish(tmp_path, 1)
    with pytest.raises(StoreError, match=f"no kept version 'abc' of detect .*kept: {first}"):
        history.promote(tmp_path, "detect", "abc")
    weights = tmp_path / history.HISTORY / "detect" / first / WEIGHTS_FILE
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(StoreError, match="checksum mismatch"):
        history.promote(tmp_path, "detect", first)
    assert served(tmp_path) == second
    assert kept(tmp_path) == [first]
    assert "checksum mismatch" in (history.versions(tmp_path, "detect", verify=True)[1].problem or "")


def test_republishing_the_served_version_keeps_no_duplicate(tmp_path: Path) -> None:
    first, second = publish(tmp_path, 0), publish(tmp_path, 1)
    assert publish(tmp_path, 0) == first  # the same weights again: the history's copy is served now
    assert served(tmp_path) == first
    assert kept(tmp_path) == [second]


def test_exchange_swaps_two_folders_in_one_step_on_this_system(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "x").write_text("a")
    (b / "x").write_text("b")
    assert swap.exchange_atomically(a, b), "renameat2(RENAME_EXCHANGE) is expected to work on Linux"
    assert ((a / "x").read_text(), (b / "x").read_text()) == ("b", "a")


def _crash_at(step: str, action: Callable[[], object]) -> None:
    """Run `action` in a forked child that dies (no cleanup, like a kill) at `step`."""
    pid = os.fork()
    if pid == 0:  # the child: only file operations, then out without running any test machinery
        try:
            swap.crash_point = lambda name: os._exit(CRASHED) if name == step else None
            action()
        finally:
            os._exit(FINISHED)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == CRASHED, f"the child never reached {step!r}"


def _check_consistent(store: Path, expected: set[str]) -> str:
    """After recovery: one whole served entry, whole kept ones named by version, nothing half-way."""
    with swap.writer_lock(store):
        history.recover(store)
    current = verify_entry(store / "detect", "detect").version
    for folder in (store / history.HISTORY / "detect").iterdir():
        assert verify_entry(folder, "detect").version == folder.name
    assert {p.name for p in store.iterdir()} == {".lock", ".history", "detect"}
    assert {current, *kept(store)} == expected, "a version was lost or duplicated"
    return current


ATOMIC_STEPS = ["staged", "exchanged"]
FALLBACK_STEPS = ["staged", "fallback-aside", "fallback-in", "exchanged"]


@pytest.mark.parametrize(("atomic", "step"), [(True, s) for s in ATOMIC_STEPS] + [(False, s) for s in FALLBACK_STEPS])
def test_a_publish_killed_at_any_step_never_loses_the_served_entry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, atomic: bool, step: str
) -> None:
    store = tmp_path / "store"
    first, second = publish(store, 0), publish(store, 1)
    third = publish(tmp_path / "scratch", 2)  # the version the killed publish writes
    if not atomic:
        monkeypatch.setattr(swap, "exchange_atomically", lambda a, b: False)
    _crash_at(step, lambda: publish(store, 2))
    if atomic or step != "fallback-aside":  # the fallback's one window: recovery puts the entry back
        assert verify_entry(store / "detect", "detect").version in (second, third)
    current = _check_consistent(store, {first, second, third})
    # Killed before its exchange, a publish changes nothing served; after it, its entry is served.
    assert current == (second if step in ("staged", "fallback-aside") else third)


@pytest.mark.parametrize(("atomic", "step"), [(True, "exchanged"), (False, "fallback-aside"), (False, "fallback-in")])
def test_a_promote_killed_at_any_step_never_loses_the_served_entry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, atomic: bool, step: str
) -> None:
    first, second = publish(tmp_path, 0), publish(tmp_path, 1)
    if not atomic:
        monkeypatch.setattr(swap, "exchange_atomically", lambda a, b: False)
    _crash_at(step, lambda: history.promote(tmp_path, "detect", first))
    if atomic:
        assert verify_entry(tmp_path / "detect", "detect").version == first
    current = _check_consistent(tmp_path, {first, second})
    assert current == (second if step == "fallback-aside" else first)
