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
    container_path,
    read_container,
    read_ref,
)
from pipeline.core.hashing import digest_json
from schemas.records import COLLECT_TABLES, QUARANTINE
from schemas.tables import TableSpec

SPAWN_TOOLS = ("Task", "Agent")


@dataclass
class Merged:
    tables: dict[str, pa.Table]
    lines: Counter[str]
    set_aside: dict[str, int]
    redactions: Counter[str] = field(default_factory=Counter)


@dataclass
class _Heavy:
    """Where one table's big text columns live: read container by container at the end."""

    name: str
    shard_dir: Path
    spans: list[tuple[str, int, int]]  # (container, first row, rows) per file, in merge order


def _load(shard_dir: Path, keys: list[str]) -> tuple[dict[str, pl.DataFrame], dict[str, _Heavy]]:
    """Light columns go to polars with a row number; big text columns are not read here.

    They never enter polars: ``_final`` reads them container by container and keeps the
    rows that survived, so the merge holds one copy of the text, and only at the end.
    Each file's rows are a slice of its container (several files share one), taken in
    ``keys`` order, which is what fixes the row order everything downstream relies on.
    """
    refs = []
    for key in keys:
        ref = read_ref(shard_dir, key)
        if ref is None:
            raise FileNotFoundError(f"collect shard {key} is missing")
        refs.append(ref)
    containers: dict[str, dict[str, pa.Table]] = {}
    light = list(SHARD_SCHEMAS)
    for ref in refs:
        if ref["container"] not in containers:
            path = container_path(shard_dir, ref["container"])
            containers[ref["container"]] = read_container(path, names=light)[0]
    frames: dict[str, pl.DataFrame] = {}
    heavy: dict[str, _Heavy] = {}
    for name, schema in SHARD_SCHEMAS.items():
        spans = _coalesce([(r["container"], *r["rows"][name]) for r in refs if name in r["rows"]])
        chunks = [containers[c][name].slice(start, rows) for c, start, rows in spans]
        if name in HEAVY_COLUMNS:
            columns = HEAVY_COLUMNS[name]
            schema = pa.schema([f for f in schema if f.name not in columns])
            heavy[name] = _Heavy(name, shard_dir, spans)
        table = pa.concat_tables(chunks).combine_chunks() if chunks else schema.empty_table()
        del chunks
        for tables in containers.values():
            tables.pop(name, None)  # the container's buffers go once every table is combined
        if name in HEAVY_COLUMNS:
            table = table.append_column("_row", _arange(table.num_rows))
        frames[name] = pl.from_arrow(table)  # type: ignore[assignment]
        del table
    return frames, heavy


def _coalesce(spans: list[tuple[str, int, int]]) -> list[tuple[str, int, int]]:
    """Adjacent row ranges of one container as one range: consecutive files usually sit
    side by side in their container, and Arrow and polars are slow on thousands of chunks."""
    out: list[tuple[str, int, int]] = []
    for container, start, rows in spans:
        if out and out[-1][0] == container and out[-1][1] + out[-1][2] == start:
            out[-1] = (container, out[-1][1], out[-1][2] + rows)
        else:
            out.append((container, start, rows))
    return out


def _arange(n: int) -> pa.Array:
    """0..n-1 without ``pa.array`` (which imports pandas, ~0.4 s, to check its argument)."""
    return pa.Array.from_buffers(pa.int64(), n, [None, pa.py_buffer(np.arange(n, dtype=np.int64))])


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
        "quarantine": _cast(quarantine, QUARANTINE),
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
    for spawn in spawn_calls.select(
        "session_id", "tool_use_id", "_agent_id", "_spawn_digest", "prompt_id"
    ).iter_rows(named=True):
        root = roots.get(spawn["session_id"], spawn["session_id"])
        if spawn["_agent_id"]:
            by_agent.setdefault((root, spawn["_agent_id"]), spawn)
        by_id.setdefault((root, spawn["tool_use_id"]), spawn)
        if spawn["_spawn_digest"]:
            by_prompt.setdefault((root, spawn["_spawn_digest"]), []).append(spawn)
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


def _cast(frame: pl.DataFrame, spec: TableSpec, heavy: _Heavy | None = None) -> pa.Table:
    """Light columns from polars, heavy ones gathered from the shards, all in the table's
    canonical order, so the runner's sort finds nothing to move (no copy of the text)."""
    schema = spec.schema
    frame = frame.sort(list(spec.sort_keys), nulls_last=True, maintain_order=True)
    heavy_names = HEAVY_COLUMNS[heavy.name] if heavy is not None else ()
    names = [n for n in schema.names if n not in heavy_names]
    columns: dict[str, pa.ChunkedArray | pa.Array] = {}
    if heavy is not None:
        columns.update(_heavy_columns(heavy, frame["_row"].to_numpy()))
    table = frame.select(names).to_arrow()
    del frame
    columns.update({n: table.column(n) for n in names})
    return pa.table([columns[n].cast(schema.field(n).type) for n in schema.names], schema=schema)


def _runs(order: np.ndarray) -> list[tuple[int, int]]:
    """Maximal runs of consecutive row ids in ``order`` as (first id, length)."""
    if len(order) == 0:
        return []
    breaks = np.flatnonzero(np.diff(order) != 1) + 1
    starts = np.concatenate([[0], breaks])
    ends = np.concatenate([breaks, [len(order)]])
    return [(int(order[a]), int(b - a)) for a, b in zip(starts, ends, strict=True)]


def _heavy_columns(heavy: _Heavy, order: np.ndarray) -> dict[str, pa.ChunkedArray]:
    """The heavy columns of the rows ``order`` names, in that order.

    Rows of one file stay contiguous in canonical order, so they are gathered as
    zero-copy slices of each container; only a badly fragmented order falls back to a
    take.
    """
    names = list(HEAVY_COLUMNS[heavy.name])
    stream = f"{heavy.name}__heavy"
    if len(order) == 0:
        empty = SHARD_SCHEMAS[heavy.name]
        return {n: pa.chunked_array([], type=empty.field(n).type) for n in names}
    span_starts = np.cumsum([0] + [rows for _, _, rows in heavy.spans])
    loaded: dict[str, pa.Table] = {}

    def container(name: str) -> pa.Table:
        if name not in loaded:
            path = container_path(heavy.shard_dir, name)
            loaded[name] = read_container(path, names=[stream])[0][stream].select(names)
        return loaded[name]

    runs = _runs(order)
    if len(runs) > max(64, len(order) // 8):
        ordered = pa.concat_tables(
            container(c).slice(start, rows) for c, start, rows in heavy.spans
        ).take(pa.Array.from_buffers(pa.int64(), len(order), [None, pa.py_buffer(order.astype(np.int64))]))
        return {n: ordered.column(n) for n in names}
    chunks: list[pa.Table] = []
    for first, length in runs:
        while length:
            span = int(np.searchsorted(span_starts, first, side="right")) - 1
            name, start, rows = heavy.spans[span]
            within = first - int(span_starts[span])
            count = min(length, rows - within)
            chunks.append(container(name).slice(start + within, count))
            first += count
            length -= count
    merged = pa.concat_tables(chunks)
    return {n: merged.column(n) for n in names}


def _final(frame: pl.DataFrame, name: str, heavy: _Heavy | None = None) -> pa.Table:
    return _cast(frame, COLLECT_TABLES[name], heavy)
