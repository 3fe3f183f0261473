"""Benchmark: what the new redaction costs collect, against the commit before it, in one script.

Both trees run `tracelake run collect` cold (a fresh lake root, an empty shard cache) on
the same files from a warm page cache, alternating baseline and current, each with its
own mypyc build of the collect parser. The baseline is a git worktree of ``--baseline``
(default: the commit before the catalogue redaction) under bench/.work, run with this
venv's interpreter and libraries.

Two corpora:
- synthetic: the collect bench's deterministic `tracelake synth` corpus (``--target-mb``);
- real-shaped: teich's real Claude Code session (fetched at bench time, never committed)
  copied into ``--real-files`` files with fresh session ids and uuids, in 30 project
  folders, the shape of a real ~/.claude/projects.

Prints best-of-``--rounds`` wall and CPU seconds per tree and the ratio current/baseline;
the issue's floor is at most 1.15 (no more than 15% slower).

Usage: .venv/bin/python bench/secrets/run.py [--target-mb 500] [--real-files 3000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.collect.run import build_corpus
from bench.common import (
    REPO,
    Measurement,
    corpus_files,
    corpus_size,
    drop_into_page_cache,
    machine,
    run_measured,
    sdist_sessions,
    write_copies,
)

BASELINE = "f41826069711a9e79e3beb1d0a065a8c9d16afcc"  # before e8a7169 (catalogue redaction)
TEICH = "teich==0.3.6"
console = Console(width=80)


def baseline_tree(work: Path, rev: str) -> Path:
    """A worktree of ``rev`` with its collect parser compiled (once)."""
    sha = subprocess.run(["git", "rev-parse", rev], cwd=REPO, capture_output=True, text=True,
                         check=True).stdout.strip()
    tree = work / f"baseline-{sha}"
    if not tree.exists():
        subprocess.run(["git", "worktree", "add", "--detach", str(tree), sha], cwd=REPO, check=True)
    if not (tree / "pipeline" / "collect" / "_native.json").exists():
        with console.status(f"compiling the baseline's collect parser ({sha[:8]})"):
            subprocess.run([sys.executable, "-m", "pipeline.collect.native", "build"], cwd=tree, check=True,
                           capture_output=True)
    return tree


def teich_session(work: Path) -> Path:
    return next(p for p in sdist_sessions(work, "teich", TEICH) if p.name == "example_claude_code.jsonl")


def real_shaped(work: Path, files: int) -> Path:
    """The real session copied ``files`` times; every uuid (session ids included) mapped
    to a fresh deterministic one per copy, so no two files share a record."""
    corpus = work / f"real-shaped-{files}"
    if corpus.is_dir() and len(corpus_files(corpus)) == files:
        return corpus
    shutil.rmtree(corpus, ignore_errors=True)
    data = teich_session(work).read_bytes()
    with console.status(f"writing {files} real-shaped session files"):
        write_copies(corpus, files, lambda _: data)
    return corpus


def collect(tree: Path, corpus: Path, root: Path, workers: int, log: Path) -> Measurement:
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    cmd = [sys.executable, "-m", "pipeline.cli.main", "run", "collect", "--root", str(root),
           "--source", f"claude-code:{corpus}", "--workers", str(workers), "--quiet"]
    m = run_measured(cmd, cwd=tree, env={"TRACELAKE_SIGNING_KEY": str(root.parent / "signing-key.pem")}, log=log)
    if m.returncode != 0:
        raise SystemExit(f"collect failed in {tree}:\n{m.output_tail}")
    return m


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", default=BASELINE)
    parser.add_argument("--target-mb", type=int, default=500)
    parser.add_argument("--real-files", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--work", type=Path, default=REPO / "bench" / ".work")
    args = parser.parse_args()
    work: Path = args.work
    work.mkdir(parents=True, exist_ok=True)
    base = baseline_tree(work, args.baseline)
    synthetic, _ = build_corpus(work, args.target_mb)
    corpora = {"synthetic": synthetic, "real-shaped": real_shaped(work, args.real_files)}
    runs = work / "secrets-runs"
    table = Table(title=f"collect, cold, --workers {args.workers}: best of {args.rounds}")
    for column in ("corpus", "MB", "files", "tree", "wall s", "cpu s", "ratio"):
        table.add_column(column, justify="left" if column in ("corpus", "tree") else "right")
    for name, corpus in corpora.items():
        files, size = corpus_size(corpus)
        best: dict[str, list[Measurement]] = {"baseline": [], "current": []}
        for r in range(args.rounds):
            for label, tree in (("baseline", base), ("current", REPO)):
                drop_into_page_cache(corpus_files(corpus))
                with console.status(f"{name}: {label}, round {r + 1}/{args.rounds}"):
                    best[label].append(collect(tree, corpus, runs / f"{name}-{label}", args.workers,
                                               runs / f"{name}-{label}.log"))
        wall = {k: min(m.wall_s for m in v) for k, v in best.items()}
        cpu = {k: min(m.cpu_s for m in v) for k, v in best.items()}
        for label in ("baseline", "current"):
            ratio = f"{wall['current'] / wall['baseline']:.2f}x (cpu {cpu['current'] / cpu['baseline']:.2f}x)" \
                if label == "current" else ""
            table.add_row(name, f"{size / 1e6:,.0f}", f"{files:,}", label, f"{wall[label]:.2f}",
                          f"{cpu[label]:.2f}", ratio)
    console.print(table)
    info = machine()
    console.print(f"machine: {info['nproc']} cpus, {info['cpu']}, python {info['python']}; baseline {base.name[9:17]}")


if __name__ == "__main__":
    main()
