"""Clear what killed runs left behind, under the writer lock.

Every file is published by an atomic rename and a run becomes a run only when its
signed statement lands, so a killed run loses nothing; it only leaves debris: ``.tmp-*``
files and folders, and a run folder (plus its export folder) marked unfinished. While
the root's writer lock is held no one else writes, so all of it is debris and goes.
The one exception is a complete run's folder, where ``tracelake drift`` (a reader,
lock-free) may be writing its report: there only temp files older than a minute go.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path

from pipeline.core.receipts import run_state
from pipeline.core.store import LakeLayout
from schemas.receipt import Cleanup

RUN_ID = re.compile(r"^\d{8}T\d{6}\d*Z-[0-9a-f]{4}$")
TEMP_PREFIX = ".tmp-"
_READER_GRACE_S = 60.0


def is_run_id(name: str) -> bool:
    return bool(RUN_ID.match(name))


def _remove(path: Path, tally: list[int]) -> None:
    try:
        if path.is_dir() and not path.is_symlink():
            size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
            shutil.rmtree(path)
        else:
            size = path.lstat().st_size
            path.unlink()
    except FileNotFoundError:
        return
    tally[0] += 1
    tally[1] += size


def _temp_debris(folder: Path, tally: list[int], older_than: float | None = None) -> None:
    """Every ``.tmp-*`` entry under ``folder`` (a temp folder goes whole)."""
    if not folder.is_dir():
        return
    for current, dirs, files in os.walk(folder):
        base = Path(current)
        for name in [d for d in dirs if d.startswith(TEMP_PREFIX)]:
            dirs.remove(name)
            _remove(base / name, tally)
        for name in files:
            if not name.startswith(TEMP_PREFIX):
                continue
            path = base / name
            if older_than is not None:
                try:
                    if path.stat().st_mtime > older_than:
                        continue
                except FileNotFoundError:
                    continue
            _remove(path, tally)


def clean_leftovers(layout: LakeLayout) -> Cleanup:
    """Call only while holding the writer lock (``pipeline.core.lock``)."""
    tally = [0, 0]
    _temp_debris(layout.data, tally)
    _temp_debris(layout.exports, tally)
    _temp_debris(layout.receipt_cache, tally)
    unfinished: list[str] = []
    if layout.receipts.is_dir():
        for entry in sorted(layout.receipts.iterdir()):
            if not (entry.is_dir() and is_run_id(entry.name)):
                continue
            if run_state(layout, entry.name) == "unfinished":
                shutil.rmtree(entry, ignore_errors=True)
                shutil.rmtree(layout.export_dir(entry.name), ignore_errors=True)
                shutil.rmtree(layout.failed_exports / entry.name, ignore_errors=True)
                unfinished.append(entry.name)
            else:
                _temp_debris(entry, tally, older_than=time.time() - _READER_GRACE_S)
    return Cleanup(temp_files=tally[0], temp_bytes=tally[1], unfinished_runs=unfinished)
