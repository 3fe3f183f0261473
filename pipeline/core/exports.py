"""Export files, materialised once per cache key and linked into each run.

An export stage writes files for external clients (JSONL, Parquet). Re-writing and
re-validating them on every cache hit made a no-op run grow with the corpus, so they
are built once into ``exports/.by-key/<cache_key>/`` (validated there, then renamed into
place) and hard-linked into ``exports/<run_id>/``. The stage's signed receipt lists each
file with its size, sha256 and BLAKE3: a cache hit re-checks every listed file before
linking it, and links only listed files, so an edited or planted file is never passed on.
"""

from __future__ import annotations

import os
import secrets
import shutil
from pathlib import Path

from pipeline.core.hashing import blake3_file, file_digests
from pipeline.core.store import LakeLayout
from schemas.receipt import ExportFile


def scratch_dir(layout: LakeLayout, cache_key: str) -> Path:
    return layout.exports / ".by-key" / f".tmp-{cache_key}-{secrets.token_hex(4)}"


def files_under(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def describe(root: Path) -> list[ExportFile]:
    """Every file under ``root`` with its digests, in path order."""
    out = []
    for path in files_under(root):
        digests = file_digests(path)
        out.append(
            ExportFile(
                path=path.relative_to(root).as_posix(), size=digests.size,
                sha256=digests.sha256, blake3=digests.blake3,
            )
        )
    return out


def seal(scratch: Path, target: Path) -> None:
    """Move a validated build into place (replacing a damaged one)."""
    if target.exists():
        shutil.rmtree(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(scratch, target)


def problem(root: Path, files: list[ExportFile]) -> str | None:
    """Why the files under ``root`` are not the ones listed (None when they are)."""
    for file in files:
        path = root / file.path
        if not path.is_file():
            return f"export file {file.path} is missing"
        if path.stat().st_size != file.size or blake3_file(path) != file.blake3:
            return f"export file {file.path} does not match its recorded BLAKE3"
    return None


def link_into(source: Path, files: list[ExportFile] | None, run_dir: Path) -> None:
    """Hard-link ``files`` (every file when None) of ``source`` into ``run_dir`` (copy
    across filesystems)."""
    paths = [source / f.path for f in files] if files is not None else files_under(source)
    for path in paths:
        destination = run_dir / path.relative_to(source)
        destination.parent.mkdir(parents=True, exist_ok=True)
        if destination.exists():
            destination.unlink()
        try:
            os.link(path, destination)
        except OSError:
            shutil.copy2(path, destination)


def copy_tree(source: Path, target: Path) -> None:
    """Every file of ``source`` copied (never linked) under ``target``."""
    for path in files_under(source):
        destination = target / path.relative_to(source)
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, destination)
