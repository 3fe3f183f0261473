"""export-sft: accepted tasks as tool-calling conversations for supervised fine-tuning.

Every scored task enters; each leaves as one row, one quarantine reason or one filter
reason (count conservation). The firewall (``validate``) re-reads the table and the
exported files and fails the stage on any disallowed category, secret or template token.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import xxhash
from pydantic import BaseModel, ConfigDict, Field

from pipeline.core.stage import ExportContext, Stage, StageContext, StageResult
from pipeline.export.card import Config, Split, write_card
from pipeline.export.common import (
    SCORER_VERSION,
    Quarantine,
    dumps,
    input_table,
    loads,
    output_table,
    read_table,
    row_id,
)
from pipeline.export.dedupe import DEFAULT_SIGNATURE, DedupeConfig
from pipeline.export.firewall import (
    TEMPLATE_TOKENS,
    FieldScan,
    file_matches,
    identity_errors,
    read_jsonl,
    render_jsonl,
    screen_quarantine,
    write_bytes,
    write_jsonl,
)
from pipeline.export.inputs import (
    EXPORT_INPUTS,
    MESSAGES,
    ExportInputs,
    dedupe_rows,
    known_clean_mask,
    load_inputs,
    run_conversations,
    select_candidates,
    transform_rows,
)
from pipeline.export.nested import flat_row, nested_sft
from pipeline.secrets import scanner_versions
from schemas.datasets import SFT, TOOL_SCHEMAS
from schemas.tables import from_columns

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


def _check_row(row: dict[str, Any], config: ExportSftConfig) -> tuple[str, str, str] | None:
    """(kind, reason, detail) for the first problem of a row; kind = quarantine|filtered."""
    turns = row["n_assistant_turns"]
    if turns == 0:
        return "quarantine", "empty_content", "no assistant turn"
    if row["copied_context"]:
        return "quarantine", "copied_context", "compaction summary or copied history"
    if turns < config.min_assistant_turns:
        return "filtered", "too_few_turns", str(turns)
    if row["empty_args_tool"] is not None:
        return "filtered", "empty_arguments", row["empty_args_tool"]
    if row["truncated_args"] or row["max_arg_chars"] > config.max_arg_chars:
        return "filtered", "long_argument", ""
    if row["max_repeated_line"] > config.repeated_line_threshold:
        return "filtered", "repeated_lines", ""
    if row.get("skip_dependent"):  # its turns talk about a skip-listed call it no longer has
        return "filtered", "skipped_tool_turns", ""
    return None


_CONV_COLUMNS = [
    "source_kind", "prompt", "completion", "tool_names", "n_messages", "n_tool_calls",
    "n_assistant_turns", "has_thinking", "copied_context", "truncated_args", "max_arg_chars",
    "max_repeated_line", "empty_args_tool", "cap_category", "secret_kinds", "template_token",
    "text_digest", "minhash",
]


def run(ctx: StageContext[ExportSftConfig]) -> StageResult:
    config = ctx.config
    quarantine = Quarantine("export-sft")
    filtered: Counter[str] = Counter()
    inputs = load_inputs(ctx, _CONV_COLUMNS)
    candidates = select_candidates(
        inputs, allowed_categories(config.include_partial), quarantine,
        unsafe=("unsafe_sft_category", frozenset({"rejected", "needs_human_review"})),
    )
    inputs.fetch(candidates["_c"].to_list())
    tokens = tuple(config.template_tokens)
    params_differ = config.dedupe.signature_params() != DEFAULT_SIGNATURE
    rows, removed_calls = transform_rows(
        candidates.to_dicts(), inputs, config.keep_thinking, set(config.skip_tools), tokens,
        rebuild_all=tokens != TEMPLATE_TOKENS or params_differ,
    )
    for row in rows:
        row["split"] = split_of(row["session_id"], config.valid_fraction, config.seed)
    checked = []
    for row in rows:
        problem = _check_row(row, config)
        if problem is None:
            checked.append(row)
        elif problem[0] == "quarantine":
            quarantine.add(problem[1], row["task_id"], row["session_id"], problem[2])
        else:
            filtered[problem[1]] += 1
    keep = screen_quarantine([(r["task_id"], r["session_id"]) for r in checked],
                             [r["secret_kinds"] for r in checked], [r["template_token"] for r in checked],
                             quarantine)
    survivors = [r for r, ok in zip(checked, keep, strict=True) if ok]
    dd = dedupe_rows(survivors, inputs, config.dedupe)
    filtered["exact_duplicate"] += len(dd.exact)
    filtered["near_duplicate"] += len(dd.near)
    survivors = [r for r in survivors if r["task_id"] not in dd.exact and r["task_id"] not in dd.near]
    cap_cats = {r["task_id"]: r["cap_category"] for r in survivors}
    capped = apply_cap(cap_cats, config.category_cap, config.cap_min_rows, config.seed)
    filtered["category_cap"] += len(capped)
    # Rows in the table's sort order, so the runner's canonical sort never moves messages.
    final = sorted((r for r in survivors if r["task_id"] not in capped),
                   key=lambda r: (r["split"], r["session_id"], r["task_id"]))
    out: dict[str, list[Any]] = {name: [] for name in SFT.schema.names if name != "messages"}
    for r in final:
        values = {
            "row_id": row_id(r["task_id"], "sft"),
            "task_id": r["task_id"],
            "session_id": r["session_id"],
            "source_kind": r["source_kind"],
            "category": r["category"],
            "scorer_version": SCORER_VERSION,
            "split": r["split"],
            "cap_category": r["cap_category"],
            "tools": inputs.tools_json(r["source_kind"], r["tool_names"]),
            "n_messages": r["n_messages"],
            "n_tool_calls": r["n_tool_calls"],
            "has_thinking": r["has_thinking"],
        }
        for name, value in values.items():
            out[name].append(value)
    sft = from_columns(SFT, {**out, "messages": [""] * len(final)})
    sft = sft.set_column(SFT.schema.get_field_index("messages"), SFT.schema.field("messages"),
                         messages_column(final, inputs))
    warnings = []
    if not config.keep_thinking:
        warnings.append("thinking stripped (keep_thinking=false): error-recovery turns lose their reasoning")
    filtered = Counter({k: v for k, v in filtered.items() if v})
    tool_schemas = input_table(ctx, "tool_specs")
    return StageResult(
        tables={"sft": sft, "tool_schemas": tool_schemas,
                "quarantine": quarantine.table()},
        records_in=inputs.scores.height,
        records_out=len(out["row_id"]),
        quarantined=dict(quarantine.counts),
        filtered=dict(filtered),
        stats={
            "include_partial": config.include_partial,
            "keep_thinking": config.keep_thinking,
            "warnings": warnings,
            "splits": dict(Counter(out["split"])),
            "categories": dict(Counter(out["category"])),
            "cap_categories": dict(sorted(Counter(out["cap_category"]).items())),
            "skip_tool_calls_removed": removed_calls,
            "tool_schemas": tool_schemas.num_rows,
        },
    )


def messages_column(rows: list[dict[str, Any]], inputs: ExportInputs) -> pa.ChunkedArray:
    """SFT ``messages`` JSON per row: prompt + completion joined in Arrow (the stored
    halves, spliced as ``join_messages`` does), a rebuilt row's own JSON in its place."""
    index = pa.array([inputs.index(r["_c"]) for r in rows], pa.int64())
    large = inputs.large
    prompt = large["prompt"].take(index).combine_chunks().cast(pa.large_string())
    completion = large["completion"].take(index).combine_chunks().cast(pa.large_string())
    head = pc.utf8_slice_codeunits(prompt, 0, -1)
    tail = pc.utf8_slice_codeunits(completion, 1)
    joined = pc.binary_join_element_wise(head, tail, pa.scalar(",", pa.large_string()))
    only_prompt = pc.equal(completion, pa.scalar("[]", pa.large_string()))
    joined = pc.if_else(only_prompt, prompt, joined)
    joined = pc.if_else(pc.equal(prompt, pa.scalar("[]", pa.large_string())), completion, joined)
    rebuilt = [i for i, r in enumerate(rows) if r["rebuilt"]]
    if rebuilt:
        mask = np.zeros(len(rows), dtype=bool)
        mask[rebuilt] = True
        values = pa.array([dumps(rows[i]["messages"]) for i in rebuilt], pa.large_string())
        joined = pc.replace_with_mask(joined, pa.array(mask), values)
    return pa.chunked_array([joined.cast(SFT.schema.field("messages").type)])


# --- exports and firewall ---------------------------------------------------------------

_JSON_FIELDS = ("messages", "tools")


def _split(table: pa.Table, split: str) -> pa.Table:
    return table.filter(pc.equal(table["split"], split))


def materialize(ctx: ExportContext[ExportSftConfig]) -> None:
    out = ctx.export_dir / "sft"
    out.mkdir(parents=True, exist_ok=True)
    table = output_table(ctx, "sft")
    rows = {}
    for split in ("train", "valid"):
        part = _split(table, split)
        rows[split] = part.num_rows
        pq.write_table(nested_sft(part), out / f"{split}.parquet", compression="zstd")
        write_bytes(out / f"{split}.jsonl", render_jsonl(part, _JSON_FIELDS))
    schemas = [loads(r) for r in output_table(ctx, "tool_schemas")["tool_schema"].to_pylist()]
    write_jsonl(out / "tool_schemas.jsonl", schemas)
    write_card(
        out, "tracelake SFT conversations",
        "Accepted agent tasks as chat conversations with tool calls, in the `messages` + `tools` "
        "form TRL's SFTTrainer and chat templates take. The `.parquet` files hold the same rows "
        "nested (`messages` a list of structs; tool-call `arguments` and `tools` as JSON).",
        [Config("default", [Split("train", "train.jsonl", rows["train"]),
                            Split("validation", "valid.jsonl", rows["valid"])]),
         Config("tool_schemas", [Split("train", "tool_schemas.jsonl", len(schemas))])],
        table.schema, _CARD_NOTES, STAGE_NAME, VERSION,
        [ctx.outputs["sft"], ctx.outputs["tool_schemas"]],
    )


STAGE_NAME, VERSION = "export-sft", "1.4.0"
_CARD_NOTES = {
    "messages": "the conversation: a list of {role, content, reasoning_content?, tool_calls?, "
                "tool_call_id?, name?}; tool-call `arguments` are JSON objects",
    "tools": "the tools the conversation uses, as OpenAI function schemas",
    "split": "train or valid, by session (a session is never on both sides)",
}


def _check_messages(where: str, key: str, messages: Any) -> list[str]:
    if not isinstance(messages, list) or not messages:
        return [f"{where}: {key}: messages is not a non-empty list"]
    errors = []
    for m in messages:
        if not isinstance(m, dict) or m.get("role") not in ("user", "assistant", "tool", "system"):
            errors.append(f"{where}: {key}: bad message {str(m)[:80]}")
            continue
        for call in m.get("tool_calls") or []:
            if not isinstance(call, dict) or not isinstance(call.get("function", {}).get("arguments"), dict):
                errors.append(f"{where}: {key}: tool call arguments are not an object")
    return errors


def _check_rows(where: str, rows: list[dict[str, Any]], allowed: set[str], table_ids: set[str],
                scan: FieldScan, sides: dict[str, set[str]], known: list[bool] | None = None) -> list[str]:
    """Row checks for one source (the table, or a file that differs from it). ``known``
    marks rows whose messages are byte-identical to a conversation score built and scanned
    clean: well formed by construction, so neither parsed nor rescanned."""
    errors: list[str] = []
    seen: set[str] = set()
    is_file = where.endswith((".jsonl", ".parquet"))
    known = known or [False] * len(rows)
    for r, is_known in zip(rows, known, strict=True):
        key = str(r.get("row_id") or r.get("task_id") or "?")
        if r.get("category") not in allowed:
            errors.append(f"{where}: {key}: category {r.get('category')!r} not allowed in SFT")
        if not r.get("task_id") or not r.get("session_id"):
            errors.append(f"{where}: {key}: missing provenance")
        errors += identity_errors(where, key, "row_id", seen, table_ids, "sft")
        split = r.get("split")
        if is_file and not where.startswith(str(split)):
            errors.append(f"{where}: {key}: split {split!r} in the wrong file")
        sides[str(r.get("session_id"))].add(str(split))
        messages = r.get("messages")
        if not is_known:
            parsed = loads(messages) if isinstance(messages, str) else messages
            errors += _check_messages(where, key, parsed)
            scan.add(where, key, "messages", messages)
        scan.add(where, key, "tools", r.get("tools"))
    return errors


def validate(ctx: ExportContext[ExportSftConfig]) -> list[str]:
    config = ctx.config
    allowed = allowed_categories(config.include_partial)
    errors: list[str] = []
    tokens = tuple(config.template_tokens)
    scan = FieldScan(tokens)
    table = output_table(ctx, "sft")
    conv = run_conversations(ctx) if tokens == TEMPLATE_TOKENS else None
    known = known_clean_mask(table, conv, "messages", "task_id", MESSAGES)
    scan.vouch(known)
    # Known-clean messages are neither parsed nor scanned: they stay in Arrow.
    table_rows = table.drop_columns(["messages"]).to_pylist()
    unknown = [i for i, k in enumerate(known) if not k]
    for i, value in zip(unknown, table["messages"].take(pa.array(unknown, pa.int64())).to_pylist(), strict=True):
        table_rows[i]["messages"] = value
    table_ids = {r["row_id"] for r in table_rows}
    sides: dict[str, set[str]] = defaultdict(set)
    errors += _check_rows("table sft", table_rows, allowed, table_ids, scan, sides, known)
    out = ctx.export_dir / "sft"
    n_files = 0
    for split in ("train", "valid"):
        part = _split(table, split)
        jsonl, parquet = out / f"{split}.jsonl", out / f"{split}.parquet"
        for path in (jsonl, parquet):
            if not path.exists():
                errors.append(f"missing export file {path}")
        if jsonl.exists():
            if file_matches(jsonl, render_jsonl(part, _JSON_FIELDS)):
                n_files += part.num_rows
            else:  # not the table's rendering: every line is checked on its own
                rows = read_jsonl(jsonl)
                n_files += len(rows)
                errors += _check_rows(jsonl.name, rows, allowed, table_ids, scan, sides)
        if parquet.exists():
            written = read_table(parquet)
            expected = nested_sft(part)
            if not written.equals(expected):
                if written.schema != expected.schema:
                    errors.append(f"{parquet.name}: columns {written.schema.names} are not the sft layout")
                if written.num_rows != part.num_rows:
                    errors.append(f"{parquet.name} holds {written.num_rows} rows, the table {part.num_rows}")
                rows = [flat_row(r) for r in written.to_pylist()]
                errors += _check_rows(parquet.name, rows, allowed, table_ids, scan, sides)
    if n_files != len(table_rows):
        errors.append(f"sft jsonl files hold {n_files} rows, the table {len(table_rows)}")
    errors += scan.errors()
    ctx.secret_rescan = scan.report()
    errors += [f"session {s} is on both sides of the split" for s, v in sorted(sides.items()) if len(v) > 1]
    return errors


STAGE = Stage(
    name=STAGE_NAME,
    version=VERSION,
    engines=scanner_versions,
    config_model=ExportSftConfig,
    inputs=EXPORT_INPUTS,
    outputs=(SFT, TOOL_SCHEMAS),
    run=run,
    materialize=materialize,
    validate=validate,
)
