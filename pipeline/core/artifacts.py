"""Artifacts: the folders of files a stage produces beside its tables.

A stage writes an artifact (an adapter with its config, a plot) into its scratch area
and names the folder in ``StageResult.artifacts``; ``put_artifact`` copies it into
``data/artifacts/<aa>/<tree digest>/`` (built aside, checked against the manifest it was
named by, then renamed into place), so a stored artifact is never partial and its name
is a function of its bytes. The receipt lists every file with its size and sha256, each
file is a subject of the signed statement, and both a cache hit and ``receipts verify``
re-hash them.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from pipeline.core.errors import TracelakeError
from pipeline.core.store import LakeLayout, atomic_write_text
from pipeline.core.trees import (
    TreeError,
    manifest,
    tree_digest,
    tree_paths,
    tree_problem,
    tree_xxh3,
)
from schemas.receipt import ArtifactRef, InputRef


def put_artifact(layout: LakeLayout, name: str, folder: Path) -> ArtifactRef:
    if not folder.is_dir():
        raise TracelakeError(f"artifact {name}: {folder} is not a folder")
    files = manifest(folder)
    digest = tree_digest(files)
    target = layout.artifact_path(digest)
    if not (target.is_dir() and not target.is_symlink() and tree_problem(target, files) is None):
        staging = target.parent / f".tmp-{digest[:16]}-{secrets.token_hex(4)}"
        try:
            staging.mkdir(parents=True)
            for relative, path in tree_paths(folder):
                destination = staging / relative
                destination.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, destination)
            problem = tree_problem(staging, files)
            if problem is not None:  # the stage changed the folder while it was copied
                raise TracelakeError(f"artifact {name} changed while it was stored: {problem}")
            if target.exists() or target.is_symlink():  # damaged: ours replaces it
                if target.is_dir() and not target.is_symlink():
                    shutil.rmtree(target)
                else:
                    target.unlink()
            os.replace(staging, target)
        finally:
            if staging.exists():
                shutil.rmtree(staging)
    return ArtifactRef(
        name=name, digest=digest, files=files, bytes=sum(f.size for f in files),
        path=target.relative_to(layout.root).as_posix(),
    )


def artifact_problem(layout: LakeLayout, ref: ArtifactRef) -> str | None:
    """Why the stored artifact is not the one ``ref`` names (None when it is)."""
    if tree_digest(ref.files) != ref.digest:
        return f"artifact {ref.name}: its manifest does not hash to its digest"
    if ref.path != layout.artifact_path(ref.digest).relative_to(layout.root).as_posix():
        return f"artifact {ref.name} is recorded at {ref.path}, not under its digest"
    folder = layout.root / ref.path
    if folder.is_symlink() or not folder.is_dir():
        return f"artifact {ref.path} is missing or not a folder"
    problem = tree_problem(folder, ref.files)
    return None if problem is None else f"artifact {ref.path}: {problem}"


def built_artifact(layout: LakeLayout, name: str, index: Path, stamp: str, build: Callable[[Path], Path]) -> Path:
    """The folder of a default input the lake builds itself (a tokenizer, a tiny model):
    stored once as an artifact and found again through a small index in the cache. An
    index of another ``stamp`` (what the build depends on), or one naming an artifact
    that does not check out, is a miss: ``build(scratch)`` makes the folder again."""
    from schemas.receipt import ArtifactRef

    try:
        recorded = json.loads(index.read_text(encoding="utf-8"))
        if recorded.get("stamp") == stamp:
            ref = ArtifactRef.model_validate(recorded["artifact"])
            if artifact_problem(layout, ref) is None:
                return layout.root / ref.path
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass
    with tempfile.TemporaryDirectory(prefix=f"tracelake-{name}-") as scratch:
        ref = put_artifact(layout, name, build(Path(scratch)))
    atomic_write_text(index, json.dumps({"stamp": stamp, "artifact": ref.model_dump(mode="json")}, sort_keys=True))
    return layout.root / ref.path


# --- artifacts as inputs of later stages --------------------------------------------------

INPUT_PREFIX = "artifact:"


def artifact_input(ref: ArtifactRef) -> InputRef:
    """An upstream stage's artifact as a later stage's input ``artifact:<name>``: keyed by
    its tree digest, found again by it (the store path follows from the digest)."""
    return InputRef(name=INPUT_PREFIX + ref.name, xxh3_128=tree_xxh3(ref.files), sha256=ref.digest,
                    rows=len(ref.files), location=ref.path)


def artifact_inputs(inputs: Sequence[InputRef]) -> dict[str, InputRef]:
    return {ref.name.removeprefix(INPUT_PREFIX): ref for ref in inputs if ref.name.startswith(INPUT_PREFIX)}


def open_artifact_input(layout: LakeLayout, ref: InputRef) -> Path:
    """The stored folder of an artifact input, after re-hashing every file against the
    digest the cache key was computed from (a store edited since is refused, not read)."""
    assert ref.sha256 is not None
    folder = layout.artifact_path(ref.sha256)
    if folder.is_symlink() or not folder.is_dir():
        raise TracelakeError(f"{ref.name}: the stored artifact {ref.sha256[:16]} is missing")
    try:
        files = manifest(folder)
    except (TreeError, OSError) as exc:
        raise TracelakeError(f"{ref.name}: {exc}") from None
    if tree_digest(files) != ref.sha256 or tree_xxh3(files) != ref.xxh3_128:
        raise TracelakeError(f"{ref.name}: the stored artifact {ref.sha256[:16]} no longer holds what it was "
                             "stored as")
    return folder
