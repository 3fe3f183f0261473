"""export-rag: one playbook document per accepted (or partially accepted) task.

A playbook is what a retrieval system hands an agent facing a similar request: the
prompt, the steps taken (tools and their key arguments), the files touched and the final
answer, with provenance back to the session file. Rejected work never becomes a playbook.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import polars as pl
from pydantic import BaseModel, ConfigDict, Field

from pipeline.core.stage import ExportContext, Stage, StageContext, StageResult
from pipeline.export.common import SCORER_VERSION, Quarantine, dumps, loads, row_id, to_table
from pipeline.export.conversation import Conversation
from pipeline.export.dedupe import DedupeConfig, Deduper
from pipeline.export.firewall import ViolationScan, read_jsonl, scan_texts, write_jsonl
from pipeline.export.inputs import EXPORT_INPUTS, load_inputs, split_known
from pipeline.export.tools import files_touched, key_args
from schemas.datasets import RAG

PLAYBOOKS = "playbooks.jsonl"


class ExportRagConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    include_review: bool = Field(
        False, description="Opt in: needs_human_review tasks may become playbooks."
    )
    max_steps: int = Field(50, ge=1, description="Steps listed per playbook (the rest counted).")
    dedupe: DedupeConfig = Field(default_factory=DedupeConfig)


def allowed_categories(include_review: bool) -> set[str]:
    base = {"accepted", "partially_accepted"}
    return base | {"needs_human_review"} if include_review else base


def playbook(conv: Conversation, max_steps: int) -> tuple[list[dict[str, Any]], list[str]]:
    steps = [{"tool": name, "args": key_args(name, args)} for name, args in conv.calls]
    if len(steps) > max_steps:
        steps = steps[:max_steps] + [{"tool": "…", "args": {"more_steps": len(steps) - max_steps}}]
    touched: list[str] = []
    for name, args in conv.calls:
        for path in files_touched(name, args):
            if path not in touched:
                touched.append(path)
    return steps, touched


def render(prompt: str, steps: list[dict[str, Any]], touched: list[str], answer: str) -> str:
    lines = ["## Task", prompt.strip(), "", "## Steps"]
    for i, step in enumerate(steps, start=1):
        args = ", ".join(f"{k}={v}" for k, v in step["args"].items())
        lines.append(f"{i}. {step['tool']}" + (f" ({args})" if args else ""))
    if touched:
        lines += ["", "## Files touched", *(f"- {p}" for p in touched)]
    lines += ["", "## Answer", answer.strip()]
    return "\n".join(lines)


def run(ctx: StageContext) -> StageResult:
    config: ExportRagConfig = ctx.config  # type: ignore[assignment]
    quarantine = Quarantine("export-rag")
    filtered: Counter[str] = Counter()
    inputs = load_inputs(ctx)
    allowed = allowed_categories(config.include_review)
    candidates, category_of = [], {}
    for task_id, session_id, category in inputs.scores.select("task_id", "session_id", "category").iter_rows():
        category_of[task_id] = category
        if category in allowed:
            candidates.append(task_id)
        else:
            quarantine.add("category_disallowed", task_id, session_id, category)
    candidates = split_known(inputs, candidates, quarantine)
    convs = inputs.conversations(set(candidates), keep_thinking=False)
    tasks = inputs.attached.tasks.filter(pl.col("task_id").is_in(candidates)).sort("session_id", "prompt_number")
    docs: list[dict[str, Any]] = []
    for task in tasks.iter_rows(named=True):
        conv = convs[task["task_id"]]
        steps, touched = playbook(conv, config.max_steps)
        if not task["source_file"] or not task["session_id"]:
            quarantine.add("missing_provenance", task["task_id"], task["session_id"], "no source_file")
            continue
        if not task["prompt_text"].strip() or (not conv.final_answer.strip() and not steps):
            quarantine.add("empty_content", task["task_id"], task["session_id"], "no answer and no steps")
            continue
        if conv.copied_context:
            quarantine.add("copied_context", task["task_id"], task["session_id"], None)
            continue
        text = render(task["prompt_text"], steps, touched, conv.final_answer)
        docs.append({
            "doc_id": row_id(task["task_id"], "rag"),
            "task_id": task["task_id"],
            "session_id": task["session_id"],
            "source_file": task["source_file"],
            "source_kind": task["source_kind"],
            "category": category_of[task["task_id"]],
            "scorer_version": SCORER_VERSION,
            "cwd": task["cwd"],
            "prompt": task["prompt_text"],
            "steps": dumps(steps),
            "files_touched": touched,
            "final_answer": conv.final_answer,
            "text": text,
        })
    kinds, _ = scan_texts([d["text"] for d in docs], check_tokens=False)
    for doc, k in zip(docs, kinds, strict=True):
        if k:
            quarantine.add("secret_detected", doc["task_id"], doc["session_id"], ",".join(k))
    docs = [d for d, k in zip(docs, kinds, strict=True) if not k]
    deduper = Deduper(config.dedupe.threshold, config.dedupe.num_perm, config.dedupe.seed,
                      config.dedupe.max_chars)
    dd = deduper.run([(d["task_id"], d["text"]) for d in docs])
    filtered["exact_duplicate"] += len(dd.exact)
    filtered["near_duplicate"] += len(dd.near)
    docs = [d for d in docs if d["task_id"] not in dd.exact and d["task_id"] not in dd.near]
    return StageResult(
        tables={"rag": to_table(RAG, docs), "quarantine": quarantine.table()},
        records_in=inputs.scores.height,
        records_out=len(docs),
        quarantined=dict(quarantine.counts),
        filtered={k: v for k, v in filtered.items() if v},
        stats={
            "include_review": config.include_review,
            "categories": dict(sorted(Counter(d["category"] for d in docs).items())),
        },
    )


def materialize(ctx: ExportContext) -> None:
    rows = [{**r, "steps": loads(r["steps"])} for r in ctx.table("rag").to_pylist()]
    write_jsonl(ctx.export_dir / "rag" / PLAYBOOKS, rows)


def validate(ctx: ExportContext) -> list[str]:
    config: ExportRagConfig = ctx.config  # type: ignore[assignment]
    allowed = allowed_categories(config.include_review)
    errors: list[str] = []
    scan = ViolationScan()
    table_rows = ctx.table("rag").to_pylist()
    path = ctx.export_dir / "rag" / PLAYBOOKS
    sources = {"table rag": table_rows}
    if path.exists():
        sources[PLAYBOOKS] = read_jsonl(path)
    else:
        errors.append(f"missing export file {path}")
    ids = {r["doc_id"] for r in table_rows}
    for where, rows in sources.items():
        seen: set[str] = set()
        for r in rows:
            key = str(r.get("doc_id") or r.get("task_id") or "?")
            if r.get("category") == "rejected" or r.get("category") not in allowed:
                errors.append(f"{where}: {key}: category {r.get('category')!r} not allowed in RAG")
            if not (r.get("task_id") and r.get("session_id") and r.get("source_file")):
                errors.append(f"{where}: {key}: missing provenance")
            if key in seen:
                errors.append(f"{where}: {key}: duplicate doc_id")
            seen.add(key)
            if key not in ids:
                errors.append(f"{where}: {key}: row not in the rag table")
            scan.add(where, key, {"text": r.get("text"), "prompt": r.get("prompt")}, check_tokens=False)
    errors += scan.errors()
    if PLAYBOOKS in sources and len(sources[PLAYBOOKS]) != len(table_rows):
        errors.append(f"{PLAYBOOKS} holds {len(sources[PLAYBOOKS])} rows, the table {len(table_rows)}")
    return errors


STAGE = Stage(
    name="export-rag",
    version="1.0.0",
    config_model=ExportRagConfig,
    inputs=EXPORT_INPUTS,
    outputs=(RAG,),
    run=run,
    materialize=materialize,
    validate=validate,
)
