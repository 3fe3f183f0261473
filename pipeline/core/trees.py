"""Trees: a folder (or a lone file) named by one digest over its sorted manifest.

The artifacts a stage writes (an adapter and its config, a plot) and the external inputs
it reads (a model folder, a tokenizer, a chat template) are trees. A tree's digest is
the sha256 of the canonical JSON of its manifest, the sorted (relative path, size,
sha256) of every file, under a version tag: the same files give the same digest
wherever the folder sits and whatever the files' times, and a renamed, added, dropped
or edited file gives another. Folder links are not followed (a loop, or a folder
outside the tree, would otherwise be hashed); a file link is read through, as a model
cache's snapshot links to its blobs.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

from pipeline.core.errors import TracelakeError
from pipeline.core.hashing import canonical_json, sha256_file, xxh3_128_hex
from pipeline.core.sources import StatCache, shown_name
from schemas.receipt import TreeFile

TREE_VERSION = "tracelake-tree-v1"
LONE_FILE = "."


class TreeError(TracelakeError):
    """A tree that cannot be read whole, or is not the one recorded."""


def tree_paths(root: Path) -> list[tuple[str, Path]]:
    """(relative POSIX path, path) of every file under ``root``, sorted by relative path;
    a lone file is one entry named ``.``. Folder links are followed (a model folder may
    link its weights from elsewhere; leaving them out would leave them out of the
    digest); a link loop, an unreadable folder or a name that is not UTF-8 is an error,
    never a silent gap."""
    if root.is_file():
        return [(LONE_FILE, root)]
    if not root.is_dir():
        raise TreeError(f"{root} is neither a file nor a folder")
    found: list[tuple[str, Path]] = []
    seen: set[tuple[int, int]] = set()

    def refuse(error: OSError) -> None:
        raise TreeError(f"cannot read {error.filename}: {error.strerror}")

    for current, dirs, files in os.walk(root, onerror=refuse, followlinks=True):
        info = os.stat(current)
        if (info.st_dev, info.st_ino) in seen:
            raise TreeError(f"{current} is reached twice through folder links (a loop?)")
        seen.add((info.st_dev, info.st_ino))
        dirs.sort()
        for name in files:
            path = Path(current) / name
            if not path.is_file():
                raise TreeError(f"{path} is not a regular file (a broken link, a FIFO...)")
            relative = path.relative_to(root).as_posix()
            try:
                relative.encode("utf-8")
            except UnicodeEncodeError:
                raise TreeError(f"{shown_name(str(path))} has a name that is not UTF-8") from None
            found.append((relative, path))
    return sorted(found)


def manifest(root: Path, cache: StatCache | None = None) -> list[TreeFile]:
    """The tree's manifest; with ``cache``, a file whose (size, mtime, ctime, inode) the
    MAC'd stat cache already holds is not read again (the sources' fast path)."""
    entries = tree_paths(root)
    stats = [(str(path), path.stat()) for _, path in entries]
    digests: list[str | None]
    if cache is not None:
        digests = cache.digest_all(stats, "sha256")
        cache.save()
    else:
        digests = [sha256_file(path) for _, path in entries]
    files = []
    for (relative, path), (_, info), digest in zip(entries, stats, digests, strict=True):
        if digest is None:
            raise TreeError(f"{path} cannot be read")
        files.append(TreeFile(path=relative, size=info.st_size, sha256=digest))
    return files


def _canonical(files: Sequence[TreeFile]) -> bytes:
    return canonical_json({"version": TREE_VERSION, "files": [[f.path, f.size, f.sha256] for f in files]})


def tree_digest(files: Sequence[TreeFile]) -> str:
    """sha256 of the canonical manifest: the name a tree is stored, signed and found by."""
    return hashlib.sha256(_canonical(files)).hexdigest()


def tree_xxh3(files: Sequence[TreeFile]) -> str:
    """xxh3-128 of the canonical manifest: what a cache key hashes, like every input's."""
    return xxh3_128_hex(_canonical(files))


def tree_problem(root: Path, files: Sequence[TreeFile]) -> str | None:
    """Why the tree at ``root`` is not exactly ``files`` (None when it is): a file
    missing, added, resized or with other bytes. Re-hashes every byte."""
    try:
        found = tree_paths(root)
    except TreeError as exc:
        return str(exc)
    recorded = {f.path: f for f in files}
    present = {relative for relative, _ in found}
    for relative in sorted(present - set(recorded)):
        return f"holds {relative}, which is not in its manifest"
    for relative, file in sorted(recorded.items()):
        if relative not in present:
            return f"{relative} is missing"
        path = root / relative if relative != LONE_FILE else root
        if path.stat().st_size != file.size:
            return f"{relative} is {path.stat().st_size} bytes, recorded {file.size}"
        if sha256_file(path) != file.sha256:
            return f"{relative} does not match its recorded sha256"
    return None
