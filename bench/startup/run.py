"""Benchmark: how long the quick commands take to answer, against a bare interpreter.

Each command runs ``--repeat`` times as a user runs it (a fresh ``python -m
pipeline.cli.main`` process, bytecode cached); the median wall time is reported beside
the median of ``python -c pass`` and of ``python -c "import typer"`` measured in the same
script, the floor any Python CLI built on typer pays.

Commands: ``--help``, ``run -h``, a no-op ``run-all`` on the demo corpus (60 Claude
Code and 20 Codex synthetic sessions, as ``make demo`` builds it; the first, cold run
is made once and not timed), ``sql`` on that lake and ``receipts list``.

Usage: .venv/bin/python bench/startup/run.py [--repeat 9]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.common import REPO, machine

PIN = "2026-01-01T00:00:00Z"
console = Console(width=80)


def _env(work: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}  # as users run it
    env["TRACELAKE_SIGNING_KEY"] = str(work / "signing-key.pem")
    env.setdefault("XDG_CACHE_HOME", str(REPO / "tests" / ".cache" / "xdg"))
    return env


def _median_s(cmd: list[str], env: dict[str, str], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        done = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, check=False)
        times.append(time.perf_counter() - start)
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr.decode(errors='replace')[-2000:]}")
    return statistics.median(times)


def _demo_lake(work: Path, env: dict[str, str]) -> list[str]:
    """The demo corpus and a first run over it (not timed); the run-all arguments."""
    from pipeline.demo import corpus_sources

    sources = corpus_sources(work)
    root = work / "root"
    args = ["run-all", "--root", str(root), *sources, "--recorded-at", PIN, "--quiet"]
    if not (root / "receipts").is_dir():
        with console.status("the demo corpus's first run-all (trains and evaluates: a minute or two)"):
            done = subprocess.run([sys.executable, "-m", "pipeline.cli.main", *args], env=env, cwd=REPO,
                                  capture_output=True, check=False)
        if done.returncode != 0:
            raise SystemExit(f"first run-all failed:\n{done.stderr.decode(errors='replace')[-2000:]}")
    return args


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=9)
    parser.add_argument("--work", type=Path, default=REPO / "bench" / ".work" / "startup")
    args = parser.parse_args()
    work: Path = args.work
    work.mkdir(parents=True, exist_ok=True)
    env = _env(work)
    load_before = os.getloadavg()[0]
    run_all = _demo_lake(work, env)
    root = str(work / "root")
    cli = [sys.executable, "-m", "pipeline.cli.main"]
    commands = {
        "python -c pass": [sys.executable, "-c", "pass"],
        "python -c 'import typer'": [sys.executable, "-c", "import typer"],
        "tracelake --help": [*cli, "--help"],
        "tracelake run -h": [*cli, "run", "-h"],
        "no-op run-all (demo)": [*cli, *run_all],
        "sql count(*) (demo)": [*cli, "sql", "--root", root, "SELECT count(*) FROM sessions"],
        "receipts list (demo)": [*cli, "receipts", "list", "--root", root],
    }
    table = Table(title=f"median wall time of {args.repeat} runs")
    for column in ("command", "s", "x bare python"):
        table.add_column(column, justify="left" if column == "command" else "right")
    bare = None
    for name, cmd in commands.items():
        with console.status(name):
            seconds = _median_s(cmd, env, args.repeat)
        bare = bare or seconds
        table.add_row(name, f"{seconds:.3f}", f"{seconds / bare:.1f}")
    console.print(table)
    info = machine()
    console.print(f"machine: {info['nproc']} cpus, {info['cpu']}, python {info['python']}, "
                  f"load before {load_before:.2f}")


if __name__ == "__main__":
    main()
