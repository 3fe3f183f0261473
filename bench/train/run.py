"""Benchmark: train's LoRA loop against TRL's SFTTrainer on the same work, in one process.

Same tiny Qwen3 (the offline Qwen vocabulary), same LoRA config (r 8, alpha 16, q/k/v/o),
same learning rate, same pre-tokenised rows (collate's input_ids and labels from a
synthetic corpus), packed to the same max length, batch 1, the same number of optimizer
steps, on the CPU. Each side counts the tokens it actually fed (TRL's through its data
collator). Prints tokens per second for both and the ratio (the issue's floor is 1.0,
its aim 1.5).

Usage: .venv/bin/python bench/train/run.py [--sessions 60] [--steps 20] [--rounds 2]
"""

from __future__ import annotations

import argparse
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


def _rows(work: Path, sessions: int, max_length: int) -> list[dict[str, Any]]:
    from pipeline.core.runner import Runner, RunOptions
    from pipeline.core.sources import SourceSpec
    from pipeline.stages.registry import load_stages
    from pipeline.synth import synthesize

    synthesize(work / "corpus", sessions, 13, "claude-code")
    result = Runner(load_stages(["collate"]), RunOptions(root=work / "lake", sources=[
        SourceSpec("claude-code", work / "corpus")])).run(["collate"])
    path = work / "lake" / result.summary.tables["collated_sft"].path
    rows = pq.read_table(path, columns=["input_ids", "labels"]).to_pylist()
    return [r for r in rows if len(r["input_ids"]) <= max_length]


def _ours(model_folder: Path, rows: list[dict[str, Any]], steps: int, max_length: int) -> tuple[int, float]:
    from pipeline.train.loop import TrainSettings, load_lora, train
    from pipeline.train.packing import pack

    settings = TrainSettings(max_steps=steps, pack_tokens=max_length, checkpoint_every=steps + 1)
    model = load_lora(model_folder, settings)
    packs = pack([(r["input_ids"], r["labels"]) for r in rows], max_length)
    start = time.perf_counter()
    done = train(model, packs, settings, lambda record: None, lambda state: None, None)
    return sum(s.tokens for s in done), time.perf_counter() - start


def _trl(model_folder: Path, rows: list[dict[str, Any]], steps: int, max_length: int, out: Path) -> tuple[int, float]:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(str(model_folder), local_files_only=True, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(model_folder), local_files_only=True)
    dataset = Dataset.from_list([{"input_ids": r["input_ids"], "labels": r["labels"]} for r in rows])
    config = SFTConfig(output_dir=str(out), max_steps=steps, per_device_train_batch_size=1, learning_rate=1e-3,
                       packing=True, max_length=max_length, use_cpu=True, report_to=[], save_strategy="no",
                       logging_steps=steps, lr_scheduler_type="cosine", seed=0, dataloader_num_workers=0,
                       bf16=False, fp16=False)
    trainer = SFTTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer,
                         peft_config=LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0,
                                                target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                                                task_type="CAUSAL_LM"))
    fed = [0]
    collate = trainer.data_collator

    def counting(features: list[dict[str, Any]]) -> Any:
        batch = collate(features)
        fed[0] += int(batch["input_ids"].numel())
        return batch

    trainer.data_collator = counting
    start = time.perf_counter()
    trainer.train()
    return fed[0], time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sessions", type=int, default=60)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--write-doc", action="store_true")
    args = parser.parse_args()

    from pipeline.collate.tokenizer import build_offline_qwen
    from pipeline.core.imports import quiet_transformers
    from pipeline.train.model import build_tiny_qwen3

    quiet_transformers()
    console = Console()
    with tempfile.TemporaryDirectory(prefix="tracelake-bench-train-") as scratch:
        work = Path(scratch)
        rows = _rows(work, args.sessions, args.max_length)
        build_offline_qwen(work / "tokenizer")
        build_tiny_qwen3(work / "model", work / "tokenizer")
        best: dict[str, tuple[int, float]] = {}
        for round_ in range(args.rounds):
            for side in ("ours", "trl"):
                tokens, seconds = (_ours(work / "model", rows, args.steps, args.max_length) if side == "ours"
                                   else _trl(work / "model", rows, args.steps, args.max_length, work / f"trl{round_}"))
                if side not in best or tokens / seconds > best[side][0] / best[side][1]:
                    best[side] = (tokens, seconds)
    table = Table(title=f"train vs TRL SFTTrainer: {len(rows)} rows, {args.steps} steps of <= {args.max_length} tokens")
    for column in ("side", "tokens", "best s", "tokens/s"):
        table.add_column(column, justify="right")
    rates = {side: tokens / seconds for side, (tokens, seconds) in best.items()}
    for side, (tokens, seconds) in best.items():
        table.add_row(side, f"{tokens:,}", f"{seconds:.2f}", f"{rates[side]:,.0f}")
    console.print(table)
    ratio = rates["ours"] / rates["trl"]
    console.print(f"ratio train/TRL: {ratio:.2f} (floor 1.0, aim 1.5)")
    if args.write_doc:
        info = machine()
        update_doc_section("train", "\n".join([
            f"Measured {today()} on {info.get('cpu', '?')} ({info.get('nproc', '?')} cores): "
            f"`.venv/bin/python bench/train/run.py --sessions {args.sessions} --steps {args.steps} "
            f"--rounds {args.rounds}` (tiny Qwen3, 151,669-token vocabulary, LoRA r 8 on q/k/v/o, CPU).",
            "",
            "| side | tokens | best s | tokens/s |",
            "|---|---:|---:|---:|",
            *(f"| {side} | {tokens:,} | {seconds:.2f} | {rates[side]:,.0f} |" for side, (tokens, seconds) in best.items()),
            "",
            f"Ratio **{ratio:.2f}** (floor 1.0, aim 1.5).",
        ]))


if __name__ == "__main__":
    main()
