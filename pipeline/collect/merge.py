"""Shards -> final collect tables: the cross-file work, vectorised with polars.

Files are parsed independently, so anything that spans files happens here, in an order
fixed by (source_file, line_no) and never by discovery or worker completion order:
duplicates across files (resumed sessions copy lines with their uuids into new files),
positions within a session (seq, turn_index, prompt_number) that a session spread over
several files shares, subagent -> spawning-call links, and per-session counts.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa

from pipeline.collect.redact import Redactor
from pipeline.collect.shard import (
    HEAVY_COLUMNS,
    LINE_REASONS,
    SHARD_SCHEMAS,
    STAGE_NAME,
    read_shard,
)
from pipeline.core.hashing import digest_json
from schemas.records import COLLECT_TABLES, QUARANTINE

SPAWN_TOOLS = ("Task", "Agent")


@dataclass
class Merged:
    tables: dict[str, pa.Table]
    lines: Counter[str]
    set_aside: dict[str, int]
    redactions: Counter[str] = field(default_factory=Counter)


def _load(shard_dir: Path, keys: list[str]) -> tuple[dict[str, pl.DataFrame], dict[str, pa.Table]]:
    """Light columns go to polars with a row number; big text columns never enter polars,
    they are only filtered at the end (peak memory: one copy of the text, not several)."""
    parts: dict[str, list[pa.Table]] = {}
    for key in keys:
        for name, table in read_shard(shard_dir, key).items():
            parts.setdefault(name, []).append(table)
    frames: dict[str, pl.DataFrame] = {}
    heavy: dict[str, pa.Table] = {}
    for name, schema in SHARD_SCHEMAS.items():
        if name in HEAVY_COLUMNS:
            columns = list(HEAVY_COLUMNS[name])
            chunks = parts.pop(f"{name}__heavy", [])
            heavy[name] = pa.concat_tables(chunks) if chunks else schema.empty_table().select(columns)
            schema = pa.schema([f for f in schema if f.name not in columns])
        chunks = parts.pop(name, [])
        table = pa.concat_tables(chunks).combine_chunks() if chunks else schema.empty_table()
        del chunks  # free the shard buffers before polars makes its own copy
        if name in HEAVY_COLUMNS:
            table = table.append_column("_row", pa.array(np.arange(table.num_rows, dtype=np.int64)))
        frames[name] = pl.from_arrow(table)  # type: ignore[assignment]
        del table
    return frames, heavy


def _duplicates(lines: pl.DataFrame) -> pl.DataFrame:
    """Lines whose key was already seen in an earlier file (by source_file, line_no)."""
    ordered = lines.sort(["source_file", "line_no"])
    ranked = ordered.with_columns(
        pl.int_range(pl.len()).over("key").alias("_rank"),
        pl.col("chash").first().over("key").alias("_first_hash"),
        pl.col("source_file").first().over("key").alias("_first_file"),
        pl.col("line_no").first().over("key").alias("_first_line"),
    )
    return ranked.filter(pl.col("_rank") > 0)


def _drop_lines(frame: pl.DataFrame, dropped: pl.DataFrame) -> pl.DataFrame:
    if dropped.is_empty() or frame.is_empty():
        return frame
    return frame.join(dropped, on=["source_file", "line_no"], how="anti")


def _first_by_file(frame: pl.DataFrame, keys: list[str]) -> pl.DataFrame:
    return frame.sort(["source_file", "line_no"]).unique(subset=keys, keep="first", maintain_order=True)


def merge_shards(shard_dir: Path, keys: list[str], shard_lines: Counter[str]) -> Merged:
    """``keys`` in display-path order; ``shard_lines`` = the per-file line tallies summed."""
    f, heavy = _load(shard_dir, keys)
    tallies = Counter(shard_lines)
    redactor = Redactor()

    dups = _duplicates(f["lines"])
    exact = dups.filter(pl.col("chash") == pl.col("_first_hash"))
    conflicts = dups.filter(pl.col("chash") != pl.col("_first_hash"))
    for outcome, n in dups.group_by("outcome").len().iter_rows():
        tallies[outcome] -= n
    tallies["exact_duplicate"] += exact.height
    tallies["quarantined:conflicting_duplicate"] += conflicts.height
    dropped = dups.select("source_file", "line_no")

    # Rows from duplicate lines go, whether set aside or quarantined (a copied broken line).
    quarantine = _drop_lines(f["quarantine"], dropped)
    conflict_rows = conflicts.select(
        pl.lit(STAGE_NAME).alias("stage"), "source_file", "line_no", pl.col("key").alias("record_id"),
        "session_id", pl.lit("conflicting_duplicate").alias("reason"),
        pl.format("record id reused with different content; first copy kept at {}:{}",
                  "_first_file", "_first_line").alias("detail"),
    )
    if conflict_rows.height:
        conflict_rows = conflict_rows.with_columns(
            pl.Series("detail", [redactor.redact(d) for d in conflict_rows["detail"].to_list()])
        )
    quarantine = pl.concat([quarantine, conflict_rows], how="vertical_relaxed")

    messages = _first_by_file(_drop_lines(f["messages"], dropped), ["session_id", "message_id"])
    calls = _first_by_file(_drop_lines(f["tool_calls"], dropped), ["session_id", "tool_use_id"])
    prompts = _drop_lines(f["prompts"], dropped)
    branches = f["branches"]
    if not branches.is_empty():
        kept = messages.select("session_id", pl.col("message_id").alias("child_message_id"), "source_file")
        branches = branches.join(kept, on=["session_id", "child_message_id", "source_file"], how="semi")
        branches = branches.sort(["source_file", "session_id", "parent_message_id", "child_rank"]).unique(
            subset=["session_id", "parent_message_id", "child_message_id"], keep="first", maintain_order=True
        )

    prompts, messages, calls = _positions(prompts, messages, calls)
    kept_lines = f["lines"].join(dropped, on=["source_file", "line_no"], how="anti")
    sessions, subagents, calls, messages = _sessions(f["sessions"], kept_lines, messages, calls, prompts)

    tables = {
        "sessions": _final(sessions, "sessions"),
        "messages": _final(messages, "messages", heavy.pop("messages")),
        "tool_calls": _final(calls, "tool_calls", heavy.pop("tool_calls")),
        "prompts": _final(prompts, "prompts"),
        "branches": _final(branches, "branches"),
        "subagents": _final(subagents, "subagents"),
        "quarantine": _cast(quarantine, QUARANTINE.schema),
    }
    set_aside = dict(
        sorted(Counter(r for r in quarantine["reason"].to_list() if r not in LINE_REASONS).items())
    )
    return Merged(tables=tables, lines=+tallies, set_aside=set_aside, redactions=redactor.counts)


def _positions(
    prompts: pl.DataFrame, messages: pl.DataFrame, calls: pl.DataFrame
) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """seq, prompt_number/prompt_id and turn_index, in (source_file, line_no) order per session."""
    prompts = prompts.sort(["session_id", "source_file", "line_no"]).with_columns(
        pl.int_range(pl.len()).over("session_id").cast(pl.Int64).alias("prompt_number")
    )
    ids = [digest_json([s, n]) for s, n in zip(prompts["session_id"].to_list(),
                                                 prompts["prompt_number"].to_list(), strict=True)]
    prompts = prompts.with_columns(pl.Series("prompt_id", ids, dtype=pl.String))
    lookup = prompts.select(
        "session_id", "source_file", pl.col("line_no").alias("_prompt_line"), "prompt_id"
    )
    messages = messages.sort(["session_id", "source_file", "line_no"]).with_columns(
        pl.int_range(pl.len()).over("session_id").cast(pl.Int64).alias("seq")
    )
    messages = messages.join(lookup, on=["session_id", "source_file", "_prompt_line"], how="left")
    turn = messages.select("session_id", "message_id", pl.col("seq").alias("turn_index"))
    calls = calls.join(turn, on=["session_id", "message_id"], how="left").with_columns(
        pl.col("turn_index").fill_null(-1)
    )
    calls = calls.join(lookup, on=["session_id", "source_file", "_prompt_line"], how="left")
    return prompts, messages, calls


def _sessions(
    raw: pl.DataFrame,
    kept_lines: pl.DataFrame,
    messages: pl.DataFrame,
    calls: pl.DataFrame,
    prompts: pl.DataFrame,
) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    present = kept_lines.filter(pl.col("session_id").is_not_null()).select(
        "session_id", "source_file"
    ).unique()
    raw = raw.join(present, on=["session_id", "source_file"], how="semi").sort(["session_id", "source_file"])
    firsts = [
        pl.col(c).drop_nulls().first().alias(c)
        for c in ("source_kind", "source_file", "agent_version", "cwd", "git_branch", "model", "title",
                  "agent_id", "_root_session_id", "_meta_tool_use_id", "_spawn_digest")
    ]
    sessions = raw.group_by("session_id", maintain_order=True).agg(
        *firsts,
        pl.col("started_at").min(),
        pl.col("ended_at").max(),
        pl.col("is_subagent").any(),
    )
    links = _link_subagents(sessions, calls)
    link_frame = pl.DataFrame(
        links,
        schema={"session_id": pl.String, "parent_session_id": pl.String, "spawn_tool_use_id": pl.String,
                "link_method": pl.String, "_inherited_prompt": pl.String},
        orient="row",
    )
    sessions = sessions.join(link_frame.select("session_id", "parent_session_id"), on="session_id", how="left")
    inherit = link_frame.select("session_id", "_inherited_prompt")
    messages = messages.join(inherit, on="session_id", how="left").with_columns(
        pl.coalesce("prompt_id", "_inherited_prompt").alias("prompt_id")
    )
    calls = calls.join(inherit, on="session_id", how="left").with_columns(
        pl.coalesce("prompt_id", "_inherited_prompt").alias("prompt_id")
    )
    for name, frame in (("n_messages", messages), ("n_tool_calls", calls), ("n_prompts", prompts)):
        counts = frame.group_by("session_id").len().rename({"len": name})
        sessions = sessions.join(counts, on="session_id", how="left").with_columns(
            pl.col(name).fill_null(0).cast(pl.Int64)
        )
    subagents = sessions.filter(pl.col("is_subagent")).join(
        link_frame.select("session_id", "spawn_tool_use_id", "link_method"), on="session_id", how="left"
    ).select(
        "session_id", pl.col("parent_session_id").fill_null(pl.col("_root_session_id")),
        "agent_id", "spawn_tool_use_id", pl.col("link_method").fill_null("none"), "source_file",
    ).filter(pl.col("parent_session_id").is_not_null())
    return sessions, subagents, calls, messages


def _link_subagents(sessions: pl.DataFrame, calls: pl.DataFrame) -> list[tuple[Any, ...]]:
    """Subagent -> spawning call: toolUseResult.agentId, then meta.json toolUseId, then
    the spawn prompt. Never by time: an unmatched subagent stays linked to its root only."""
    subs = sessions.filter(pl.col("is_subagent")).sort("session_id")
    if subs.is_empty():
        return []
    roots = dict(zip(subs["session_id"].to_list(), subs["_root_session_id"].to_list(), strict=True))
    spawn_calls = calls.filter(pl.col("name").is_in(list(SPAWN_TOOLS))).sort(
        ["session_id", "turn_index", "turn_subindex"]
    )
    by_agent: dict[tuple[str, str], dict[str, Any]] = {}
    by_id: dict[tuple[str, str], dict[str, Any]] = {}
    by_prompt: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for call in spawn_calls.select(
        "session_id", "tool_use_id", "_agent_id", "_spawn_digest", "prompt_id"
    ).iter_rows(named=True):
        root = roots.get(call["session_id"], call["session_id"])
        if call["_agent_id"]:
            by_agent.setdefault((root, call["_agent_id"]), call)
        by_id.setdefault((root, call["tool_use_id"]), call)
        if call["_spawn_digest"]:
            by_prompt.setdefault((root, call["_spawn_digest"]), []).append(call)
    found: dict[str, tuple[dict[str, Any] | None, str]] = {}
    used: set[str] = set()
    rows = list(subs.select("session_id", "source_kind", "agent_id", "_root_session_id",
                            "_meta_tool_use_id", "_spawn_digest").iter_rows(named=True))
    for sub in rows:
        root = sub["_root_session_id"]
        if sub["source_kind"] == "codex":
            found[sub["session_id"]] = (None, "session_meta")
            continue
        call = by_agent.get((root, sub["agent_id"])) if sub["agent_id"] else None
        method = "tool_result_agent_id"
        if call is None and sub["_meta_tool_use_id"]:
            call, method = by_id.get((root, sub["_meta_tool_use_id"])), "meta_json"
        if call is not None:
            found[sub["session_id"]] = (call, method)
            used.add(call["tool_use_id"])
    for sub in rows:
        if sub["session_id"] in found or not sub["_spawn_digest"]:
            continue
        for call in by_prompt.get((sub["_root_session_id"], sub["_spawn_digest"]), []):
            if call["tool_use_id"] not in used:
                found[sub["session_id"]] = (call, "prompt_match")
                used.add(call["tool_use_id"])
                break

    def inherited(session_id: str, depth: int = 0) -> str | None:
        call = found.get(session_id, (None, ""))[0]
        if call is None or depth > 32:
            return None
        return call["prompt_id"] or inherited(call["session_id"], depth + 1)

    out = []
    for sub in rows:
        call, method = found.get(sub["session_id"], (None, "none"))
        parent = call["session_id"] if call is not None else sub["_root_session_id"]
        out.append((sub["session_id"], parent, call["tool_use_id"] if call else None, method,
                    inherited(sub["session_id"])))
    return out


def _cast(frame: pl.DataFrame, schema: pa.Schema, heavy: pa.Table | None = None) -> pa.Table:
    """Light columns from polars; heavy ones filtered (not gathered) from the shard data."""
    names = [n for n in schema.names if heavy is None or n not in heavy.column_names]
    if heavy is not None:
        frame = frame.sort("_row")
        if frame.height != heavy.num_rows:
            mask = np.zeros(heavy.num_rows, dtype=bool)
            mask[frame["_row"].to_numpy()] = True
            heavy = heavy.filter(pa.array(mask))
    table = frame.select(names).to_arrow()
    columns = {n: table.column(n) for n in names}
    if heavy is not None:
        columns.update({n: heavy.column(n) for n in heavy.column_names})
    return pa.table([columns[n].cast(schema.field(n).type) for n in schema.names], schema=schema)


def _final(frame: pl.DataFrame, name: str, heavy: pa.Table | None = None) -> pa.Table:
    return _cast(frame, COLLECT_TABLES[name].schema, heavy)
