"""export-sft: accepted tasks as tool-calling conversations for supervised fine-tuning.

Every scored task enters; each leaves as one row, one quarantine reason or one filter
reason (count conservation). The firewall (``validate``) re-reads the table and the
exported files and fails the stage on any disallowed category, secret or template token.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from typing import Any

import polars as pl
import pyarrow.compute as pc
import pyarrow.parquet as pq
import xxhash
from pydantic import BaseModel, ConfigDict, Field

from pipeline.core.stage import ExportContext, Stage, StageContext, StageResult
from pipeline.export.common import SCORER_VERSION, Quarantine, dumps, loads, row_id, to_table
from pipeline.export.conversation import (
    Conversation,
    conversation_text,
    dominant_category,
    strip_tools,
)
from pipeline.export.dedupe import DedupeConfig, Deduper
from pipeline.export.firewall import (
    TEMPLATE_TOKENS,
    ViolationScan,
    read_jsonl,
    screen,
    write_jsonl,
)
from pipeline.export.inputs import EXPORT_INPUTS, load_inputs, split_known
from pipeline.export.tools import max_repeated_line, max_value_chars, missing_required
from schemas.datasets import SFT, TOOL_SCHEMAS

DEFAULT_SKIP_TOOLS = [
    "TodoWrite", "TodoRead", "ExitPlanMode", "EnterPlanMode", "update_plan",
    "TaskCreate", "TaskUpdate", "TaskList", "TaskGet",
]


class ExportSftConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    include_partial: bool = Field(
        False, description="Opt in: partially_accepted tasks may reach SFT (recorded in the receipt)."
    )
    keep_thinking: bool = Field(True, description="Keep thinking as reasoning_content.")
    skip_tools: list[str] = Field(
        default_factory=lambda: list(DEFAULT_SKIP_TOOLS),
        description="Tools whose calls (and results) are removed from rows.",
    )
    min_assistant_turns: int = Field(2, ge=1, description="Rows with fewer assistant turns are dropped.")
    max_arg_chars: int = Field(2000, ge=1, description="Rows with a longer argument value are dropped.")
    repeated_line_threshold: int = Field(
        3, ge=1, description="Rows with an argument line repeated more often are dropped."
    )
    category_cap: float = Field(
        0.2, gt=0, le=1, description="Max share of rows per tool (or Bash command) category."
    )
    cap_min_rows: int = Field(
        5, ge=0, description="The cap never cuts a category below this many rows (small corpora)."
    )
    valid_fraction: float = Field(0.05, ge=0, le=1, description="Share of sessions in valid.")
    seed: int = Field(42, description="Seed of the cap sampling and the split hash.")
    template_tokens: list[str] = Field(
        default_factory=lambda: list(TEMPLATE_TOKENS),
        description="Chat-template control tokens never allowed inside content.",
    )
    dedupe: DedupeConfig = Field(default_factory=DedupeConfig)


def allowed_categories(include_partial: bool) -> set[str]:
    return {"accepted", "partially_accepted"} if include_partial else {"accepted"}


def split_of(session_id: str, valid_fraction: float, seed: int) -> str:
    """Grouped by session: every row of a session lands on the same side."""
    bucket = xxhash.xxh3_64_intdigest(f"{seed}:{session_id}".encode()) % 1_000_000
    return "valid" if bucket < valid_fraction * 1_000_000 else "train"


def cap_limit(counts: dict[str, int], cap: float, min_rows: int) -> int:
    """Largest per-category limit k with k <= cap * (rows kept under k), floored at min_rows."""
    best = 0
    for k in range(1, max(counts.values(), default=0) + 1):
        kept = sum(min(c, k) for c in counts.values())
        if k <= math.floor(cap * kept + 1e-9):
            best = k
    return max(best, min_rows)


def _rank(seed: int, task_id: str) -> int:
    return xxhash.xxh3_64_intdigest(f"{seed}:{task_id}".encode())


def apply_cap(categories: dict[str, str], cap: float, min_rows: int, seed: int) -> set[str]:
    """task_ids dropped by the cap: per category, the seeded-hash tail beyond the limit."""
    groups: dict[str, list[str]] = defaultdict(list)
    for task_id, category in categories.items():
        groups[category].append(task_id)
    limit = cap_limit({c: len(v) for c, v in groups.items()}, cap, min_rows)
    dropped: set[str] = set()
    for members in groups.values():
        members.sort(key=lambda t: (_rank(seed, t), t))
        dropped.update(members[limit:])
    return dropped


def _check_row(conv: Conversation, config: ExportSftConfig, required: dict[str, list[str]],
               source_kind: str) -> tuple[str, str, str] | None:
    """(kind, reason, detail) for the first problem of a row; kind = quarantine|filtered."""
    if conv.n_assistant_turns == 0:
        return "quarantine", "empty_content", "no assistant turn"
    if conv.copied_context:
        return "quarantine", "copied_context", "compaction summary or copied history"
    if conv.n_assistant_turns < config.min_assistant_turns:
        return "filtered", "too_few_turns", str(conv.n_assistant_turns)
    for name, args in conv.calls:
        if missing_required(args, required.get(f"{source_kind}\0{name}", [])):
            return "filtered", "empty_arguments", name
    if conv.truncated_args or any(max_value_chars(a) > config.max_arg_chars for _, a in conv.calls):
        return "filtered", "long_argument", ""
    if any(max_repeated_line(a) > config.repeated_line_threshold for _, a in conv.calls):
        return "filtered", "repeated_lines", ""
    return None


def run(ctx: StageContext) -> StageResult:
    config: ExportSftConfig = ctx.config  # type: ignore[assignment]
    quarantine = Quarantine("export-sft")
    filtered: Counter[str] = Counter()
    inputs = load_inputs(ctx)
    schemas = inputs.schemas
    required = {f"{k}\0{n}": v["required"] for (k, n), v in schemas.items()}
    allowed = allowed_categories(config.include_partial)
    scored = inputs.scores.select("task_id", "session_id", "category")
    candidates: list[str] = []
    category_of: dict[str, str] = {}
    for task_id, session_id, category in scored.iter_rows():
        category_of[task_id] = category
        if category in allowed:
            candidates.append(task_id)
        else:
            quarantine.add("category_disallowed", task_id, session_id, category)
    candidates = split_known(inputs, candidates, quarantine)
    convs = inputs.conversations(set(candidates), config.keep_thinking)
    order = inputs.attached.tasks.filter(pl.col("task_id").is_in(candidates)).sort(
        "session_id", "prompt_number"
    )
    checked: list[Conversation] = []
    removed_calls = 0
    for task_id in order["task_id"].to_list():
        conv = convs[task_id]
        removed_calls += strip_tools(conv, set(config.skip_tools))
        problem = _check_row(conv, config, required, conv.source_kind)
        if problem is None:
            checked.append(conv)
        elif problem[0] == "quarantine":
            quarantine.add(problem[1], task_id, conv.session_id, problem[2])
        else:
            filtered[problem[1]] += 1
    survivors = screen(checked, quarantine, config.template_tokens)
    deduper = Deduper(config.dedupe.threshold, config.dedupe.num_perm, config.dedupe.seed,
                      config.dedupe.max_chars)
    dd = deduper.run([(c.task_id, conversation_text(c.messages)) for c in survivors])
    filtered["exact_duplicate"] += len(dd.exact)
    filtered["near_duplicate"] += len(dd.near)
    survivors = [c for c in survivors if c.task_id not in dd.exact and c.task_id not in dd.near]
    cap_cats = {c.task_id: dominant_category(c) for c in survivors}
    capped = apply_cap(cap_cats, config.category_cap, config.cap_min_rows, config.seed)
    filtered["category_cap"] += len(capped)
    rows = []
    for conv in survivors:
        if conv.task_id in capped:
            continue
        tools = inputs.tools_for(conv.source_kind, conv.tool_names)
        rows.append({
            "row_id": row_id(conv.task_id, "sft"),
            "task_id": conv.task_id,
            "session_id": conv.session_id,
            "source_kind": conv.source_kind,
            "category": category_of[conv.task_id],
            "scorer_version": SCORER_VERSION,
            "split": split_of(conv.session_id, config.valid_fraction, config.seed),
            "cap_category": cap_cats[conv.task_id],
            "messages": dumps(conv.messages),
            "tools": dumps(tools),
            "n_messages": len(conv.messages),
            "n_tool_calls": conv.n_tool_calls,
            "has_thinking": any("reasoning_content" in m for m in conv.messages),
        })
    schema_rows = [
        {"name": n, "source_kind": k, "n_calls": v["n_calls"], "required": v["required"],
         "tool_schema": dumps(v["schema"])}
        for (k, n), v in sorted(schemas.items())
    ]
    warnings = []
    if not config.keep_thinking:
        warnings.append("thinking stripped (keep_thinking=false): error-recovery turns lose their reasoning")
    filtered = Counter({k: v for k, v in filtered.items() if v})
    return StageResult(
        tables={"sft": to_table(SFT, rows), "tool_schemas": to_table(TOOL_SCHEMAS, schema_rows),
                "quarantine": quarantine.table()},
        records_in=scored.height,
        records_out=len(rows),
        quarantined=dict(quarantine.counts),
        filtered=dict(filtered),
        stats={
            "include_partial": config.include_partial,
            "keep_thinking": config.keep_thinking,
            "warnings": warnings,
            "splits": dict(Counter(r["split"] for r in rows)),
            "categories": dict(Counter(r["category"] for r in rows)),
            "cap_categories": dict(sorted(Counter(r["cap_category"] for r in rows).items())),
            "skip_tool_calls_removed": removed_calls,
            "tool_schemas": len(schema_rows),
        },
    )


# --- exports and firewall ---------------------------------------------------------------


def _jsonl_row(row: dict[str, Any]) -> dict[str, Any]:
    return {**row, "messages": loads(row["messages"]), "tools": loads(row["tools"])}


def materialize(ctx: ExportContext) -> None:
    out = ctx.export_dir / "sft"
    table = ctx.table("sft")
    for split in ("train", "valid"):
        part = table.filter(pc.equal(table["split"], split))
        out.mkdir(parents=True, exist_ok=True)
        pq.write_table(part, out / f"{split}.parquet", compression="zstd")
        write_jsonl(out / f"{split}.jsonl", (_jsonl_row(r) for r in part.to_pylist()))
    schemas = [loads(r["tool_schema"]) for r in ctx.table("tool_schemas").to_pylist()]
    write_jsonl(out / "tool_schemas.jsonl", schemas)


def _check_messages(where: str, key: str, messages: Any) -> list[str]:
    if not isinstance(messages, list) or not messages:
        return [f"{where}: {key}: messages is not a non-empty list"]
    errors = []
    for m in messages:
        if not isinstance(m, dict) or m.get("role") not in ("user", "assistant", "tool", "system"):
            errors.append(f"{where}: {key}: bad message {str(m)[:80]}")
            continue
        for call in m.get("tool_calls") or []:
            if not isinstance(call.get("function", {}).get("arguments"), dict):
                errors.append(f"{where}: {key}: tool call arguments are not an object")
    return errors


def validate(ctx: ExportContext) -> list[str]:
    config: ExportSftConfig = ctx.config  # type: ignore[assignment]
    allowed = allowed_categories(config.include_partial)
    errors: list[str] = []
    scan = ViolationScan(config.template_tokens)
    table_rows = ctx.table("sft").to_pylist()
    sources: dict[str, list[dict[str, Any]]] = {"table sft": table_rows}
    out = ctx.export_dir / "sft"
    for split in ("train", "valid"):
        for suffix in ("jsonl", "parquet"):
            path = out / f"{split}.{suffix}"
            if not path.exists():
                errors.append(f"missing export file {path}")
                continue
            if suffix == "jsonl":
                sources[path.name] = read_jsonl(path)
            else:
                sources[path.name] = [_jsonl_row(r) for r in pq.read_table(path).to_pylist()]
    table_ids = {r["row_id"] for r in table_rows}
    sides: dict[str, set[str]] = defaultdict(set)
    for where, rows in sources.items():
        seen: set[str] = set()
        for r in rows:
            key = str(r.get("row_id") or r.get("task_id") or "?")
            if r.get("category") not in allowed:
                errors.append(f"{where}: {key}: category {r.get('category')!r} not allowed in SFT")
            if not r.get("task_id") or not r.get("session_id"):
                errors.append(f"{where}: {key}: missing provenance")
            if key in seen:
                errors.append(f"{where}: {key}: duplicate row_id")
            seen.add(key)
            if key not in table_ids:
                errors.append(f"{where}: {key}: row not in the sft table")
            split = r.get("split")
            if where.endswith((".jsonl", ".parquet")) and not where.startswith(str(split)):
                errors.append(f"{where}: {key}: split {split!r} in the wrong file")
            sides[str(r.get("session_id"))].add(str(split))
            messages = loads(r["messages"]) if isinstance(r.get("messages"), str) else r.get("messages")
            tools = loads(r["tools"]) if isinstance(r.get("tools"), str) else r.get("tools")
            errors += _check_messages(where, key, messages)
            scan.add(where, key, {"messages": messages, "tools": tools})
    n_files = sum(len(v) for k, v in sources.items() if k.endswith(".jsonl"))
    if n_files != len(table_rows):
        errors.append(f"sft jsonl files hold {n_files} rows, the table {len(table_rows)}")
    errors += scan.errors()
    errors += [f"session {s} is on both sides of the split" for s, v in sorted(sides.items()) if len(v) > 1]
    return errors


STAGE = Stage(
    name="export-sft",
    version="1.0.0",
    config_model=ExportSftConfig,
    inputs=EXPORT_INPUTS,
    outputs=(SFT, TOOL_SCHEMAS),
    run=run,
    materialize=materialize,
    validate=validate,
)
