"""Source discovery and content digests with a verified stat fast path.

A file's digest is xxh3-128 of its bytes. Re-reading thousands of session files on
every run would dominate a no-op run, so a stat cache maps (size, mtime_ns, ctime_ns,
inode) to the digest; any change in those forces a re-read. ctime is there because
tools that copy a file over another keep its size and mtime (``cp -p``, ``rsync -t``,
``touch -r``) but cannot keep its ctime. The cache file carries a MAC (``CacheMac``):
an entry someone else wrote would make a run claim a digest it never computed. It is
keyed by a keyed hash of each path, not the path: a folder named after a token (a
project folder derived from a working directory) must not put the token on disk.

A digest is only what the runner expected: a stage reads the bytes again and reports
the digest of what it actually parsed (``StageResult.sources_read``) when they differ.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pipeline.core.errors import TracelakeError
from pipeline.core.hashing import CacheMac, digest_json, sha256_file, xxh3_128_file, xxh3_128_hex
from pipeline.core.store import atomic_write_bytes, atomic_write_text

SOURCE_KINDS = ("claude-code", "codex", "outcomes")
# What discovery takes from a source folder, per kind: Claude Code's subagent sidecars
# (``agent-<id>.meta.json``) are read by collect, so they are inputs like the logs.
SOURCE_SUFFIXES: dict[str, tuple[str, ...]] = {
    "claude-code": (".jsonl", ".meta.json"),
    "codex": (".jsonl",),
    "outcomes": (".jsonl",),
}
CHANGED_DURING_RUN = "changed-during-run:"
# The digest recorded for a file discovery found but could not read or name: never the
# digest of any content, so the run that can read it again parses it.
SET_ASIDE = "set-aside:"
UNREADABLE_FILE, UNREADABLE_DIR, UNDECODABLE_NAME = "unreadable_file", "unreadable_dir", "undecodable_name"
# A file whose parse failed on every attempt on an executor's pool (a poisoned file
# that kills its worker): set aside by the stage, not by discovery.
TASK_FAILED = "task_failed"
SET_ASIDE_REASONS = (UNREADABLE_FILE, UNREADABLE_DIR, UNDECODABLE_NAME, TASK_FAILED)


def changed_during_run(last_digest: str) -> str:
    """The digest recorded for a file a stage set aside because it kept changing while
    it was read: never equal to the digest of any content, so no later run reuses it."""
    return CHANGED_DURING_RUN + last_digest


@dataclass(frozen=True)
class SourceSpec:
    kind: str
    path: Path

    @classmethod
    def parse(cls, text: str) -> SourceSpec:
        kind, sep, path = text.partition(":")
        if not sep or kind not in SOURCE_KINDS or not path:
            raise ValueError(
                f"--source must be KIND:PATH with KIND in {', '.join(SOURCE_KINDS)}; got {text!r}"
            )
        return cls(kind=kind, path=Path(path).expanduser())


@dataclass(frozen=True)
class SourceFile:
    kind: str
    path: Path  # absolute, for reading
    display_path: str  # as recorded in tables (home folded to ~ when configured)
    size: int
    digest: str

    @property
    def set_aside(self) -> str | None:
        """Why discovery could not take this file (one of ``SET_ASIDE_REASONS``), or None."""
        return self.digest[len(SET_ASIDE):] if self.digest.startswith(SET_ASIDE) else None


def display_path(path: Path, fold_home: bool, home: str | None = None) -> str:
    text = path.as_posix()
    if fold_home:
        home = (home if home is not None else Path.home().as_posix()).rstrip("/")
        if home and (text == home or text.startswith(home + "/")):
            return "~" + text[len(home) :]
    return text


def discover(spec: SourceSpec) -> tuple[list[tuple[str, os.stat_result]], list[tuple[str, str]]]:
    """The kind's files under ``spec.path`` (or the file itself), as (path, stat) sorted
    by path string; regular files only (symlinks to them too), symlinked folders are not
    followed; one stat per file: the fingerprint comes from it. And what it had to set
    aside, as (path, reason): a folder it may not list (``unreadable_dir``) and a file
    whose path is not UTF-8 (``undecodable_name``: no table can hold its name). Nothing
    found is dropped without a row."""
    root = spec.path.resolve()
    try:
        top = root.stat()
    except OSError:
        return [], []
    if stat.S_ISREG(top.st_mode):
        return ([], [(str(root), UNDECODABLE_NAME)]) if _undecodable(str(root)) else ([(root.as_posix(), top)], [])
    if not stat.S_ISDIR(top.st_mode):
        return [], []
    suffixes = SOURCE_SUFFIXES[spec.kind]
    found: list[tuple[str, os.stat_result]] = []
    set_aside: list[tuple[str, str]] = []
    pending = [str(root)]
    while pending:
        folder = pending.pop()
        try:
            entries = os.scandir(folder)
        except FileNotFoundError:  # vanished meanwhile
            continue
        except OSError:
            set_aside.append((folder, UNREADABLE_DIR))
            continue
        with entries:
            for entry in entries:
                try:
                    if entry.is_dir(follow_symlinks=False):
                        pending.append(entry.path)
                    elif entry.name.endswith(suffixes) and entry.is_file():
                        if _undecodable(entry.path):
                            set_aside.append((entry.path, UNDECODABLE_NAME))
                        else:
                            found.append((entry.path, entry.stat()))
                except OSError:  # vanished meanwhile
                    continue
    # Sorted as strings (Path comparison costs ~10x more).
    found.sort(key=lambda item: item[0])
    set_aside.sort()
    return found, set_aside


def _undecodable(path: str) -> bool:
    """Whether a path holds bytes that are not UTF-8 (Python keeps them as surrogates)."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def shown_name(path: str) -> str:
    """A path as text whatever its bytes: undecodable bytes as ``\\xNN``."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


class StatCache:
    """MAC(path) -> (size, mtime_ns, ctime_ns, inode, digest), persisted under
    data/cache/ as one MAC line and the JSON entries; a file whose MAC fails is an empty
    cache."""

    HEADER = b"tracelake-stat-cache-v3 "

    def __init__(self, path: Path, mac: CacheMac) -> None:
        self.path = path
        self.mac = mac
        self.entries: dict[str, list[object]] = {}
        self.dirty = False
        try:
            data = path.read_bytes()
        except OSError:
            return
        head, _, body = data.partition(b"\n")
        if not head.startswith(self.HEADER):
            return
        try:
            tag = bytes.fromhex(head[len(self.HEADER):].decode("ascii"))
        except ValueError:
            return
        if not mac.same(tag, mac.tag(body)):
            return
        try:
            loaded = json.loads(body)
        except ValueError:
            return
        if isinstance(loaded, dict):
            self.entries = loaded

    def digest_all(
        self, files: Sequence[tuple[str, os.stat_result]], algorithm: Literal["xxh3", "sha256"] = "xxh3"
    ) -> list[str | None]:
        """The digest per (path, stat); None for a file that cannot be read. Files whose
        fingerprint changed are read by two threads (reads and xxh3 release the GIL):
        0.12 s instead of 0.16-0.27 s for a cold 500 MB corpus. ``sha256``: the digest
        trees (external inputs) are named by, cached under keys of its own."""
        out: list[str | None] = []
        stale: list[tuple[int, list[object]]] = []
        read = _readable_digest if algorithm == "xxh3" else _readable_sha256
        keys = [self._key(path if algorithm == "xxh3" else f"sha256\0{path}") for path, _ in files]
        for index, (_, info) in enumerate(files):
            fingerprint: list[object] = [info.st_size, info.st_mtime_ns, info.st_ctime_ns, info.st_ino]
            cached = self.entries.get(keys[index])
            if isinstance(cached, list) and len(cached) == 5 and cached[:4] == fingerprint:
                out.append(str(cached[4]))
            else:
                out.append("")
                stale.append((index, fingerprint))
        if not stale:
            return out
        shares = [stale[0::2], stale[1::2]]  # one run of files per thread, not a task per file
        with ThreadPoolExecutor(max_workers=2) as pool:
            digested = list(pool.map(lambda share: [read(files[i][0]) for i, _ in share], shares))
        for share, digests in zip(shares, digested, strict=True):
            for (index, fingerprint), digest in zip(share, digests, strict=True):
                out[index] = digest
                if digest is not None:
                    self.entries[keys[index]] = [*fingerprint, digest]
                    self.dirty = True
        return out

    def _key(self, path: str) -> str:
        return self.mac.tag(path.encode("utf-8", "surrogateescape")).hex()[:32]

    def save(self) -> None:
        if self.dirty:
            body = json.dumps(self.entries, sort_keys=True).encode("utf-8")
            head = self.HEADER + self.mac.tag(body).hex().encode("ascii")
            atomic_write_bytes(self.path, head + b"\n" + body)
            self.dirty = False


def _readable_digest(path: str) -> str | None:
    try:
        return xxh3_128_file(Path(path))
    except OSError:
        return None


def _readable_sha256(path: str) -> str | None:
    try:
        return sha256_file(Path(path))
    except OSError:
        return None


def resolve_sources(
    specs: Iterable[SourceSpec], cache: StatCache, fold_home: bool = True
) -> list[SourceFile]:
    """Every source file with its digest; a file or folder discovery could not read or
    name is a ``SourceFile`` too, whose ``set_aside`` says why (its stage quarantines it)."""
    files: dict[tuple[str, str], SourceFile] = {}
    home = Path.home().as_posix()
    found: list[tuple[str, tuple[str, os.stat_result]]] = []
    for spec in specs:
        readable, set_aside = discover(spec)
        found.extend((spec.kind, entry) for entry in readable)
        for name, reason in set_aside:
            shown = display_path(Path(shown_name(name)), fold_home, home)
            files[(spec.kind, shown)] = SourceFile(spec.kind, Path(name), shown, 0, SET_ASIDE + reason)
    digests = cache.digest_all([entry for _, entry in found])
    for (kind, (name, info)), digest in zip(found, digests, strict=True):
        path = Path(name)
        shown = display_path(path, fold_home, home)
        if digest is None and not os.path.lexists(name):
            continue  # deleted since discovery: not a source any more
        if digest is None:
            files[(kind, shown)] = SourceFile(kind, path, shown, 0, SET_ASIDE + UNREADABLE_FILE)
        else:
            files[(kind, shown)] = SourceFile(kind, path, shown, info.st_size, digest)
    cache.save()
    return [files[key] for key in sorted(files)]


def read_source(file: SourceFile) -> tuple[bytes, SourceFile]:
    """A source file's bytes in one read, and the file as read: its digest is of those
    bytes, whatever it was when the run digested it."""
    data = file.path.read_bytes()
    digest = xxh3_128_hex(data)
    if digest == file.digest and len(data) == file.size:
        return data, file
    return data, SourceFile(file.kind, file.path, file.display_path, len(data), digest)


def manifest_digest(files: Iterable[SourceFile]) -> str:
    """Digest of (kind, digest of the recorded path, content digest) over all files,
    order-free. The path enters as its digest so a manifest can withhold a path and
    still prove which set of files it stands for."""
    return _manifest_digest([f.kind, _path_digest(f.display_path), f.digest] for f in files)


def _manifest_digest(rows: Iterable[list[str]]) -> str:
    return digest_json(sorted(rows))


def _path_digest(display: str) -> str:
    return xxh3_128_hex(display.encode("utf-8", "surrogateescape"))


def check_source(spec: SourceSpec) -> None:
    """A source that does not exist, holds none of its kind's files, or holds logs of
    another kind is a mistake (a typo, the wrong folder, the wrong KIND): a run over it
    would succeed with nothing in it, or with every line set aside."""
    try:
        exists = spec.path.exists()
    except OSError as error:  # a folder above it may not be searched
        raise TracelakeError(f"source {spec.kind}:{spec.path} cannot be read: {error.strerror}") from error
    if not exists:
        raise TracelakeError(f"source {spec.kind}:{spec.path} does not exist")
    found, set_aside = discover(spec)
    if not found and set_aside:
        from pipeline.secrets import redact_texts

        path, reason = set_aside[0]
        more = f" (and {len(set_aside) - 1} more)" if len(set_aside) > 1 else ""
        raise TracelakeError(f"source {spec.kind}:{spec.path} has no file tracelake can read: "
                             f"{redact_texts([shown_name(path)])[0]}: {reason.replace('_', ' ')}{more}")
    if not found:
        suffixes = " or ".join(f"*{s}" for s in SOURCE_SUFFIXES[spec.kind])
        raise TracelakeError(f"source {spec.kind}:{spec.path} holds no {spec.kind} files ({suffixes})")
    if spec.kind in _LOG_KINDS:
        logs = [path for path, _ in found if path.endswith(".jsonl")][:_SNIFFED_FILES]
        kinds = {_log_kind(Path(path)) for path in logs}
        if len(kinds) == 1 and (other := kinds.pop()) not in (None, spec.kind):
            raise TracelakeError(
                f"source {spec.kind}:{spec.path} looks like {_LOG_KINDS[other]}, not {_LOG_KINDS[spec.kind]}"
                f" (by the first records of {len(logs)} file(s)); give it as {other}:{spec.path}"
            )


_LOG_KINDS = {"claude-code": "Claude Code sessions", "codex": "Codex rollouts"}
_SNIFFED_FILES = 8
_SNIFFED_BYTES = 1 << 20
_SNIFFED_LINES = 8
_CODEX_TYPES = frozenset({"session_meta", "response_item", "event_msg", "turn_context", "compacted"})


def _log_kind(path: Path) -> str | None:
    """Which agent wrote this log, by the first of its first few records that tells
    (Claude Code may open with a file-history snapshot); None when none does."""
    try:
        with path.open("rb") as handle:
            for _ in range(_SNIFFED_LINES):
                line = handle.readline(_SNIFFED_BYTES)
                if not line:
                    return None
                try:
                    record = json.loads(line)
                except ValueError:
                    return None
                if not isinstance(record, dict):
                    return None
                if record.get("type") in _CODEX_TYPES and isinstance(record.get("payload"), dict):
                    return "codex"
                if isinstance(record.get("sessionId"), str) or record.get("type") == "summary":
                    return "claude-code"
    except OSError:
        return None
    return None


SOURCES_FILE = Path("data") / "sources.json"  # in a root: the sources its last explicit run named


def remember_sources(root: Path, specs: Sequence[SourceSpec]) -> None:
    """Keep the sources a run was given, so a bare ``run-all`` in this root runs them
    again (as a DVC or dbt project remembers its inputs) instead of ``~``'s logs."""
    listed = [{"kind": spec.kind, "path": str(spec.path.expanduser().resolve())} for spec in specs]
    atomic_write_text(root / SOURCES_FILE, json.dumps(listed, indent=1) + "\n")


def remembered_sources(root: Path) -> list[SourceSpec] | None:
    """The sources ``remember_sources`` kept in ``root``; None when it kept none."""
    try:
        listed = json.loads((root / SOURCES_FILE).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise TracelakeError(f"{root / SOURCES_FILE} is not a list of sources: {exc}") from exc
    if not isinstance(listed, list) or not all(
        isinstance(item, dict) and item.get("kind") in SOURCE_KINDS and isinstance(item.get("path"), str)
        for item in listed
    ):
        raise TracelakeError(f"{root / SOURCES_FILE} is not a list of sources; delete it or give --source")
    return [SourceSpec(item["kind"], Path(item["path"])) for item in listed]


def default_specs() -> list[SourceSpec]:
    specs = []
    for kind, folder in (("claude-code", "~/.claude/projects"), ("codex", "~/.codex/sessions")):
        path = Path(folder).expanduser()
        if path.is_dir():
            specs.append(SourceSpec(kind, path))
    return specs


def env_root() -> Path:
    return Path(os.environ.get("TRACELAKE_ROOT") or ".").resolve()


def manifest_path(cache_dir: Path, digest: str) -> Path:
    return cache_dir / "manifests" / f"{digest}.json"


def save_manifest(cache_dir: Path, files: list[SourceFile]) -> str:
    """Record which files a manifest digest stands for, so `receipts verify --deep` can
    re-read exactly those files later. Content-addressed: written once per distinct set.
    A path that holds a secret (a token in a folder name) is withheld: the row keeps its
    digests and a redacted path, and deep verify reports that file as unavailable."""
    digest = manifest_digest(files)
    path = manifest_path(cache_dir, digest)
    if not path.exists():
        from pipeline.secrets import redact_texts

        real = [shown_name(f.path.as_posix()) for f in files]
        redacted_real = redact_texts(real)
        redacted_shown = redact_texts([f.display_path for f in files])
        rows = []
        for f, name, clean, shown in zip(files, real, redacted_real, redacted_shown, strict=True):
            withheld = clean != name or shown != f.display_path
            rows.append([f.kind, None if withheld else name, shown, _path_digest(f.display_path), f.size, f.digest])
        atomic_write_text(path, json.dumps(rows, sort_keys=True))
    return digest


@dataclass(frozen=True)
class Manifest:
    files: list[SourceFile]  # the files whose paths were recorded
    withheld: list[str]  # redacted paths of the files whose paths held a secret


def load_manifest(cache_dir: Path, digest: str) -> Manifest | None:
    path = manifest_path(cache_dir, digest)
    try:
        rows = json.loads(path.read_text())
        files, withheld, keys = [], [], []
        for kind, real, shown, path_digest, size, content in rows:
            keys.append([str(kind), str(path_digest), str(content)])
            if real is None:
                withheld.append(str(shown))
                continue
            file = SourceFile(str(kind), Path(real), str(shown), int(size), str(content))
            if _path_digest(file.display_path) != path_digest:
                return None
            files.append(file)
    except (OSError, ValueError, TypeError):
        return None
    return Manifest(files, withheld) if _manifest_digest(keys) == digest else None
