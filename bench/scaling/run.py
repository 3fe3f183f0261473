"""Benchmark: how collect and run-all scale with the size of the logs, time and memory.

For each size (synthetic Claude Code corpora from the collect bench, built once under
``--work``), a cold `tracelake run collect` and, up to ``--run-all-max-mb``, a cold
`tracelake run-all` (fresh root: every stage runs, collect included), both with the
default two workers, from a warm page cache. Reported: wall and CPU seconds, the largest
process's peak RSS and the peak of the whole process tree (PSS, sampled). Writes a
table into docs/BENCHMARKS.md and a plot into docs/scaling.png.

Usage: .venv/bin/python bench/scaling/run.py [--sizes 50,500,2000,4000]
       [--run-all-max-mb 500] [--no-doc]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.collect.run import build_corpus, lake_env, tracelake
from bench.common import (
    REPO,
    corpus_files,
    drop_into_page_cache,
    machine,
    run_measured,
    today,
    update_doc_section,
)

console = Console(width=80)
PLOT = REPO / "docs" / "scaling.png"


def timed(work: Path, corpus: Path, command: str) -> dict[str, Any]:
    root = work / "scaling-runs" / command
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    drop_into_page_cache(corpus_files(corpus))
    args = ["run", "collect"] if command == "collect" else ["run-all"]
    cmd = tracelake(*args, "--root", str(root), "--source", f"claude-code:{corpus}", "--quiet")
    m = run_measured(cmd, env=lake_env(work), log=root.parent / f"{command}.log", poll_s=0.25)
    if m.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed on {corpus}:\n{m.output_tail}")
    return {"wall_s": m.wall_s, "cpu_s": m.cpu_s, "max_rss_mb": m.max_rss_mb, "peak_tree_mb": m.peak_tree_mb}


def plot(rows: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.6))
    for command, marker in (("collect", "o"), ("run-all", "s")):
        points = [r for r in rows if r["command"] == command]
        if not points:
            continue
        sizes = [r["mb"] / 1000 for r in points]
        left.plot(sizes, [r["wall_s"] for r in points], marker=marker, label=command)
        right.plot(sizes, [r["peak_tree_mb"] / 1000 for r in points], marker=marker, label=command)
    left.set(xlabel="logs (GB)", ylabel="wall time (s)", title="time, 2 workers")
    right.set(xlabel="logs (GB)", ylabel="peak memory, process tree (GB)", title="memory")
    right.axhline(2.0, color="grey", linestyle="--", linewidth=0.8)
    for axis in (left, right):
        axis.grid(alpha=0.3)
        axis.legend()
    fig.tight_layout()
    fig.savefig(PLOT, dpi=110)


def markdown(rows: list[dict[str, Any]], command: str) -> str:
    info = machine()
    lines = [
        "## scaling: collect and run-all by corpus size (issue 15)",
        "",
        f"Command: `{command}`  ",
        f"Date: {today()}; machine: {info['nproc']} cores ({info['cpu']}), Python {info['python']}.  ",
        "Synthetic Claude Code corpora; cold runs (fresh root), `--workers 2`, warm page cache. "
        "Plot: [scaling.png](scaling.png).",
        "",
        "| command | MB | wall s | CPU s | CPU s/GB | max RSS MB | tree peak MB |",
        "|---|--:|--:|--:|--:|--:|--:|",
    ]
    for r in rows:
        lines.append(f"| {r['command']} | {r['mb']:,} | {r['wall_s']:.1f} | {r['cpu_s']:.1f} | "
                     f"{r['cpu_s'] / (r['mb'] / 1000):.1f} | {r['max_rss_mb']:,.0f} | {r['peak_tree_mb']:,.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="50,500,2000,4000")
    parser.add_argument("--run-all-max-mb", type=int, default=500)
    parser.add_argument("--work", type=Path, default=REPO / "bench" / ".work")
    parser.add_argument("--no-doc", action="store_true")
    args = parser.parse_args()
    work: Path = args.work.resolve()
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    rows: list[dict[str, Any]] = []
    for mb in sizes:
        corpus, manifest = build_corpus(work, mb)
        commands = ["collect"] + (["run-all"] if mb <= args.run_all_max_mb else [])
        for command in commands:
            with console.status(f"{command} on {mb} MB"):
                rows.append({"command": command, "mb": round(manifest["bytes"] / 1e6),
                             **timed(work, corpus, command)})
            console.print(rows[-1])
    table = Table(title="scaling (cold, --workers 2)")
    for column in ("command", "MB", "wall s", "CPU s", "RSS MB", "tree MB"):
        table.add_column(column, justify="left" if column == "command" else "right")
    for r in rows:
        table.add_row(r["command"], f"{r['mb']:,}", f"{r['wall_s']:.1f}", f"{r['cpu_s']:.1f}",
                      f"{r['max_rss_mb']:,.0f}", f"{r['peak_tree_mb']:,.0f}")
    console.print(table)
    (work / "scaling-results.json").write_text(json.dumps(rows, indent=2))
    if not args.no_doc:
        plot(rows)
        command = f"python bench/scaling/run.py --sizes {args.sizes} --run-all-max-mb {args.run_all_max_mb}"
        update_doc_section("scaling", markdown(rows, command))
        console.print(f"updated docs/BENCHMARKS.md and {PLOT.relative_to(REPO)}")


if __name__ == "__main__":
    main()
