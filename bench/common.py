"""Shared helpers for the benchmarks: timed subprocesses with peak memory, machine facts,
and the docs/BENCHMARKS.md section writer.

Memory is reported two ways because neither alone is honest for a multi-process tool:

- ``max_rss_mb``: the kernel's exact high-water mark of the *largest single process* in
  the tree (``wait4`` rusage, i.e. max over the child and every descendant it reaped).
- ``peak_tree_mb``: the peak of the *sum over the whole process tree*, sampled from /proc
  every ``poll_s`` seconds. Each process contributes its PSS (shared pages split between
  the processes mapping them, so forked workers are not double counted), falling back to
  RSS where smaps_rollup is unreadable. Sampling can miss a spike shorter than ``poll_s``.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import re
import subprocess
import sys
import tarfile
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import xxhash

REPO = Path(__file__).resolve().parent.parent
DOC = REPO / "docs" / "BENCHMARKS.md"
_PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024


@dataclass
class Measurement:
    """One timed subprocess run."""

    cmd: list[str]
    wall_s: float
    cpu_s: float  # user + sys over the whole tree: far less sensitive to a busy box than wall
    max_rss_mb: float
    peak_tree_mb: float
    returncode: int
    output_tail: str
    load_before: float  # 1-minute load average at start: other work on the box skews timings

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _children_map() -> dict[int, list[int]]:
    """ppid -> pids, from one scan of /proc (cheap: a container has few processes)."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        # The command name may contain spaces and parentheses; fields resume after the last ')'.
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    return children


def _tree(pid: int) -> list[int]:
    children = _children_map()
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        out.append(current)
        todo.extend(children.get(current, []))
    return out


def _process_kb(pid: int) -> int:
    """PSS in kB from smaps_rollup, else RSS from statm; 0 if the process is gone."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
        match = re.search(r"^Pss:\s+(\d+) kB", text, re.MULTILINE)
        if match:
            return int(match.group(1))
    except OSError:
        pass
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * _PAGE_KB
    except (OSError, IndexError, ValueError):
        return 0


def tree_kb(pid: int) -> int:
    return sum(_process_kb(p) for p in _tree(pid))


def run_measured(
    cmd: Sequence[str],
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    poll_s: float = 0.05,
    log: Path | None = None,
) -> Measurement:
    """Run ``cmd`` to completion, timing it and tracking its memory (see module docstring).

    Output goes to ``log`` (or a temp file) rather than a pipe so a chatty child can never
    block on a full pipe while we are sampling.
    """
    log = log or Path(os.environ.get("TMPDIR", "/tmp")) / f"bench-{os.getpid()}.log"
    full_env = {**os.environ, **(env or {})}
    load = os.getloadavg()[0]
    with log.open("wb") as out:
        start = time.perf_counter()
        proc = subprocess.Popen(
            list(cmd), stdout=out, stderr=subprocess.STDOUT, env=full_env, cwd=cwd
        )
        peak_kb = 0
        sampled = 0.0
        while True:
            pid, status, rusage = os.wait4(proc.pid, os.WNOHANG)
            if pid == proc.pid:
                break
            # The exit is looked for every 5 ms (wall time stays exact); the tree, whose
            # reading costs CPU, is sampled every poll_s.
            if time.perf_counter() - sampled >= poll_s:
                peak_kb = max(peak_kb, tree_kb(proc.pid))
                sampled = time.perf_counter()
            time.sleep(0.005)
        wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    tail = log.read_text(errors="replace")[-4000:]
    return Measurement(
        cmd=list(cmd),
        wall_s=round(wall, 3),
        cpu_s=round(rusage.ru_utime + rusage.ru_stime, 3),
        max_rss_mb=round(rusage.ru_maxrss / 1024, 1),  # Linux reports kB
        peak_tree_mb=round(peak_kb / 1024, 1),
        returncode=proc.returncode,
        output_tail=tail,
        load_before=round(load, 2),
    )


def drop_into_page_cache(files: Sequence[Path]) -> None:
    """Read every file once so each timed tool starts from the same warm OS page cache."""
    for path in files:
        with path.open("rb") as fh:
            while fh.read(1 << 22):
                pass


def machine() -> dict[str, Any]:
    mem_kb = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_kb = int(line.split()[1])
    cpu = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu": cpu,
        "ram_gb": round(mem_kb / 1024 / 1024, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def today() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def python_cmd() -> str:
    return sys.executable


def update_doc_section(name: str, markdown: str, doc: Path = DOC) -> None:
    """Replace (or append) the section between ``<!-- bench:NAME -->`` markers.

    Each bench owns exactly one marked block, so benches can rewrite their figures
    without touching each other's.
    """
    start, end = f"<!-- bench:{name}:start -->", f"<!-- bench:{name}:end -->"
    block = f"{start}\n{markdown.strip()}\n{end}"
    text = (
        doc.read_text()
        if doc.exists()
        else "# Benchmarks\n\nFigures written by `bench/*/run.py`.\n"
    )
    if start in text and end in text:
        head, rest = text.split(start, 1)
        _, tail = rest.split(end, 1)
        text = head + block + tail
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(text)


def corpus_files(corpus: Path) -> list[Path]:
    return sorted(p for p in corpus.rglob("*.jsonl") if p.is_file())


def synth_digest() -> str:
    """Digest of the synthesizer's source, so a changed generator rebuilds the corpus."""
    h = xxhash.xxh3_128()
    for path in sorted((REPO / "pipeline" / "synth").rglob("*.py")):
        h.update(path.relative_to(REPO).as_posix().encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def corpus_size(corpus: Path) -> tuple[int, int]:
    """(files, bytes) of a corpus."""
    files = corpus_files(corpus)
    return len(files), sum(p.stat().st_size for p in files)


def sdist_sessions(work: Path, name: str, requirement: str) -> list[Path]:
    """The .jsonl files an sdist ships (real sessions: teich, claude-code-log), fetched
    once into ``work``; they hold real paths and names, so never into the repository."""
    folder = work / "sdists" / name
    if not folder.exists():
        download = work / "sdists" / f"{name}-download"
        download.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
                        requirement, "-d", str(download)], check=True)
        (archive,) = download.glob("*.tar.gz")
        with tarfile.open(archive) as tar:
            members = [m for m in tar.getmembers() if m.isfile() and m.name.endswith(".jsonl")]
            tar.extractall(folder, members=members, filter="data")
    return sorted(folder.rglob("*.jsonl"))


UUID_BYTES = re.compile(rb"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def fresh_ids(data: bytes, namespace: uuid.UUID, keep: frozenset[bytes] = frozenset()) -> bytes:
    """``data`` (session JSONL) with every uuid but those in ``keep`` mapped to a fresh
    one, the same one for every occurrence (so parent links and tool ids still pair):
    copies of a real session that share no record."""
    seen: dict[bytes, bytes] = {}

    def fresh(m: re.Match[bytes]) -> bytes:
        old = m.group(0)
        if old in keep:
            return old
        if old not in seen:
            seen[old] = str(uuid.uuid5(namespace, old.decode())).encode()
        return seen[old]

    return UUID_BYTES.sub(fresh, data)


def write_copies(corpus: Path, files: int, session_for: Callable[[int], bytes]) -> None:
    """``files`` copies of real sessions (copy ``i`` of ``session_for(i)``), each with
    fresh uuids (``fresh_ids``), named by its first uuid, in 30 project folders."""
    for i in range(files):
        copy = fresh_ids(session_for(i), uuid.UUID(int=i + 1))
        first = UUID_BYTES.search(copy)
        name = first.group(0).decode() if first else f"s{i}"
        target = corpus / f"-home-user-project{i % 30}" / f"{name}.jsonl"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(copy)
