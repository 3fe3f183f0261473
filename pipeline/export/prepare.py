"""What score prepares once so the three exports do not each redo it.

Every task's conversation (JSON), its row features, its firewall scan (secret kinds and
template token over its strings) and its dedupe keys (exact digest, MinHash signature)
go into the ``conversations`` table; the tool schemas derived from every observed call go
into ``tool_specs``. Exports read both and recompute only for rows they transform.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa

from pipeline.export.common import dumps
from pipeline.export.conversation import CallFacts, build_conversations, features_of, join_messages
from pipeline.export.dedupe import DEFAULT_SIGNATURE
from pipeline.export.dedupe import dedupe_keys as keys_of
from pipeline.export.firewall import StringScan, json_digest
from schemas.datasets import SCORING_TABLES
from schemas.tables import from_columns


def required_of(schemas: dict[tuple[str, str], dict[str, Any]]) -> dict[tuple[str, str], list[str]]:
    return {key: value["required"] for key, value in schemas.items()}


def tool_specs_table(schemas: dict[tuple[str, str], dict[str, Any]]) -> pa.Table:
    keys = sorted(schemas)
    return from_columns(SCORING_TABLES["tool_specs"], {
        "name": [n for _, n in keys],
        "source_kind": [k for k, _ in keys],
        "n_calls": [schemas[k]["n_calls"] for k in keys],
        "required": [schemas[k]["required"] for k in keys],
        "tool_schema": [dumps(schemas[k]["schema"]) for k in keys],
    })


def dedupe_keys(texts: list[str], params: tuple[int, int, int] = DEFAULT_SIGNATURE) -> tuple[list[str], np.ndarray]:
    num_perm, seed, max_chars = params
    return keys_of(texts, num_perm, seed, max_chars)


def conversations_table(
    tasks: pl.DataFrame,
    messages: pl.DataFrame,
    calls: pl.DataFrame,
    parsed_args: list[dict[str, Any]],
    branches: pl.DataFrame | None,
    facts: CallFacts,
) -> pa.Table:
    """The ``conversations`` table; ``calls``, ``parsed_args`` and ``facts`` are aligned."""
    built = build_conversations(tasks, messages, calls, branches, parsed_args)
    meta = {t: (s, n, k) for t, s, n, k in tasks.select(
        "task_id", "session_id", "prompt_number", "source_kind").iter_rows()}
    columns: dict[str, list[Any]] = {name: [] for name in SCORING_TABLES["conversations"].schema.names}
    scan = StringScan()
    for b in built:
        session_id, number, kind = meta[b.task_id]
        row = {
            "task_id": b.task_id, "session_id": session_id, "prompt_number": number,
            "source_kind": kind, "n_messages": len(b.messages), "prompt": dumps(b.messages[:1]),
            "completion": dumps(b.messages[1:]), "copied_context": b.copied_context,
            "truncated_args": b.truncated_args, **features_of(b.messages, facts, b.call_ids),
        }
        row["steps"] = dumps(row["steps"])
        for name, value in row.items():
            columns[name].append(value)
        scan.add_messages(b.messages)
    columns["json_digests"] = [
        [json_digest(p), json_digest(c), json_digest(join_messages(p, c))]
        for p, c in zip(columns["prompt"], columns["completion"], strict=True)
    ]
    scans = scan.results()
    columns["secret_kinds"] = [k for k, _ in scans]
    columns["template_token"] = [t for _, t in scans]
    digests, sigs = dedupe_keys([scan.text(g) for g in range(len(built))])
    columns["text_digest"] = digests
    table = from_columns(SCORING_TABLES["conversations"], {**columns, "minhash": [[]] * len(built)})
    return table.set_column(table.schema.get_field_index("minhash"), "minhash", minhash_array(sigs))


def minhash_array(sigs: np.ndarray) -> pa.Array:
    n, width = sigs.shape
    offsets = pa.array(np.arange(0, (n + 1) * width, width, dtype=np.int64))
    return pa.LargeListArray.from_arrays(offsets, pa.array(sigs.astype(np.int64).ravel()))
