"""Benchmark: collect against agentpile 0.3.1 on corpora shaped like users' logs.

Three corpora, built deterministically under ``--work`` (real sessions are fetched at
bench time from the teich and claude-code-log sdists and never committed: they hold
real paths and names):

- ``synthetic``: the collect bench's `tracelake synth` corpus (``--target-mb``);
- ``real-shaped``: ``--real-files`` files in 30 project folders, the shape of a real
  ``~/.claude/projects``. Three of four are teich's real Claude Code session (62 KB);
  the fourth is every Claude Code record claude-code-log ships (340 KB: 16 sessions'
  tool results, a base64 image, thinking, sidechains), so those fixture records are
  about two thirds of the bytes. Every uuid (session ids too) is mapped to a fresh one
  per copy, so no two files share a record;
- ``huge``: one session of at least ``--huge-mb`` MB and two of a tenth of it, each
  teich's session repeated with fresh message uuids under one session id.

Each corpus is timed with agentpile (one process), then tracelake `run collect` cold
(fresh root, empty shard cache) with ``--workers 1`` and ``--workers 2``, best of
``--repeat``, all from a warm page cache, in the same script. Reported: wall and CPU
seconds, CPU seconds per GB, the largest process's peak RSS, and the speed ratio to
agentpile. The issue 15 floor is 1.0x with one worker on every corpus (aim: 2x with two).

Usage: .venv/bin/python bench/collect/shapes.py [--corpus synthetic,real-shaped,huge]
       [--target-mb 500] [--real-files 3000] [--huge-mb 400] [--repeat 1] [--no-doc]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import uuid
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.collect.run import (
    AGENTPILE,
    best_of,
    build_corpus,
    ensure_agentpile,
    time_agentpile,
    time_tracelake,
)
from bench.common import (
    REPO,
    UUID_BYTES,
    Measurement,
    corpus_files,
    corpus_size,
    fresh_ids,
    machine,
    sdist_sessions,
    today,
    update_doc_section,
    write_copies,
)

console = Console(width=80)
# How often the whole process tree's memory is sampled (the exit is looked for every
# 5 ms regardless). Reading every process's smaps_rollup costs CPU that grows with the
# tree and its mappings (a third of a core at 50 ms for tracelake's, next to nothing for
# agentpile's one small process): on two cores that would tilt the ratio, so it is
# sampled seldom; max RSS (the kernel's, reported) is exact regardless.
POLL_S = 0.5


def _real_sessions(work: Path) -> tuple[bytes, bytes]:
    """teich's real Claude Code session, and claude-code-log's Claude Code records as one
    file (their own session ids, fresh in each copy)."""
    teich = next(p for p in sdist_sessions(work, "teich", "teich==0.3.6") if p.name == "example_claude_code.jsonl")
    records = [p for p in sdist_sessions(work, "claude-code-log", "claude-code-log==1.7.0")
               if "/claude-code/" in p.as_posix()]
    lines = [line for p in records for line in p.read_bytes().splitlines() if line.strip()]
    return teich.read_bytes(), b"\n".join(lines) + b"\n"


def real_shaped(work: Path, files: int) -> Path:
    corpus = work / f"shapes-real-{files}"
    if corpus.is_dir() and len(corpus_files(corpus)) == files:
        return corpus
    shutil.rmtree(corpus, ignore_errors=True)
    teich, logged = _real_sessions(work)
    with console.status(f"writing {files} real-shaped session files"):
        write_copies(corpus, files, lambda i: logged if i % 4 == 3 else teich)
    return corpus


def huge(work: Path, mb: int) -> Path:
    corpus = work / f"shapes-huge-{mb}mb"
    if corpus.is_dir() and corpus_size(corpus)[1] >= mb * 1_000_000 * 1.2:
        return corpus
    shutil.rmtree(corpus, ignore_errors=True)
    teich, _ = _real_sessions(work)
    first = UUID_BYTES.search(teich)
    assert first is not None
    session = first.group(0)
    for index, size in enumerate((mb, max(1, mb // 10), max(1, mb // 10))):
        session_id = str(uuid.uuid5(uuid.UUID(int=index + 1), "huge")).encode()
        target = corpus / "-home-user-monorepo" / f"{session_id.decode()}.jsonl"
        target.parent.mkdir(parents=True, exist_ok=True)
        written = copy = 0
        with console.status(f"writing a {size} MB session"), target.open("wb") as out:
            while written < size * 1_000_000:
                data = fresh_ids(teich, uuid.UUID(int=(index << 32) + copy + 1), frozenset({session}))
                data = data.replace(session, session_id)
                out.write(data if data.endswith(b"\n") else data + b"\n")
                written += len(data)
                copy += 1
    return corpus


def measure(work: Path, name: str, corpus: Path, repeat: int, agentpile: Path) -> list[dict[str, Any]]:
    files, size = corpus_size(corpus)
    runs = work / f"shapes-runs-{name}"
    runs.mkdir(parents=True, exist_ok=True)
    gb = size / 1e9
    rows: list[dict[str, Any]] = []
    # time_agentpile and time_tracelake show their own status lines
    base, _ = best_of(repeat, lambda: time_agentpile(agentpile, runs, corpus_files(corpus), POLL_S))
    timed: list[tuple[str, Measurement]] = [("agentpile (1 process)", base)]
    for workers in (1, 2):
        m, _ = best_of(repeat, partial(time_tracelake, work, runs, corpus, corpus_files(corpus), workers, POLL_S))
        timed.append((f"tracelake -w {workers}", m))
    for tool, m in timed:
        rows.append({
            "corpus": name, "files": files, "mb": round(size / 1e6), "tool": tool, "wall_s": m.wall_s,
            "cpu_s": m.cpu_s, "cpu_s_per_gb": m.cpu_s / gb, "max_rss_mb": m.max_rss_mb,
            "vs_agentpile": base.wall_s / m.wall_s, "load_before": m.load_before,
        })
    return rows


def print_rows(rows: list[dict[str, Any]]) -> None:
    table = Table(title="collect on user-shaped corpora (best of runs)")
    for column in ("corpus", "tool", "wall s", "CPU s/GB", "RSS MB", "ratio"):
        table.add_column(column, justify="left" if column in ("corpus", "tool") else "right")
    for r in rows:
        table.add_row(f"{r['corpus']} {r['mb']:,} MB", r["tool"], f"{r['wall_s']:.2f}", f"{r['cpu_s_per_gb']:.1f}",
                      f"{r['max_rss_mb']:,.0f}", f"{r['vs_agentpile']:.2f}x")
    console.print(table)


def markdown(rows: list[dict[str, Any]], command: str) -> str:
    info = machine()
    lines = [
        "## collect on user-shaped corpora (issue 15)",
        "",
        f"Command: `{command}`  ",
        f"Date: {today()}; machine: {info['nproc']} cores ({info['cpu']}), Python {info['python']}.  ",
        f"Peer: {AGENTPILE} in one process (`session_to_trajectory` + `json.dumps` per top-level "
        "session, output discarded); tracelake: cold `run collect`, redaction on, signed Parquet.",
        "",
        "| corpus | files | MB | tool | wall s | CPU s | CPU s/GB | max RSS MB | speed vs agentpile | load |",
        "|---|--:|--:|---|--:|--:|--:|--:|--:|--:|",
    ]
    for r in rows:
        lines.append(f"| {r['corpus']} | {r['files']:,} | {r['mb']:,} | {r['tool']} | {r['wall_s']:.2f} | "
                     f"{r['cpu_s']:.1f} | {r['cpu_s_per_gb']:.1f} | {r['max_rss_mb']:,.0f} | "
                     f"{r['vs_agentpile']:.2f}x | {r['load_before']:.1f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", default="synthetic,real-shaped,huge")
    parser.add_argument("--target-mb", type=int, default=500)
    parser.add_argument("--real-files", type=int, default=3000)
    parser.add_argument("--huge-mb", type=int, default=400)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--work", type=Path, default=REPO / "bench" / ".work")
    parser.add_argument("--no-doc", action="store_true")
    args = parser.parse_args()
    work: Path = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    builders: dict[str, Callable[[], Path]] = {
        "synthetic": lambda: build_corpus(work, args.target_mb)[0],
        "real-shaped": lambda: real_shaped(work, args.real_files),
        "huge": lambda: huge(work, args.huge_mb),
    }
    names = [n.strip() for n in args.corpus.split(",") if n.strip()]
    unknown = [n for n in names if n not in builders]
    if unknown:
        raise SystemExit(f"unknown corpus {unknown[0]!r}; known: {', '.join(builders)}")
    agentpile = ensure_agentpile(work)
    rows: list[dict[str, Any]] = []
    for name in names:
        rows += measure(work, name, builders[name](), args.repeat, agentpile)
    print_rows(rows)
    command = (f"python bench/collect/shapes.py --corpus {','.join(names)} --target-mb {args.target_mb} "
               f"--real-files {args.real_files} --huge-mb {args.huge_mb} --repeat {args.repeat}")
    if not args.no_doc:
        update_doc_section("collect-shapes", markdown(rows, command))
        console.print("updated docs/BENCHMARKS.md")


if __name__ == "__main__":
    main()
