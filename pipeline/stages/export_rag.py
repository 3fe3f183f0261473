"""export-rag: one playbook document per accepted (or partially accepted) task.

A playbook is what a retrieval system hands an agent facing a similar request: the
prompt, the steps taken (tools and their key arguments), the files touched and the final
answer, with provenance back to the session file. Rejected work never becomes a playbook.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from pipeline.core.stage import ExportContext, Stage, StageContext, StageResult
from pipeline.export.card import Config, Split, write_card
from pipeline.export.common import (
    SCORER_VERSION,
    Quarantine,
    dumps,
    frame,
    loads,
    output_table,
    row_id,
)
from pipeline.export.dedupe import DedupeConfig, Deduper
from pipeline.export.firewall import (
    FieldScan,
    file_matches,
    identity_errors,
    read_jsonl,
    render_jsonl,
    secret_kinds_many,
    write_bytes,
)
from pipeline.export.inputs import EXPORT_INPUTS, load_inputs, select_candidates
from pipeline.secrets import scanner_versions
from schemas.datasets import RAG
from schemas.tables import from_columns

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


def truncate_steps(steps: list[dict[str, Any]], max_steps: int) -> list[dict[str, Any]]:
    if len(steps) > max_steps:
        return steps[:max_steps] + [{"tool": "…", "args": {"more_steps": len(steps) - max_steps}}]
    return steps


def render(prompt: str, steps: list[dict[str, Any]], touched: list[str], answer: str) -> str:
    lines = ["## Task", prompt.strip(), "", "## Steps"]
    for i, step in enumerate(steps, start=1):
        args = ", ".join(f"{k}={v}" for k, v in step["args"].items())
        lines.append(f"{i}. {step['tool']}" + (f" ({args})" if args else ""))
    if touched:
        lines += ["", "## Files touched", *(f"- {p}" for p in touched)]
    lines += ["", "## Answer", answer.strip()]
    return "\n".join(lines)


def run(ctx: StageContext[ExportRagConfig]) -> StageResult:
    config = ctx.config
    quarantine = Quarantine("export-rag")
    filtered: Counter[str] = Counter()
    inputs = load_inputs(ctx, ["source_kind", "copied_context", "final_answer", "steps", "files_touched"])
    candidates = select_candidates(
        inputs, allowed_categories(config.include_review), quarantine,
        unsafe=("unsafe_rag_category", frozenset({"rejected"})),
    )
    tasks = frame(ctx, "tasks", columns=["task_id", "source_file", "cwd", "prompt_text"])
    candidates = candidates.join(tasks, on="task_id", how="left")
    candidates = candidates.sort("session_id", "prompt_number", "task_id")
    docs: list[dict[str, Any]] = []
    for task in candidates.to_dicts():
        task_id, session_id = task["task_id"], task["session_id"]
        steps = loads(task["steps"])
        if not task["source_file"] or not session_id:
            quarantine.add("missing_provenance", task_id, session_id, "no source_file")
            continue
        prompt, answer = task["prompt_text"] or "", task["final_answer"]
        if not prompt.strip() or (not answer.strip() and not steps):
            quarantine.add("empty_content", task_id, session_id, "no answer and no steps")
            continue
        if task["copied_context"]:
            quarantine.add("copied_context", task_id, session_id, None)
            continue
        steps = truncate_steps(steps, config.max_steps)
        touched = list(task["files_touched"])
        docs.append({
            "doc_id": row_id(task_id, "rag"),
            "task_id": task_id,
            "session_id": session_id,
            "source_file": task["source_file"],
            "source_kind": task["source_kind"],
            "category": task["category"],
            "scorer_version": SCORER_VERSION,
            "cwd": task["cwd"],
            "prompt": prompt,
            "steps": dumps(steps),
            "files_touched": touched,
            "final_answer": answer,
            "text": render(prompt, steps, touched, answer),
        })
    kinds = secret_kinds_many([d["text"] for d in docs])
    for doc, k in zip(docs, kinds, strict=True):
        if k:
            quarantine.add("secret_detected", doc["task_id"], doc["session_id"], ",".join(k))
    docs = [d for d, k in zip(docs, kinds, strict=True) if not k]
    dd = Deduper(config.dedupe).run([(d["task_id"], d["text"]) for d in docs])
    filtered["exact_duplicate"] += len(dd.exact)
    filtered["near_duplicate"] += len(dd.near)
    docs = [d for d in docs if d["task_id"] not in dd.exact and d["task_id"] not in dd.near]
    docs.sort(key=lambda d: (d["session_id"], d["task_id"]))  # the table's order: no re-sort
    return StageResult(
        tables={"rag": from_columns(RAG, {n: [d[n] for d in docs] for n in RAG.schema.names}),
                "quarantine": quarantine.table()},
        records_in=inputs.scores.height,
        records_out=len(docs),
        quarantined=dict(quarantine.counts),
        filtered={k: v for k, v in filtered.items() if v},
        stats={
            "include_review": config.include_review,
            "categories": dict(sorted(Counter(d["category"] for d in docs).items())),
        },
    )


def materialize(ctx: ExportContext[ExportRagConfig]) -> None:
    table = output_table(ctx, "rag")
    write_bytes(ctx.export_dir / "rag" / PLAYBOOKS, render_jsonl(table, ("steps",)))
    write_card(
        ctx.export_dir / "rag", "tracelake RAG playbooks",
        "One Markdown document per accepted agent task (`text`: the task, the steps that worked, "
        "the answer), with its provenance, for retrieval.",
        [Config("default", [Split("train", PLAYBOOKS, table.num_rows)])],
        table.schema, {"steps": "the tool calls that worked, in order, as objects"},
        STAGE_NAME, VERSION, [ctx.outputs["rag"]],
    )


STAGE_NAME, VERSION = "export-rag", "1.4.0"


def _check_rows(where: str, rows: list[dict[str, Any]], allowed: set[str], ids: set[str],
                scan: FieldScan) -> list[str]:
    errors: list[str] = []
    seen: set[str] = set()
    for r in rows:
        key = str(r.get("doc_id") or r.get("task_id") or "?")
        if r.get("category") == "rejected" or r.get("category") not in allowed:
            errors.append(f"{where}: {key}: category {r.get('category')!r} not allowed in RAG")
        if not (r.get("task_id") and r.get("session_id") and r.get("source_file")):
            errors.append(f"{where}: {key}: missing provenance")
        errors += identity_errors(where, key, "doc_id", seen, ids, "rag")
        scan.add_text(where, key, "text", r.get("text"), check_tokens=False)
        scan.add_text(where, key, "prompt", r.get("prompt"), check_tokens=False)
    return errors


def validate(ctx: ExportContext[ExportRagConfig]) -> list[str]:
    config = ctx.config
    allowed = allowed_categories(config.include_review)
    errors: list[str] = []
    scan = FieldScan()
    table = output_table(ctx, "rag")
    table_rows = table.to_pylist()
    ids = {r["doc_id"] for r in table_rows}
    errors += _check_rows("table rag", table_rows, allowed, ids, scan)
    path = ctx.export_dir / "rag" / PLAYBOOKS
    if not path.exists():
        errors.append(f"missing export file {path}")
    elif not file_matches(path, render_jsonl(table, ("steps",))):
        rows = read_jsonl(path)
        errors += _check_rows(PLAYBOOKS, rows, allowed, ids, scan)
        if len(rows) != len(table_rows):
            errors.append(f"{PLAYBOOKS} holds {len(rows)} rows, the table {len(table_rows)}")
    errors += scan.errors()
    ctx.secret_rescan = scan.report()
    return errors


STAGE = Stage(
    name=STAGE_NAME,
    version=VERSION,
    engines=scanner_versions,
    config_model=ExportRagConfig,
    inputs=EXPORT_INPUTS,
    outputs=(RAG,),
    run=run,
    materialize=materialize,
    validate=validate,
)
