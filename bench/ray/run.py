"""Benchmark: the Ray executor's overhead against the local one, in the same script.

On the synthetic 500 MB corpus (built once by the collect bench), each round runs the
same command twice from a fresh root, once with ``--executor local`` and once with
``--executor ray`` (a local cluster started by the command, its start-up included),
in alternating order, from a warm page cache. Reported: wall time, the ratio (floor:
Ray at most 1.3x local), whether the run hashes agree, and from the Ray run's receipts
each stage's duration, the time its units ran on workers (``unit_s``, summed) and the
time it waited on them (``map_s``): the rest of a stage's duration is its reduce,
the figures docs/SCALING.md extrapolates from.

Usage: .venv/bin/python bench/ray/run.py [--target-mb 500] [--rounds 1]
       [--stages collect|exports|all] [--no-doc]
"""

from __future__ import annotations

import argparse
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
FLOOR = 1.3
TARGETS = {"collect": ["run", "collect"], "exports": ["run", "export-sft"], "all": ["run-all"]}


def stage_rows(root: Path) -> tuple[str, list[dict[str, Any]]]:
    from pipeline.core.receipts import list_runs, load_run_receipts, load_run_summary
    from pipeline.core.store import LakeLayout

    layout = LakeLayout(root)
    run_id = list_runs(layout)[-1]
    rows = []
    for receipt in load_run_receipts(layout, run_id, None):
        execution = receipt.execution
        rows.append({
            "stage": receipt.stage, "duration_s": receipt.timings.duration_s,
            "tasks": execution.tasks if execution else 0, "retries": execution.retries if execution else 0,
            "unit_s": execution.unit_s if execution else 0.0, "map_s": execution.map_s if execution else 0.0,
            "records_in": receipt.records_in,
        })
    return load_run_summary(layout, run_id, None).run_hash, rows


def one(work: Path, corpus: Path, executor: str, target: str) -> dict[str, Any]:
    root = work / "ray-runs" / executor
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    drop_into_page_cache(corpus_files(corpus))
    cmd = tracelake(*TARGETS[target], "--root", str(root), "--source", f"claude-code:{corpus}",
                    "--executor", executor, "--quiet", "--recorded-at", "2026-01-01T00:00:00Z")
    m = run_measured(cmd, env=lake_env(work), log=root.parent / f"{executor}.log", poll_s=0.5)
    if m.returncode != 0:
        raise SystemExit(f"--executor {executor} failed:\n{m.output_tail}")
    run_hash, stages = stage_rows(root)
    return {"wall_s": m.wall_s, "peak_tree_mb": m.peak_tree_mb, "run_hash": run_hash, "stages": stages}


def markdown(results: dict[str, Any], command: str) -> str:
    local, ray = results["local"], results["ray"]
    ratio = ray["wall_s"] / local["wall_s"]
    lines = [
        f"Measured {today()} on {results['machine']['cpu']} ({results['machine']['nproc']} cores): "
        f"`{command}` ({results['mb']:.0f} MB synthetic corpus, best of {results['rounds']}; "
        "the Ray run starts its local cluster, included).",
        "",
        "| executor | wall s | peak tree MB | run_hash |",
        "|---|---:|---:|---|",
        f"| local | {local['wall_s']:.2f} | {local['peak_tree_mb']:,.0f} | `{local['run_hash'][:16]}` |",
        f"| ray | {ray['wall_s']:.2f} | {ray['peak_tree_mb']:,.0f} | `{ray['run_hash'][:16]}` |",
        "",
        f"Ratio **{ratio:.2f}x** local wall time (floor: at most {FLOOR}x: "
        f"{'met' if ratio <= FLOOR else 'not met'}); run hashes "
        f"{'equal' if local['run_hash'] == ray['run_hash'] else 'DIFFER'}.",
        "",
        "Per stage on Ray (units on workers `unit_s`, summed; waited on them `map_s`; the rest is "
        "the stage's reduce and set-up):",
        "",
        "| stage | records in | tasks | duration s | unit_s | map_s | reduce s |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for s in sorted(ray["stages"], key=lambda s: s["stage"]):
        lines.append(f"| {s['stage']} | {s['records_in']:,} | {s['tasks']} | {s['duration_s']:.2f} | "
                     f"{s['unit_s']:.2f} | {s['map_s']:.2f} | {s['duration_s'] - s['map_s']:.2f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target-mb", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--stages", choices=sorted(TARGETS), default="all")
    parser.add_argument("--work", type=Path, default=REPO / "bench" / ".work")
    parser.add_argument("--no-doc", action="store_true")
    args = parser.parse_args()
    corpus, manifest = build_corpus(args.work, args.target_mb)
    best: dict[str, dict[str, Any]] = {}
    for k in range(args.rounds):
        order = ["local", "ray"] if k % 2 == 0 else ["ray", "local"]
        for executor in order:
            result = one(args.work, corpus, executor, args.stages)
            console.print(f"round {k + 1}: {executor:5} {result['wall_s']:8.2f} s")
            if executor not in best or result["wall_s"] < best[executor]["wall_s"]:
                best[executor] = result
    table = Table(title=f"Ray vs local, {args.stages}")
    for column in ("executor", "wall s", "peak MB", "run_hash"):
        table.add_column(column)
    for name, result in best.items():
        table.add_row(name, f"{result['wall_s']:.2f}", f"{result['peak_tree_mb']:,.0f}", result["run_hash"][:16])
    console.print(table)
    ratio = best["ray"]["wall_s"] / best["local"]["wall_s"]
    console.print(f"ratio {ratio:.2f}x (floor <= {FLOOR}x)")
    mb = sum(p.stat().st_size for p in corpus_files(corpus)) / 1e6
    command = f".venv/bin/python bench/ray/run.py --target-mb {args.target_mb} --rounds {args.rounds} --stages {args.stages}"
    results = {"local": best["local"], "ray": best["ray"], "machine": machine(), "mb": mb, "rounds": args.rounds}
    if not args.no_doc:
        update_doc_section(f"ray-{args.stages}", markdown(results, command))
    del manifest


if __name__ == "__main__":
    main()
