"""One writer per lake root.

Two runs at once on one root raced on the run cache, the export folders and the lake
database, and left receipts naming bytes that another run had replaced. Every command
that writes a root holds an exclusive ``flock`` on ``data/.lock`` for its whole
duration; the kernel releases it when the process dies, even by ``kill -9``, so a lock
never outlives its holder. Readers (``sql``, ``receipts``, ``drift``) never take it: the
files they read are published by atomic renames and a run becomes visible only once
its signed statement is written.

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


_HELD: dict[str, int] = {}  # resolved lock path -> depth, for this process
_GUARD = threading.Lock()


def _holder(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            text = handle.read(300).strip()
    except OSError:
        return "holder unknown"
    return text or "holder unknown"


@contextlib.contextmanager
def writer_lock(
    layout: LakeLayout, wait: bool = True, on_wait: Callable[[str], None] | None = None
) -> Iterator[None]:
    """Hold the root's writer lock. Busy: with ``wait`` report once through ``on_wait``
    and block until it is free; without, raise ``RootBusy`` at once."""
    layout.data.mkdir(parents=True, exist_ok=True)
    path = str(layout.lock_file.resolve())
    with _GUARD:
        if _HELD.get(path):
            _HELD[path] += 1
            reentered = True
        else:
            reentered = False
    if reentered:
        try:
            yield
        finally:
            with _GUARD:
                _HELD[path] -= 1
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            message = f"the run holding {path} ({_holder(path)})"
            if not wait:
                raise RootBusy(f"another run is writing this root: {message}") from None
            if on_wait is not None:
                on_wait(f"waiting for {message}")
            fcntl.flock(fd, fcntl.LOCK_EX)
        stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since {stamp}\n".encode(), 0)
        with _GUARD:
            _HELD[path] = 1
        try:
            yield
        finally:
            with _GUARD:
                _HELD.pop(path, None)
            os.ftruncate(fd, 0)
    finally:
        os.close(fd)  # releases the flock


def held(layout: LakeLayout) -> bool:
    """Whether this process holds the root's writer lock."""
    with _GUARD:
        return bool(_HELD.get(str(layout.lock_file.resolve())))
