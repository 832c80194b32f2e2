"""Filesystem steps the store's writers use: an atomic exchange of two folders, and the writers' lock.

Linux swaps two paths in one step with renameat2(RENAME_EXCHANGE): a reader of `STORE/<task>/` sees
the old entry or the new one, and at no moment neither. Where that call is missing (another OS, a C
library older than glibc 2.28) or the filesystem refuses it (some network and overlay filesystems),
`exchange` falls back to three renames through a side name; the store's recovery (history.py) puts
things right after a crash in that window, and a reader in it finds no entry for a moment (the service
then keeps its running version and reports the failed reload).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path

log = logging.getLogger(__name__)

LOCK_FILE = ".lock"
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2  # from <linux/fs.h>
# Errors that mean "this system or filesystem cannot exchange", not "these paths are wrong".
_UNSUPPORTED = {errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP}


def _no_crash(step: str) -> None:
    pass


# Called between the steps of every store change, named; tests replace it to kill the process there.
crash_point: Callable[[str], None] = _no_crash


def _renameat2() -> Callable[..., int] | None:
    try:
        func = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None
    func.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    func.restype = ctypes.c_int
    return func


_RENAMEAT2 = _renameat2()


def exchange_atomically(a: Path, b: Path) -> bool:
    """Swap two existing paths in one step; False when the system or filesystem cannot (nothing moved)."""
    if _RENAMEAT2 is None:
        return False
    if _RENAMEAT2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in _UNSUPPORTED:
        return False
    raise OSError(code, os.strerror(code), str(a), None, str(b))


def exchange(a: Path, b: Path, side: Path) -> None:
    """After this, `a` holds what `b` held and the other way round. Atomic where the system allows it;
    otherwise `b` steps aside to `side` first (history.recover knows that name)."""
    if exchange_atomically(a, b):
        fsync_dir(a.parent)
        if b.parent != a.parent:
            fsync_dir(b.parent)
        return
    log.warning("renameat2(RENAME_EXCHANGE) unavailable here: swapping %s in three renames", b)
    b.rename(side)
    crash_point("fallback-aside")
    a.rename(b)
    crash_point("fallback-in")
    side.rename(a)
    fsync_dir(a.parent)


def fsync_dir(path: Path) -> None:
    """Make a rename durable: a crash right after it must not bring the old name back."""
    with contextlib.suppress(OSError):  # some filesystems cannot fsync a folder; the rename stands anyway
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def writer_lock(store: Path) -> Iterator[None]:
    """One writer at a time changes the store's layout (the trainer, an import, a promote). Readers (the
    service) never take it: they may not be able to write, and renames keep what they read whole."""
    store.mkdir(parents=True, exist_ok=True)
    with (store / LOCK_FILE).open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for another writer of %s to finish (%s)", store, store / LOCK_FILE)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
