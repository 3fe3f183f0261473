"""One writer per lake root.

Two runs at once on one root raced on the run cache, the export folders and the lake
database, and left receipts naming bytes that another run had replaced. Every command
that writes a root holds an exclusive ``flock`` on the root directory itself for its
whole duration: a lock file could be deleted under a live run (and a second run would
lock a new one), a directory holding the lake cannot. The kernel releases the lock when
its holder dies, even by ``kill -9`` (forked parse workers share it until they exit,
which is right: they may still be writing). ``data/.lock`` only says who holds it, for
the message a waiting run prints. Readers (``sql``, ``receipts``, ``drift``) never take
it: the files they read are published by atomic renames and a run becomes visible only
once its signed statement is written.

The lock is re-entrant within a process (the CLI holds it around a run and the lake
database refresh; the runner takes it again for library callers).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import os
import socket
import threading
from collections.abc import Callable, Iterator

from pipeline.core.errors import TracelakeError
from pipeline.core.store import LakeLayout


class RootBusy(TracelakeError):
    """Another process is writing this root (and the caller chose not to wait)."""


_HELD: dict[str, int] = {}  # resolved root -> depth, for this process
_FDS: dict[str, int] = {}  # resolved root -> the descriptor holding its flock
_GUARD = threading.Lock()


def drop_inherited_locks() -> None:
    """In a forked child that never writes the root (a collate worker): close the
    descriptors that hold the parent's locks, so that only the parent (and the children
    that do write) keep the root locked. The lock itself stays the parent's."""
    for fd in _FDS.values():
        with contextlib.suppress(OSError):
            os.close(fd)
    _FDS.clear()
    _HELD.clear()


def _holder(layout: LakeLayout) -> str:
    try:
        text = layout.lock_file.read_text(encoding="utf-8", errors="replace")[:300].strip()
    except OSError:
        return "holder unknown"
    return text or "holder unknown"


def _open_root(layout: LakeLayout) -> int:
    return os.open(layout.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)


@contextlib.contextmanager
def writer_lock(
    layout: LakeLayout, wait: bool = True, on_wait: Callable[[str], None] | None = None
) -> Iterator[None]:
    """Hold the root's writer lock. Busy: with ``wait`` report once through ``on_wait``
    and block until it is free; without, raise ``RootBusy`` at once."""
    layout.data.mkdir(parents=True, exist_ok=True)
    key = str(layout.root.resolve())
    with _GUARD:
        depth = _HELD.get(key, 0)
        if depth:
            _HELD[key] = depth + 1
    if depth:
        try:
            yield
        finally:
            with _GUARD:
                _HELD[key] -= 1
        return
    fd = _open_root(layout)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            message = f"the run holding {layout.root} ({_holder(layout)})"
            if not wait:
                raise RootBusy(f"another run is writing this root: {message}") from None
            if on_wait is not None:
                on_wait(f"waiting for {message}")
            fcntl.flock(fd, fcntl.LOCK_EX)
        stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        with contextlib.suppress(OSError):  # only a note for waiters
            layout.lock_file.write_text(f"pid {os.getpid()} on {socket.gethostname()} since {stamp}\n")
        with _GUARD:
            _HELD[key] = 1
            _FDS[key] = fd
        try:
            yield
        finally:
            with _GUARD:
                _HELD.pop(key, None)
                _FDS.pop(key, None)
            with contextlib.suppress(OSError):
                layout.lock_file.write_text("")
    finally:
        os.close(fd)  # releases the flock


def held(layout: LakeLayout) -> bool:
    """Whether this process holds the root's writer lock."""
    with _GUARD:
        return bool(_HELD.get(str(layout.root.resolve())))


def writer_active(layout: LakeLayout) -> bool:
    """Whether some process holds the root's writer lock now (a reader's probe: a shared
    lock taken and dropped at once, never waited for)."""
    if held(layout):
        return True
    try:
        fd = _open_root(layout)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False
