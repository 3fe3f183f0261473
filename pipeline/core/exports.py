"""Export files, materialised once per cache key and linked into each run.

An export stage writes files for external clients (JSONL, Parquet). Re-writing and
re-validating them on every cache hit made a no-op run grow with the corpus, so they
are built once into ``exports/.by-key/<cache_key>/`` (validated there, then renamed into
place with a manifest of file digests) and hard-linked into ``exports/<run_id>/``. A
cache hit re-checks the manifest, so an edited file is rebuilt and re-validated rather
than trusted.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from pathlib import Path

from pipeline.core.hashing import xxh3_128_file
from pipeline.core.store import LakeLayout

MANIFEST = ".manifest.json"


def keyed_dir(layout: LakeLayout, cache_key: str) -> Path:
    return layout.exports / ".by-key" / cache_key


def scratch_dir(layout: LakeLayout, cache_key: str) -> Path:
    return layout.exports / ".by-key" / f".tmp-{cache_key}-{secrets.token_hex(4)}"


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.name != MANIFEST)


def file_manifest(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): xxh3_128_file(p) for p in _files(root)}


def seal(scratch: Path, target: Path) -> None:
    """Record the digests of what was validated, then move it into place atomically."""
    scratch.mkdir(parents=True, exist_ok=True)
    (scratch / MANIFEST).write_text(json.dumps(file_manifest(scratch), sort_keys=True, indent=1))
    if target.exists():
        shutil.rmtree(target)
    os.replace(scratch, target)


def intact(target: Path) -> bool:
    try:
        recorded = json.loads((target / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(recorded, dict) and recorded == file_manifest(target)


def link_into(source: Path, run_dir: Path) -> list[Path]:
    """Hard-link every file of ``source`` into ``run_dir`` (copy across filesystems)."""
    linked = []
    for path in _files(source):
        destination = run_dir / path.relative_to(source)
        destination.parent.mkdir(parents=True, exist_ok=True)
        if destination.exists():
            destination.unlink()
        try:
            os.link(path, destination)
        except OSError:
            shutil.copy2(path, destination)
        linked.append(destination)
    return linked
