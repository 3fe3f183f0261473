"""Clear what killed runs left behind, under the writer lock.

Every file is published by an atomic rename and a run becomes a run only when its
signed statement lands, so a killed run loses nothing; it only leaves debris: ``.tmp-*``
files and folders, and a run folder (plus its export folder) marked unfinished. While
the root's writer lock is held no one else writes, so all of it is debris and goes.

Two exceptions. A marked folder whose statement did land (killed between the two) is a
complete run once its statement verifies with this run's key: only the mark goes; a
folder holding a statement is never deleted. And in a complete run's folder, where
``tracelake drift`` (a reader, lock-free) may be writing its report, only temp files
older than a minute go.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from pipeline.core.errors import TracelakeError
from pipeline.core.receipts import (
    STATEMENT_FILE,
    UNFINISHED_MARK,
    ReceiptError,
    load_envelope,
    open_run_statement,
    run_folders,
)
from pipeline.core.store import LakeLayout
from pipeline.core.trust import TrustedKeys
from schemas.receipt import Cleanup

TEMP_PREFIX = ".tmp-"
_READER_GRACE_S = 60.0


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


def _temp_debris(folder: Path, tally: list[int], older_than: float | None = None, recurse: bool = True,
                 sealed: Path | None = None) -> None:
    """Every ``.tmp-*`` entry under ``folder`` (a temp folder goes whole). Folders two
    levels under ``sealed`` (stored artifacts, ``<aa>/<digest>/``) hold a stage's files
    as they are, whatever their names: never entered."""
    if not folder.is_dir():
        return
    for current, dirs, files in os.walk(folder):
        if not recurse:
            dirs[:] = [d for d in dirs if d.startswith(TEMP_PREFIX)]
        base = Path(current)
        if sealed is not None and base.parent == sealed:
            dirs[:] = [d for d in dirs if d.startswith(TEMP_PREFIX)]
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


def clean_leftovers(layout: LakeLayout, signer: TrustedKeys) -> Cleanup:
    """Call only while holding the writer lock (``pipeline.core.lock``); ``signer`` is
    the public key this run signs with."""
    tally = [0, 0]
    _temp_debris(layout.data, tally, sealed=layout.artifacts)
    # Export files are a stage's, whatever their names: only build folders go.
    _temp_debris(layout.exports, tally, recurse=False)
    _temp_debris(layout.exports / ".by-key", tally, recurse=False)
    _temp_debris(layout.receipt_cache, tally)
    _temp_debris(layout.receipts, tally, recurse=False)
    unfinished: list[str] = []
    for run_id, state in run_folders(layout).items():
        folder = layout.run_dir(run_id)
        if state == "unfinished":
            if (folder / STATEMENT_FILE).exists():
                if _signed_by(folder / STATEMENT_FILE, signer):
                    (folder / UNFINISHED_MARK).unlink(missing_ok=True)
                continue  # a statement is never deleted; verify reports one that fails
            shutil.rmtree(folder, ignore_errors=True)
            shutil.rmtree(layout.export_dir(run_id), ignore_errors=True)
            shutil.rmtree(layout.failed_exports / run_id, ignore_errors=True)
            unfinished.append(run_id)
        elif state == "complete":
            _temp_debris(folder, tally, older_than=time.time() - _READER_GRACE_S)
    return Cleanup(temp_files=tally[0], temp_bytes=tally[1], unfinished_runs=unfinished)


def _signed_by(path: Path, signer: TrustedKeys) -> bool:
    try:
        open_run_statement(load_envelope(path), signer)
    except (ReceiptError, OSError, TracelakeError):
        return False
    return True
