"""Shards -> final collect tables: the cross-file work, vectorised with polars.

Files are parsed independently, so anything that spans files happens here, in an order
fixed by (source_file, line_no) and never by discovery or worker completion order:
duplicates across files (resumed sessions copy lines with their uuids into new files),
positions within a session (seq, turn_index, prompt_number) that a session spread over
several files shares, subagent -> spawning-call links, and per-session counts.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa

from pipeline.collect.redact import Redactor
from pipeline.collect.shard import (
    LINE_REASONS,
    PASSTHROUGH_COLUMNS,
    SHARD_SCHEMAS,
    STAGE_NAME,
    container_path,
    passthrough_stream,
    read_container,
)
from pipeline.core.hashing import digest_json
from pipeline.core.store import TableStream
from schemas.records import COLLECT_TABLES, QUARANTINE
from schemas.tables import TableSpec

SPAWN_TOOLS = ("Task", "Agent")


@dataclass
class Merged:
    tables: dict[str, pa.Table | TableStream]
    rows: dict[str, int]
    lines: Counter[str]
    set_aside: dict[str, int]
    redactions: Counter[str] = field(default_factory=Counter)


@dataclass
class _Passthrough:
    """Where one table's passthrough columns live: per file, a row range of a container,
    in merge order (so global row ``i`` of the merge is found by a search over spans)."""

    name: str
    shard_dir: Path
    spans: list[tuple[str, int, int]]  # (container, first row, rows)


def _light_schema(name: str) -> pa.Schema:
    skip = PASSTHROUGH_COLUMNS.get(name, ())
    return pa.schema([f for f in SHARD_SCHEMAS[name] if f.name not in skip])


def _load(
    shard_dir: Path, members: list[dict[str, Any]]
) -> tuple[dict[str, pl.DataFrame], dict[str, _Passthrough]]:
    """The merge's columns go to polars (with a row number where a table has
    passthrough columns, which stay in the containers until the final write). Each
    file's rows are a slice of its container, taken in ``members`` order, which is what
    fixes the row order everything downstream relies on.
    """
    frames: dict[str, pl.DataFrame] = {}
    passthrough: dict[str, _Passthrough] = {}
    for name in SHARD_SCHEMAS:
        # One table at a time, through memory maps: only this table's rows are ever
        # resident, once (the combined copy), before they shrink into polars.
        spans = _coalesce([(m["container"], *m["rows"][name]) for m in members if name in m["rows"]])
        opened: dict[str, pa.Table] = {}
        for container, _, _ in spans:
            if container not in opened:
                path = container_path(shard_dir, container)
                opened[container] = read_container(path, names=[name], mapped=True)[0][name]
        chunks = [opened[c].slice(start, rows).drop_columns(["source_file"]) for c, start, rows in spans]
        empty = _light_schema(name).empty_table().drop_columns(["source_file"])
        table = pa.concat_tables(chunks).combine_chunks() if chunks else empty
        del chunks, opened
        # Files by their index in merge order: 4 bytes a row instead of a path, and the
        # order the merge sorts by. Paths come back when the final tables are written.
        counts = [(i, m["rows"][name][1]) for i, m in enumerate(members) if name in m["rows"]]
        index = np.repeat(
            np.array([i for i, _ in counts], dtype=np.int32), [n for _, n in counts]
        ) if counts else np.zeros(0, dtype=np.int32)
        table = table.append_column("_file", _int32(index))
        if name in PASSTHROUGH_COLUMNS:
            passthrough[name] = _Passthrough(name, shard_dir, spans)
            table = table.append_column("_row", _arange(table.num_rows))
        frame = pl.from_arrow(table)
        del table
        assert isinstance(frame, pl.DataFrame)
        frames[name] = _compact(frame)
    return frames, passthrough


# Columns with few distinct values: one code per row instead of one string (polars sorts
# and compares categoricals as the strings they stand for).
_CATEGORICAL = ("session_id", "_root_session_id", "outcome")


def _compact(frame: pl.DataFrame) -> pl.DataFrame:
    """What the merge holds per row grows with the corpus: make it small."""
    return frame.with_columns(pl.col(c).cast(pl.Categorical) for c in _CATEGORICAL if c in frame.columns)


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


def _int32(values: np.ndarray) -> pa.Array:
    return pa.Array.from_buffers(pa.int32(), len(values), [None, pa.py_buffer(values.astype(np.int32))])


def _arange(n: int) -> pa.Array:
    """0..n-1 without ``pa.array`` (which imports pandas, ~0.4 s, to check its argument)."""
    return pa.Array.from_buffers(pa.int64(), n, [None, pa.py_buffer(np.arange(n, dtype=np.int64))])


def _duplicates(lines: pl.DataFrame) -> pl.DataFrame:
    """Lines whose key was already seen in an earlier file (by source_file, line_no)."""
    ordered = lines.sort(["_file", "line_no"])
    ranked = ordered.with_columns(
        pl.int_range(pl.len()).over("_k1", "_k2").alias("_rank"),
        pl.col("chash").first().over("_k1", "_k2").alias("_first_hash"),
        pl.col("_file").first().over("_k1", "_k2").alias("_first_file"),
        pl.col("line_no").first().over("_k1", "_k2").alias("_first_line"),
    )
    return ranked.filter(pl.col("_rank") > 0)


def _drop_lines(frame: pl.DataFrame, dropped: pl.DataFrame) -> pl.DataFrame:
    if dropped.is_empty() or frame.is_empty():
        return frame
    return frame.join(dropped, on=["_file", "line_no"], how="anti")


def _first_by_file(frame: pl.DataFrame, keys: list[str]) -> pl.DataFrame:
    return frame.sort(["_file", "line_no"]).unique(subset=keys, keep="first", maintain_order=True)


def merge_shards(shard_dir: Path, members: list[dict[str, Any]], shard_lines: Counter[str]) -> Merged:
    """``members`` (container, row ranges) in display-path order; ``shard_lines`` = the
    per-file line tallies summed."""
    f, passthrough = _load(shard_dir, members)
    paths = [m["source_file"] for m in members]
    files = pl.Series("source_file", paths, dtype=pl.String)
    tallies = Counter(shard_lines)
    redactor = Redactor()

    dups = _duplicates(f["lines"])
    exact = dups.filter(pl.col("chash") == pl.col("_first_hash"))
    conflicts = dups.filter(pl.col("chash") != pl.col("_first_hash"))
    for outcome, n in dups.group_by("outcome").len().iter_rows():
        tallies[outcome] -= n
    tallies["exact_duplicate"] += exact.height
    tallies["quarantined:conflicting_duplicate"] += conflicts.height
    dropped = dups.select("_file", "line_no")
    # Frames are popped as they are used: the merge is where collect's memory peaks.
    kept_lines = f.pop("lines").join(dropped, on=["_file", "line_no"], how="anti")
    present = kept_lines.filter(pl.col("session_id").is_not_null()).select("session_id", "_file").unique()
    del kept_lines

    # Rows from duplicate lines go, whether set aside or quarantined (a copied broken line).
    quarantine = _drop_lines(f.pop("quarantine"), dropped)
    if conflicts.height:
        lines = passthrough["lines"]
        keys = _gather(lines, _starts(lines), conflicts["_row"].to_numpy())["key"]
        conflicts = conflicts.with_columns(pl.Series("key", keys.to_pylist(), dtype=pl.String))
    else:
        conflicts = conflicts.with_columns(pl.lit(None, dtype=pl.String).alias("key"))
    conflict_rows = conflicts.select(
        pl.lit(STAGE_NAME).alias("stage"), "_file", "line_no", pl.col("key").alias("record_id"),
        "session_id", pl.lit("conflicting_duplicate").alias("reason"),
        pl.lit(None, dtype=pl.String).alias("detail"), pl.col("_first_file"), pl.col("_first_line"),
    )
    if conflict_rows.height:
        details = [
            redactor.redact(f"record id reused with different content; first copy kept at {paths[i]}:{n}")
            for i, n in conflict_rows.select("_first_file", "_first_line").iter_rows()
        ]
        conflict_rows = conflict_rows.with_columns(pl.Series("detail", details, dtype=pl.String))
    conflict_rows = conflict_rows.drop("_first_file", "_first_line")
    quarantine = pl.concat([quarantine, conflict_rows], how="diagonal_relaxed")

    messages = _first_by_file(_drop_lines(f.pop("messages"), dropped), ["session_id", "message_id"])
    calls = _first_by_file(_drop_lines(f.pop("tool_calls"), dropped), ["session_id", "tool_use_id"])
    prompts = _drop_lines(f.pop("prompts"), dropped)
    branches = f.pop("branches")
    if not branches.is_empty():
        kept = messages.select("session_id", pl.col("message_id").alias("child_message_id"), "_file")
        branches = branches.join(kept, on=["session_id", "child_message_id", "_file"], how="semi")
        branches = branches.sort(["_file", "session_id", "parent_message_id", "child_rank"]).unique(
            subset=["session_id", "parent_message_id", "child_message_id"], keep="first", maintain_order=True
        )

    prompts, messages, calls = _positions(prompts, messages, calls)
    sessions, subagents, calls, messages = _sessions(f.pop("sessions"), present, messages, calls, prompts)

    tables: dict[str, pa.Table | TableStream] = {
        "sessions": _final(sessions, "sessions", files),
        "messages": _stream(messages, "messages", files, passthrough["messages"]),
        "tool_calls": _stream(calls, "tool_calls", files, passthrough["tool_calls"]),
        "prompts": _final(prompts, "prompts", files),
        "branches": _final(branches, "branches", files),
        "subagents": _final(subagents, "subagents", files),
        "quarantine": _cast(quarantine, QUARANTINE, files),
    }
    rows = {n: t.rows if isinstance(t, TableStream) else t.num_rows for n, t in tables.items()}
    set_aside = dict(
        sorted(Counter(r for r in quarantine["reason"].to_list() if r not in LINE_REASONS).items())
    )
    return Merged(tables=tables, rows=rows, lines=+tallies, set_aside=set_aside, redactions=redactor.counts)


def _positions(
    prompts: pl.DataFrame, messages: pl.DataFrame, calls: pl.DataFrame
) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """seq, prompt_number/prompt_id and turn_index, in (source_file, line_no) order per session."""
    prompts = prompts.sort(["session_id", "_file", "line_no"]).with_columns(
        pl.int_range(pl.len()).over("session_id").cast(pl.Int64).alias("prompt_number")
    )
    ids = [digest_json([s, n]) for s, n in zip(prompts["session_id"].to_list(),
                                                 prompts["prompt_number"].to_list(), strict=True)]
    prompts = prompts.with_columns(pl.Series("prompt_id", ids, dtype=pl.String))
    lookup = prompts.select(
        "session_id", "_file", pl.col("line_no").alias("_prompt_line"), "prompt_id"
    )
    messages = messages.sort(["session_id", "_file", "line_no"]).with_columns(
        pl.int_range(pl.len()).over("session_id").cast(pl.Int64).alias("seq")
    )
    messages = messages.join(lookup, on=["session_id", "_file", "_prompt_line"], how="left")
    turn = messages.select("session_id", "message_id", pl.col("seq").alias("turn_index"))
    calls = calls.join(turn, on=["session_id", "message_id"], how="left").with_columns(
        pl.col("turn_index").fill_null(-1)
    )
    calls = calls.join(lookup, on=["session_id", "_file", "_prompt_line"], how="left")
    return prompts, messages, calls


def _sessions(
    raw: pl.DataFrame,
    present: pl.DataFrame,
    messages: pl.DataFrame,
    calls: pl.DataFrame,
    prompts: pl.DataFrame,
) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """``present``: the (session, file) pairs that kept at least one line."""
    raw = raw.join(present, on=["session_id", "_file"], how="semi").sort(["session_id", "_file"])
    firsts = [
        pl.col(c).drop_nulls().first().alias(c)
        for c in ("source_kind", "_file", "agent_version", "cwd", "git_branch", "model", "title",
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
    ).with_columns(pl.col("session_id").cast(pl.Categorical))
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
        "agent_id", "spawn_tool_use_id", pl.col("link_method").fill_null("none"), "_file",
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


def _cast(frame: pl.DataFrame, spec: TableSpec, files: pl.Series) -> pa.Table:
    """In the table's canonical order, so the runner's sort finds nothing to move."""
    frame = frame.with_columns(files.gather(frame["_file"]).alias("source_file"))
    frame = frame.sort(list(spec.sort_keys), nulls_last=True, maintain_order=True)
    table = frame.select(spec.schema.names).to_arrow()
    return pa.table([table.column(n).cast(spec.schema.field(n).type) for n in spec.schema.names], schema=spec.schema)


def _final(frame: pl.DataFrame, name: str, files: pl.Series) -> pa.Table:
    return _cast(frame, COLLECT_TABLES[name], files)


# Rows gathered per step: the writer regroups them, so this only bounds what a step holds.
_STREAM_ROWS = 8192


def _stream(frame: pl.DataFrame, name: str, files: pl.Series, passthrough: _Passthrough) -> TableStream:
    """The final table a row group at a time: the merge's columns from ``frame``, the
    passthrough columns read back from the containers for just those rows."""
    spec = COLLECT_TABLES[name]
    frame = frame.sort(list(spec.sort_keys), nulls_last=True, maintain_order=True)
    own = [n for n in spec.schema.names if n not in PASSTHROUGH_COLUMNS[name] and n != "source_file"]
    paths = files.to_arrow()
    starts = _starts(passthrough)

    def batches() -> Iterator[pa.Table]:
        for first in range(0, frame.height, _STREAM_ROWS):
            part = frame.slice(first, _STREAM_ROWS)
            columns = _gather(passthrough, starts, part["_row"].to_numpy())
            light = part.select(own).to_arrow()
            columns.update({n: light.column(n) for n in own})
            columns["source_file"] = paths.take(part["_file"].to_arrow())
            yield pa.table(
                [columns[n].cast(spec.schema.field(n).type) for n in spec.schema.names], schema=spec.schema
            )

    return TableStream(spec.schema, batches(), frame.height)


def _starts(passthrough: _Passthrough) -> np.ndarray:
    """Merge row number of each span's first row."""
    return np.cumsum([0] + [rows for _, _, rows in passthrough.spans])


def _runs(order: np.ndarray) -> list[tuple[int, int]]:
    """Maximal runs of consecutive row ids in ``order`` as (first id, length)."""
    if len(order) == 0:
        return []
    breaks = np.flatnonzero(np.diff(order) != 1) + 1
    run_starts = np.concatenate([[0], breaks])
    ends = np.concatenate([breaks, [len(order)]])
    return [(int(order[a]), int(b - a)) for a, b in zip(run_starts, ends, strict=True)]


def _gather(passthrough: _Passthrough, starts: np.ndarray, order: np.ndarray) -> dict[str, pa.ChunkedArray]:
    """The passthrough columns of merge rows ``order``, in that order.

    Containers are memory-mapped and only for this row group, so what is resident is
    about one row group's text. Rows of one file stay contiguous in canonical order, so
    they come as zero-copy slices; a badly fragmented order falls back to a take.
    """
    names = list(PASSTHROUGH_COLUMNS[passthrough.name])
    stream = passthrough_stream(passthrough.name)
    opened: dict[str, pa.Table] = {}

    def container(name: str) -> pa.Table:
        if name not in opened:
            path = container_path(passthrough.shard_dir, name)
            opened[name] = read_container(path, names=[stream], mapped=True)[0][stream]
        return opened[name]

    chunks: list[pa.Table] = []
    for first, length in _runs(order):
        while length:
            span = int(np.searchsorted(starts, first, side="right")) - 1
            name, start, rows = passthrough.spans[span]
            within = first - int(starts[span])
            count = min(length, rows - within)
            chunks.append(container(name).slice(start + within, count))
            first += count
            length -= count
    merged = pa.concat_tables(chunks).combine_chunks()  # one copy: the maps can go
    return {n: merged.column(n) for n in names}
