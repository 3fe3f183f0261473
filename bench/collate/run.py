"""Benchmark: collate's throughput against a bare batch encode of the same texts.

Both sides get the same SFT conversations (a synthetic corpus run through export-sft,
plus teich's real Claude Code session when it can be fetched). Collate renders every
prefix, tokenises with offsets through ``apply_chat_template`` and proves each mask;
the baseline is ``tokenizer(texts)`` on the already rendered full conversations, in the
same process with the same tokenizer. Prints tokens per second for both and the ratio
(the issue's floor is 0.5, its aim 0.8).

Usage: .venv/bin/python bench/collate/run.py [--sessions 200] [--rounds 3]
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


def _conversations(work: Path, sessions: int) -> list[tuple[list[Any], list[Any] | None]]:
    from pipeline.core.runner import Runner, RunOptions
    from pipeline.core.sources import SourceSpec
    from pipeline.stages.registry import load_stages
    from pipeline.synth import synthesize

    corpus = work / "corpus"
    synthesize(corpus, sessions, 11, "claude-code")
    root = work / "lake"
    result = Runner(load_stages(["export-sft"]), RunOptions(root=root, sources=[SourceSpec("claude-code", corpus)])
                    ).run(["export-sft"])
    rows = pq.read_table(root / result.summary.tables["sft"].path, columns=["messages", "tools"]).to_pylist()
    return [(json.loads(r["messages"]), json.loads(r["tools"]) or None) for r in rows]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sessions", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--write-doc", action="store_true")
    args = parser.parse_args()

    from pipeline.collate.masks import Refused, Renderer, mask_conversation
    from pipeline.collate.tokenizer import build_offline_qwen, choose_template, load_tokenizer

    console = Console()
    with tempfile.TemporaryDirectory(prefix="tracelake-bench-collate-") as scratch:
        work = Path(scratch)
        conversations = _conversations(work, args.sessions)
        build_offline_qwen(work / "qwen")
        tokenizer = load_tokenizer(work / "qwen")
    renderer = Renderer(tokenizer, choose_template(tokenizer))
    texts = [renderer.text(m, t, False) for m, t in conversations]
    baseline_tokens = sum(len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"])
    best_collate = best_bare = float("inf")
    collated_tokens = refused = 0
    for _ in range(args.rounds):
        start = time.perf_counter()
        collated_tokens = refused = 0
        for messages, tools in conversations:
            try:
                collated_tokens += len(mask_conversation(renderer, messages, tools).input_ids)
            except Refused:
                refused += 1
        best_collate = min(best_collate, time.perf_counter() - start)
        start = time.perf_counter()
        tokenizer(texts, add_special_tokens=False)
        best_bare = min(best_bare, time.perf_counter() - start)
    collate_rate = collated_tokens / best_collate
    bare_rate = baseline_tokens / best_bare
    table = Table(title=f"collate vs tokenizer(texts), {len(conversations)} conversations")
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
            f"`.venv/bin/python bench/collate/run.py --sessions {args.sessions} --rounds {args.rounds}`.",
            "",
            "| side | tokens | best s | tokens/s |",
            "|---|---:|---:|---:|",
            f"| collate (render every prefix, offsets, all proofs) | {collated_tokens:,} | {best_collate:.3f} "
            f"| {collate_rate:,.0f} |",
            f"| `tokenizer(texts)` batch encode | {baseline_tokens:,} | {best_bare:.3f} | {bare_rate:,.0f} |",
            "",
            f"Ratio **{ratio:.2f}** (floor 0.50, aim 0.80).",
        ]))


if __name__ == "__main__":
    main()
