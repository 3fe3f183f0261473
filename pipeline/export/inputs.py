"""What every export stage reads: scores, and the conversations score prepared once."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
import polars as pl
import pyarrow as pa

from pipeline.core.stage import ExportContext, StageContext
from pipeline.export.common import Quarantine, frame, read_table
from pipeline.export.conversation import (
    drop_thinking,
    features,
    join_messages,
    strip_tools,
)
from pipeline.export.dedupe import DedupeConfig, DedupeResult, collapse
from pipeline.export.firewall import StringScan, json_digest
from pipeline.export.prepare import dedupe_keys

EXPORT_INPUTS = ("scores", "tasks", "conversations", "tool_specs", "branches")


@dataclass
class ExportInputs:
    scores: pl.DataFrame  # sorted by session_id, prompt_number, task_id
    conversations: pl.DataFrame  # same order; only the columns the stage asked for
    tool_schema: dict[tuple[str, str], str]  # (source_kind, name) -> schema JSON
    required: dict[tuple[str, str], list[str]]

    def tools_json(self, source_kind: str, names: list[str]) -> str:
        """JSON list of the schemas of ``names`` (sorted, distinct), built from stored JSON."""
        parts = [self.tool_schema[(source_kind, n)] for n in sorted(set(names))
                 if (source_kind, n) in self.tool_schema]
        return "[" + ",".join(parts) + "]"


def load_inputs(ctx: StageContext, columns: list[str]) -> ExportInputs:
    keys = ["task_id", "session_id", "prompt_number"]
    conversations = frame(ctx, "conversations", columns=keys + [c for c in columns if c not in keys])
    specs = frame(ctx, "tool_specs")
    tool_schema, required = {}, {}
    for name, kind, req, schema in specs.select("name", "source_kind", "required", "tool_schema").iter_rows():
        tool_schema[(kind, name)] = schema
        required[(kind, name)] = list(req)
    scores = frame(ctx, "scores", columns=["task_id", "session_id", "prompt_number", "category"])
    return ExportInputs(
        scores=scores.sort("session_id", "prompt_number", "task_id"),  # type: ignore[union-attr]
        conversations=conversations.sort("session_id", "prompt_number", "task_id"),  # type: ignore[union-attr]
        tool_schema=tool_schema,
        required=required,
    )


def select_candidates(inputs: ExportInputs, allowed: set[str] | None, quarantine: Quarantine) -> pl.DataFrame:
    """Scored tasks in the allowed categories, joined to their conversations in (session,
    prompt) order. Disallowed categories and scored tasks without a conversation (no
    provenance) are set aside, in score order."""
    scored = inputs.scores
    if allowed is not None:
        for task_id, session_id, category in scored.filter(~pl.col("category").is_in(sorted(allowed))).select(
            "task_id", "session_id", "category"
        ).iter_rows():
            quarantine.add("category_disallowed", task_id, session_id, category)
        scored = scored.filter(pl.col("category").is_in(sorted(allowed)))
    known = scored.join(inputs.conversations.select("task_id"), on="task_id", how="semi")
    for task_id in scored.join(known, on="task_id", how="anti")["task_id"].to_list():
        quarantine.add("missing_provenance", task_id, None, "scored task not in tasks")
    joined = known.select("task_id", "category").join(inputs.conversations, on="task_id", how="inner")
    return joined.sort("session_id", "prompt_number", "task_id")


# --- rows an export changes -------------------------------------------------------------


def transform_rows(
    rows: list[dict[str, Any]],
    inputs: ExportInputs,
    keep_thinking: bool,
    skip: set[str],
    tokens: tuple[str, ...],
    rebuild_all: bool,
    halves: pa.Table | None = None,
) -> tuple[list[dict[str, Any]], int]:
    """Apply the export's transforms to the rows that need them and recompute their
    features and scan. Returns (rows, skip-listed calls removed); a rebuilt row gets
    ``rebuilt = True``, its ``messages`` and its dedupe ``text``. Rows without their
    ``prompt``/``completion`` find them in ``halves`` at row ``_i``."""
    removed = 0
    scan = StringScan(tokens)
    rebuilt: list[dict[str, Any]] = []
    for row in rows:
        touches_skip = bool(skip) and any(n in skip for n in row["tool_names"])
        if not (rebuild_all or touches_skip or (not keep_thinking and row["has_thinking"])):
            row["rebuilt"] = False
            continue
        if "prompt" in row:
            prompt, completion = row["prompt"], row["completion"]
        else:
            assert halves is not None
            prompt, completion = halves["prompt"][row["_i"]].as_py(), halves["completion"][row["_i"]].as_py()
        messages = orjson.loads(join_messages(prompt, completion))
        if not keep_thinking:
            drop_thinking(messages)
        if touches_skip:
            messages, n = strip_tools(messages, skip)
            removed += n
        row.update(features(messages, row["source_kind"], inputs.required))
        row["rebuilt"] = True
        row["messages"] = messages
        row["n_messages"] = len(messages)
        row["text_group"] = scan.add_messages(messages)
        rebuilt.append(row)
    for row, (kinds, token) in zip(rebuilt, scan.results(), strict=True):
        row["secret_kinds"], row["template_token"] = kinds, token
        row["text"] = scan.text(row.pop("text_group"))
    return rows, removed


def dedupe_rows(survivors: list[dict[str, Any]], config: DedupeConfig) -> DedupeResult:
    """Collapse duplicates among ``survivors`` (keep-first), re-signing rebuilt rows."""
    fresh = [r for r in survivors if r["rebuilt"]]
    if fresh:
        digests, sigs = dedupe_keys([r["text"] for r in fresh], config.signature_params())
        for r, d, sig in zip(fresh, digests, sigs, strict=True):
            r["text_digest"], r["minhash"] = d, sig
    if not survivors:
        return DedupeResult()
    matrix = np.array([np.asarray(r["minhash"], dtype=np.uint32) for r in survivors], dtype=np.uint32)
    return collapse([r["task_id"] for r in survivors], [r["text_digest"] for r in survivors], matrix,
                    config.threshold)


# --- validation -------------------------------------------------------------------------


PROMPT, COMPLETION, MESSAGES = 0, 1, 2  # positions in conversations.json_digests


def run_conversations(ctx: ExportContext) -> dict[str, list[str]] | None:
    """task_id -> JSON digests of the conversations this run's score wrote and scanned
    clean, re-read from the table its receipt names; None when unavailable (then every
    field is scanned in full)."""
    from pipeline.core.receipts import load_envelope, receipt_from_envelope, receipt_path

    try:
        receipt = receipt_from_envelope(load_envelope(receipt_path(ctx.layout, ctx.run_id, "score")))
        ref = next(o for o in receipt.outputs if o.name == "conversations")
        table = read_table(ctx.layout.root / ref.path,
                           columns=["task_id", "json_digests", "secret_kinds", "template_token"])
    except Exception:  # no receipt, no table: nothing is known, everything is scanned
        return None
    if receipt.status != "ok":
        return None
    out = {}
    for task_id, digests, kinds, token in zip(*(table[c].to_pylist() for c in table.column_names), strict=True):
        if not kinds and token is None:
            out[task_id] = digests
    return out


def known_clean_mask(table: pa.Table, conv: dict[str, list[str]] | None, field: str, task_col: str,
                     which: int) -> list[bool]:
    """Per row: ``field`` is byte-identical (by digest) to the ``which`` JSON of the
    conversation of the row's ``task_col`` task, which score scanned clean."""
    if conv is None:
        return [False] * table.num_rows
    values = table[field].cast(pa.large_binary()).to_pylist()
    out = []
    for task_id, value in zip(table[task_col].to_pylist(), values, strict=True):
        digests = conv.get(task_id)
        out.append(digests is not None and value is not None and json_digest(value) == digests[which])
    return out
