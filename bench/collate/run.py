"""Benchmark: collate's throughput against a bare batch encode of the same texts.

Both sides get the same SFT conversations: a synthetic corpus run through export-sft,
or (``--real``) teich's real Claude Code session's rows, fetched at bench time. Collate renders every
prefix, tokenises with offsets through ``apply_chat_template`` and proves each mask;
the baseline is ``tokenizer(texts)`` on the already rendered full conversations, in the
same process with the same tokenizer. Prints tokens per second for both and the ratio
(the issue's floor is 0.5, its aim 0.8).

Usage: .venv/bin/python bench/collate/run.py [--sessions 200 | --real COPIES] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import pyarrow.parquet as pq
from rich.console import Console
from rich.table import Table

from bench.common import machine, today, update_doc_section


def _rows(work: Path, sessions: int) -> list[dict[str, Any]]:
    """export-sft's rows of a synthetic corpus (the collate stage's own input)."""
    from pipeline.core.runner import Runner, RunOptions
    from pipeline.core.sources import SourceSpec
    from pipeline.stages.registry import load_stages
    from pipeline.synth import synthesize

    corpus = work / "corpus"
    synthesize(corpus, sessions, 11, "claude-code")
    root = work / "lake"
    result = Runner(load_stages(["export-sft"]), RunOptions(root=root, sources=[SourceSpec("claude-code", corpus)])
                    ).run(["export-sft"])
    columns = ["task_id", "session_id", "split", "messages", "tools"]
    return list(pq.read_table(root / result.summary.tables["sft"].path, columns=columns).to_pylist())


def _real_rows(work: Path, copies: int) -> list[dict[str, Any]]:
    """export-sft's rows of teich's real Claude Code session (fetched at bench time, never
    committed: it holds real paths and names), repeated ``copies`` times. Copies with
    fresh ids would be deduplicated by export-sft, so the rows themselves are repeated,
    each copy's messages marked with its number (every text, every tool call's
    arguments): collate encodes a recurring piece of a render once per worker, so
    identical copies would measure a cache. The tool list stays the same in every copy,
    as it does across a user's real sessions."""
    from bench.secrets.run import teich_session
    from pipeline.core.runner import Runner, RunOptions
    from pipeline.core.sources import SourceSpec
    from pipeline.stages.registry import load_stages

    corpus = work / "real" / "-home-user-project"
    corpus.mkdir(parents=True)
    session = teich_session(work)
    (corpus / session.name).write_bytes(session.read_bytes())
    root = work / "real-lake"
    # Every session of one file would fall in one split: keep all of them for the bench.
    config = {"export-sft": {"valid_fraction": 0.0}}
    result = Runner(load_stages(["export-sft"]), RunOptions(root=root, sources=[SourceSpec("claude-code", corpus)],
                                                            stage_config=config)).run(["export-sft"])
    columns = ["task_id", "session_id", "split", "messages", "tools"]
    rows = list(pq.read_table(root / result.summary.tables["sft"].path, columns=columns).to_pylist())
    return [{**row, "messages": _marked(row["messages"], copy)} for copy in range(copies) for row in rows]


def _marked(messages_json: str, copy: int) -> str:
    messages = json.loads(messages_json)
    for message in messages:
        for key in ("content", "reasoning_content"):
            if isinstance(message.get(key), str) and message[key]:
                message[key] += f" [{copy}]"
        for call in message.get("tool_calls") or []:
            arguments = call.get("function", {}).get("arguments")
            if isinstance(arguments, dict):
                arguments["copy"] = copy
    return json.dumps(messages, ensure_ascii=False)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sessions", type=int, default=200)
    parser.add_argument("--real", type=int, default=0, metavar="COPIES",
                        help="Instead of the synthetic corpus: teich's real session's SFT rows, this many times.")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2, help="Collate worker processes (the stage's --workers).")
    parser.add_argument("--write-doc", action="store_true")
    args = parser.parse_args()

    import functools

    from pipeline.collate.jobs import Job, WorkerSetup, collate_all
    from pipeline.collate.masks import Renderer
    from pipeline.collate.tokenizer import build_offline_qwen, choose_template, load_tokenizer

    console = Console()
    with tempfile.TemporaryDirectory(prefix="tracelake-bench-collate-") as scratch:
        work = Path(scratch)
        rows = _real_rows(work, args.real) if args.real else _rows(work, args.sessions)
        folder = work / "qwen"
        build_offline_qwen(folder)
        tokenizer = load_tokenizer(folder)
        renderer = Renderer(tokenizer, choose_template(tokenizer))
        jobs = [Job("sft", row) for row in rows]
        setup = WorkerSetup(str(folder), renderer.template, {}, functools.partial(Path, folder), 1 << 30)
        texts = [renderer.text(json.loads(r["messages"]), json.loads(r["tools"]) or None, False) for r in rows]
        baseline_tokens = sum(len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"])
        best_collate = best_bare = float("inf")
        collated_tokens = refused = 0
        for _ in range(args.rounds):
            start = time.perf_counter()
            done = list(collate_all(renderer, jobs, len(jobs), setup, args.workers, lambda items, total: iter(items)))
            best_collate = min(best_collate, time.perf_counter() - start)
            collated_tokens = sum(d.masks[0][0] for d in done if d.row is not None)
            refused = sum(d.row is None for d in done)
            start = time.perf_counter()
            tokenizer(texts, add_special_tokens=False)
            best_bare = min(best_bare, time.perf_counter() - start)
    collate_rate = collated_tokens / best_collate
    bare_rate = baseline_tokens / best_bare
    table = Table(title=f"collate ({args.workers} workers) vs tokenizer(texts), {len(rows)} conversations")
    for column in ("side", "tokens", "best s", "tokens/s"):
        table.add_column(column, justify="right")
    table.add_row("collate", f"{collated_tokens:,}", f"{best_collate:.3f}", f"{collate_rate:,.0f}")
    table.add_row("bare encode", f"{baseline_tokens:,}", f"{best_bare:.3f}", f"{bare_rate:,.0f}")
    console.print(table)
    ratio = collate_rate / bare_rate
    console.print(f"ratio collate/bare: {ratio:.2f} (floor 0.50, aim 0.80); refused {refused}")
    if args.write_doc:
        info = machine()
        update_doc_section("collate", "\n".join([
            f"Measured {today()} on {info.get('cpu', '?')} ({info.get('nproc', '?')} cores): "
            f"`.venv/bin/python bench/collate/run.py --sessions {args.sessions} --rounds {args.rounds} "
            f"--workers {args.workers}` (worker start-up included).",
            "",
            "| side | tokens | best s | tokens/s |",
            "|---|---:|---:|---:|",
            f"| collate, {args.workers} workers (every prefix rendered, all proofs) | {collated_tokens:,} "
            f"| {best_collate:.3f} "
            f"| {collate_rate:,.0f} |",
            f"| `tokenizer(texts)` batch encode | {baseline_tokens:,} | {best_bare:.3f} | {bare_rate:,.0f} |",
            "",
            f"Ratio **{ratio:.2f}** (floor 0.50, aim 0.80).",
        ]))


if __name__ == "__main__":
    main()
