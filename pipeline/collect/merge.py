"""Shards -> final collect tables: the cross-file work, in DuckDB under a fixed memory
limit, so a corpus of any size merges in bounded memory (DuckDB spills to disk).

Files are parsed independently, so anything that spans files happens here, in an order
fixed by (file in display-path order, line_no) and never by discovery or worker
completion order: duplicates across files (resumed sessions copy lines with their
uuids into new files), positions within a session (seq, turn_index, prompt_number)
that a session spread over several files shares, subagent -> spawning-call links, and
per-session counts. The merge sees only keys and positions: content columns stay in
the shard containers and are read back a few thousand rows at a time as the final
tables stream into the lake. The SQL itself is in ``merge_sql``.
"""

from __future__ import annotations

import os
import shutil
import threading
from collections import Counter, OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import duckdb.func as duckdb_func
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.collect import merge_sql as sql
from pipeline.collect.redact import Redactor
from pipeline.collect.shard import (
    LINE_REASONS,
    PASSTHROUGH_COLUMNS,
    SHARD_SCHEMAS,
    STAGE_NAME,
    container_path,
    passthrough_stream,
    read_container,
    read_header,
    read_mapped,
)
from pipeline.core.hashing import digest_json
from pipeline.core.sources import TASK_FAILED, UNDECODABLE_NAME, UNREADABLE_DIR, UNREADABLE_FILE
from pipeline.core.store import TableStream
from schemas.records import COLLECT_TABLES, QUARANTINE
from schemas.tables import TableSpec

# What DuckDB may hold before it spills to disk (``TRACELAKE_MERGE_MEMORY`` overrides,
# e.g. "1GB"). Measured peaks of a whole collect: 0.64 GB at 500 MB of logs, 0.76 GB at
# 2 GB, 0.83 GB at 4 GB; 128MB still merges 4 GB (0.71 GB peak), only slower.
MEMORY_LIMIT = "256MB"
# Rows gathered per step: the writer regroups them, so this only bounds what a step holds.
_STREAM_ROWS = 2048


@dataclass
class Merged:
    tables: dict[str, TableStream]
    lines: Counter[str]
    set_aside: dict[str, int]
    redactions: Counter[str] = field(default_factory=Counter)
    redaction_rules: Counter[str] = field(default_factory=Counter)


@dataclass
class _Passthrough:
    """Where one table's passthrough columns live: the containers in ``_row`` order, each
    with the rows it numbers (so ``_row`` i is found by a search over the spans)."""

    name: str
    shard_dir: Path
    spans: list[tuple[str, int, int]]  # (container, first row, rows)


def _spill_dir(spill: Path) -> Path:
    """This process's own spill folder; folders left by dead processes (a killed run)
    are removed, live ones (a concurrent run on the same root) are left alone."""
    spill.mkdir(parents=True, exist_ok=True)
    for folder in spill.iterdir():
        if folder.name.isdigit() and not _alive(int(folder.name)):
            shutil.rmtree(folder, ignore_errors=True)
    mine = spill / str(os.getpid())
    mine.mkdir(exist_ok=True)
    return mine


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _connect(spill: Path) -> duckdb.DuckDBPyConnection:
    limit = os.environ.get("TRACELAKE_MERGE_MEMORY") or MEMORY_LIMIT
    con = duckdb.connect(config={"threads": 2, "memory_limit": limit,
                                 "temp_directory": str(spill)})
    con.create_function(
        "prompt_digest", _prompt_digests, [duckdb.sqltype("VARCHAR"), duckdb.sqltype("BIGINT")],
        duckdb.sqltype("VARCHAR"), type=duckdb_func.ARROW, null_handling=duckdb_func.SPECIAL, side_effects=False,
    )
    return con


def _prompt_digests(sessions: pa.Array, numbers: pa.Array) -> pa.Array:
    """prompt_id = digest of (session, prompt_number): positional, so a repeated "ok"
    stays two prompts."""
    ids = [digest_json([s, n]) for s, n in zip(sessions.to_pylist(), numbers.to_pylist(), strict=True)]
    return pa.array(ids, pa.string())


def _light_schema(name: str) -> pa.Schema:
    skip = PASSTHROUGH_COLUMNS.get(name, ())
    fields = [f for f in SHARD_SCHEMAS[name] if f.name not in skip]
    return pa.schema([*fields, ("_file", pa.int32()), ("_row", pa.int64())])


def _containers(members: list[dict[str, Any]], name: str) -> dict[str, list[tuple[int, int, int]]]:
    """Per container (by name), the (file index, first row, rows) of each current file
    with rows in table ``name``. A container may also hold rows of files no longer in
    the run (an older version of a changed file): those are never read."""
    out: dict[str, list[tuple[int, int, int]]] = {}
    for index, member in enumerate(members):
        if name in member["rows"]:
            start, rows = member["rows"][name]
            out.setdefault(member["container"], []).append((index, start, rows))
    return dict(sorted(out.items()))


def _load(con: duckdb.DuckDBPyConnection, shard_dir: Path, members: list[dict[str, Any]]) -> dict[str, _Passthrough]:
    """Stream each table's merge columns from the (memory-mapped) containers into
    DuckDB, a container at a time, with ``_file`` (index in merge order) and ``_row``.

    ``_row`` numbers rows container by container: it only breaks ties within one file
    (where it follows the file's own order) and finds a row's passthrough columns; the
    SQL orders by ``(_file, line_no)`` wherever merge order matters.
    """
    passthrough: dict[str, _Passthrough] = {}
    for name in SHARD_SCHEMAS:
        by_container = _containers(members, name)
        schema = _light_schema(name)
        # A container's rows up to its last current file's (``_row`` counts these).
        sizes = {c: max(start + rows for _, start, rows in files) for c, files in by_container.items()}
        if name in PASSTHROUGH_COLUMNS:
            passthrough[name] = _Passthrough(name, shard_dir, [(c, 0, n) for c, n in sizes.items()])

        def batches(by_container: dict[str, list[tuple[int, int, int]]] = by_container,
                    sizes: dict[str, int] = sizes, name: str = name,
                    schema: pa.Schema = schema) -> Iterator[pa.RecordBatch]:
            base = 0
            for container, files in by_container.items():
                path = container_path(shard_dir, container)
                size = sizes[container]
                table = read_container(path, names=[name], mapped=True)[0][name].slice(0, size)
                table = table.append_column("_file", _numpy_array(_file_index(files, size), pa.int32()))
                table = table.append_column(
                    "_row", _numpy_array(np.arange(base, base + size, dtype=np.int64), pa.int64())
                )
                base += size
                for _, start, rows in _coalesce(files):
                    yield from table.slice(start, rows).select(schema.names).cast(schema).to_batches()

        _create(con, name, pa.RecordBatchReader.from_batches(schema, batches()))
    return passthrough


def _file_index(files: list[tuple[int, int, int]], size: int) -> np.ndarray:
    """Each container row's file index (-1 for rows of files not in the run)."""
    index = np.full(size, -1, dtype=np.int32)
    for file, start, rows in files:
        index[start:start + rows] = file
    return index


def _coalesce(files: list[tuple[int, int, int]]) -> list[tuple[int, int, int]]:
    """Adjacent row ranges as one (Arrow and DuckDB are slow on thousands of chunks)."""
    out: list[tuple[int, int, int]] = []
    for file, start, rows in sorted(files, key=lambda f: f[1]):
        if out and out[-1][1] + out[-1][2] == start:
            out[-1] = (out[-1][0], out[-1][1], out[-1][2] + rows)
        else:
            out.append((file, start, rows))
    return out


def merge_shards(
    shard_dir: Path, members: list[dict[str, Any]], shard_lines: Counter[str], spill: Path,
    set_aside: Sequence[tuple[str, str, str]] = (),
) -> Merged:
    """``members`` (container, row ranges) in display-path order; ``shard_lines`` = the
    per-file line tallies summed; ``spill`` = where DuckDB may spill; ``set_aside`` =
    (redacted path, reason, detail) of files that were never parsed, one quarantine row
    (record) each; an empty detail is the reason's own."""
    spill = _spill_dir(spill)
    con = _connect(spill)
    passthrough = _load(con, shard_dir, members)
    redactor = Redactor()
    paths = [m["source_file"] for m in members]
    unread = [path for path, _, _ in set_aside]
    _create(con, "files", pa.table({"_file": pa.array(range(len(paths) + len(unread)), pa.int32()),
                                    "source_file": pa.array(paths + unread, pa.large_string())}))
    tallies = Counter(shard_lines)
    tallies.update(f"quarantined:{reason}" for _, reason, _ in set_aside)
    _create(con, "file_rows", _file_rows(len(paths), [(reason, detail) for _, reason, detail in set_aside]))

    con.execute(sql.DUPLICATES).fetchall()
    for outcome, n in con.execute(sql.DUPLICATE_OUTCOMES).fetchall():
        tallies[outcome] -= n
    exact = _scalar(con, sql.EXACT_DUPLICATES)
    conflicts = con.execute(sql.CONFLICTS).fetchall()
    tallies["exact_duplicate"] += exact
    tallies["quarantined:conflicting_duplicate"] += len(conflicts)
    _create(con, "conflict_rows", _conflict_rows(conflicts, passthrough["lines"], paths, redactor))

    for statement in (sql.PRESENT, sql.MESSAGES, sql.PROMPTS, sql.CALLS, sql.LOOSE, sql.PAIRED, sql.PAIR_CALLS,
                      sql.BRANCHES, sql.SESSIONS):
        con.execute(statement).fetchall()
    subs = _dicts(con, sql.SUBAGENT_SESSIONS)
    spawns = _dicts(con, sql.SPAWN_CALLS)
    _create(con, "links", _links_table(_link_subagents(subs, spawns)))

    # Every table streams out (nothing of the corpus's size is held here); row counts
    # come first, for the receipt.
    tables: dict[str, TableStream] = {}
    queries = sql.final_queries()
    closer = _Closer(con, len(queries), spill)
    files = pa.array(paths, pa.large_string())
    for name, final in queries.items():
        spec = QUARANTINE if name == "quarantine" else COLLECT_TABLES[name]
        segments = _segments(con, final)
        # A base table's rows are the output rows (the final joins only add columns).
        counted = final.base or f"({final.sql.format(where='TRUE')})"
        count = _scalar(con, f"SELECT count(*) FROM {counted}")
        tables[name] = _stream(con, segments, spec, passthrough.get(name), count, closer, files)
    quarantine = queries["quarantine"].sql.format(where="TRUE")
    reasons = con.execute(f"SELECT reason, count(*) FROM ({quarantine}) GROUP BY ALL").fetchall()
    below_lines = {r: int(n) for r, n in sorted(reasons) if r not in LINE_REASONS}
    return Merged(tables=tables, lines=+tallies, set_aside=below_lines, redactions=redactor.counts,
                  redaction_rules=redactor.rules)


# Rows a sort may hold at once (a range of whole sessions; one session bigger than this
# is its own range).
_RANGE_ROWS = 64 * 1024


def _segments(con: duckdb.DuckDBPyConnection, final: sql.FinalQuery) -> list[tuple[str, list[Any]]]:
    """The query once per range of sessions, in order (or once, for tables without a
    base): each range sorts on its own, and the ranges concatenate in canonical order."""
    if final.base is None:
        return [(final.sql.format(where="TRUE"), [])]
    counts = con.execute(
        f"SELECT session_id, count(*) FROM {final.base} GROUP BY ALL ORDER BY session_id NULLS LAST"
    ).fetchall()
    bounds: list[str] = []
    held = 0
    for session, n in counts:
        if session is None:
            break
        if held and held + n > _RANGE_ROWS:
            bounds.append(session)
            held = 0
        held += n
    column = final.column
    edges: list[str | None] = [None, *bounds, None]
    segments = []
    for low, high in zip(edges, edges[1:], strict=False):
        parts, params = [f"{column} IS NOT NULL"], []
        if low is not None:
            parts.append(f"{column} >= ?")
            params.append(low)
        if high is not None:
            parts.append(f"{column} < ?")
            params.append(high)
        segments.append((final.sql.format(where=" AND ".join(parts)), params))
    if counts and counts[-1][0] is None:
        segments.append((final.sql.format(where=f"{column} IS NULL"), []))
    return segments


def _numpy_array(values: np.ndarray, typ: pa.DataType) -> pa.Array:
    """Without ``pa.array`` (which imports pandas, ~0.4 s, to check a numpy argument)."""
    return pa.Array.from_buffers(typ, len(values), [None, pa.py_buffer(np.ascontiguousarray(values))])


def _create(con: duckdb.DuckDBPyConnection, name: str, data: pa.Table | pa.RecordBatchReader) -> None:
    """A table every cursor sees (a registered view is private to its connection)."""
    con.register("incoming", data)
    con.execute(f"CREATE TABLE {name} AS SELECT * FROM incoming").fetchall()
    con.unregister("incoming")


def _scalar(con: duckdb.DuckDBPyConnection, query: str) -> int:
    rows = con.execute(query).fetchall()
    return int(rows[0][0]) if rows else 0


def _dicts(con: duckdb.DuckDBPyConnection, query: str) -> list[dict[str, Any]]:
    result = con.execute(query)
    names = [d[0] for d in result.description]
    return [dict(zip(names, row, strict=True)) for row in result.fetchall()]


_FILE_DETAIL = {
    UNREADABLE_FILE: "the file could not be read (permissions?); nothing in it was parsed",
    UNREADABLE_DIR: "the folder could not be listed (permissions?); no file under it was parsed",
    UNDECODABLE_NAME: "the path is not UTF-8, so no table can hold it; the file was not parsed",
    TASK_FAILED: "its parse failed on every attempt on the executor's pool; the next run parses it again",
}


def _file_rows(first: int, reasons: list[tuple[str, str]]) -> pa.Table:
    """Quarantine rows for whole files set aside before parsing (``files`` rows from
    ``first`` on), each (reason, detail)."""
    n = len(reasons)
    return pa.table({
        "stage": pa.array([STAGE_NAME] * n, pa.large_string()),
        "_file": pa.array(range(first, first + n), pa.int32()),
        "line_no": pa.nulls(n, pa.int64()),
        "record_id": pa.nulls(n, pa.large_string()),
        "session_id": pa.nulls(n, pa.large_string()),
        "reason": pa.array([reason for reason, _ in reasons], pa.large_string()),
        "detail": pa.array([detail or _FILE_DETAIL[reason] for reason, detail in reasons], pa.large_string()),
        "_row": pa.array(range(n), pa.int64()),
    })


def _conflict_rows(
    conflicts: list[tuple[Any, ...]], lines: _Passthrough, paths: list[str], redactor: Redactor
) -> pa.Table:
    """Quarantine rows for records reusing a key with other bytes, naming the record (its
    key, read back from the shards) and where the kept copy is."""
    rows = np.array([c[2] for c in conflicts], dtype=np.int64)
    keys = _gather(lines, _starts(lines), rows)["key"].to_pylist() if len(rows) else []
    details = [
        redactor.redact(f"record id reused with different content; the copy at {paths[ff]}:{fl} kept")
        for _, _, _, _, ff, fl in conflicts
    ]
    return pa.table({
        "stage": pa.array([STAGE_NAME] * len(conflicts), pa.large_string()),
        "_file": pa.array([c[0] for c in conflicts], pa.int32()),
        "line_no": pa.array([c[1] for c in conflicts], pa.int64()),
        "record_id": pa.array(keys, pa.large_string()),
        "session_id": pa.array([c[3] for c in conflicts], pa.large_string()),
        "reason": pa.array(["conflicting_duplicate"] * len(conflicts), pa.large_string()),
        "detail": pa.array(details, pa.large_string()),
        "_row": _numpy_array(rows, pa.int64()),
    })


def _links_table(links: list[tuple[Any, ...]]) -> pa.Table:
    columns = list(zip(*links, strict=True)) if links else [()] * 5
    names = ["session_id", "parent_session_id", "spawn_tool_use_id", "link_method", "inherited_prompt"]
    return pa.table({n: pa.array(list(c), pa.large_string()) for n, c in zip(names, columns, strict=True)})


def _link_subagents(rows: list[dict[str, Any]], spawns: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """Subagent -> spawning call: toolUseResult.agentId, then meta.json toolUseId, then
    the spawn prompt. Never by time: an unmatched subagent stays linked to its root only."""
    """``rows``: the subagent sessions by id; ``spawns``: the Task/Agent calls in call order."""
    if not rows:
        return []
    roots = {sub["session_id"]: sub["_root_session_id"] for sub in rows}
    by_agent: dict[tuple[str, str], dict[str, Any]] = {}
    by_id: dict[tuple[str, str], dict[str, Any]] = {}
    by_prompt: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for spawn in spawns:
        root = roots.get(spawn["session_id"], spawn["session_id"])
        if spawn["_agent_id"]:
            by_agent.setdefault((root, spawn["_agent_id"]), spawn)
        by_id.setdefault((root, spawn["tool_use_id"]), spawn)
        if spawn["_spawn_digest"]:
            by_prompt.setdefault((root, spawn["_spawn_digest"]), []).append(spawn)
    found: dict[str, tuple[dict[str, Any] | None, str]] = {}
    used: set[str] = set()
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


class _Closer:
    """Closes the merge database once every stream has been read: its threads must not
    outlive the stage (a later ``fork`` would copy a process with them mid-flight)."""

    def __init__(self, con: duckdb.DuckDBPyConnection, streams: int, spill: Path) -> None:
        self.con, self.left, self.spill = con, streams, spill
        self.lock = threading.Lock()  # streams end in the runner's writer threads

    def done(self) -> None:
        with self.lock:
            self.left -= 1
            if self.left == 0:
                self.con.close()
                shutil.rmtree(self.spill, ignore_errors=True)


def _stream(
    con: duckdb.DuckDBPyConnection,
    segments: list[tuple[str, list[Any]]],
    spec: TableSpec,
    passthrough: _Passthrough | None,
    rows: int,
    closer: _Closer,
    files: pa.Array,
) -> TableStream:
    """A final table a few thousand rows at a time: the merge's columns from DuckDB (its
    own cursor, so two tables can stream at once), ``_file`` mapped to its path, and
    the passthrough columns, if the table has any, read back from the containers for
    just those rows."""
    cursor = con.cursor()
    schema = spec.schema

    def batches() -> Iterator[pa.Table]:
        starts = _starts(passthrough) if passthrough is not None else None
        containers = _Open(passthrough) if passthrough is not None else None
        try:
            for query, params in segments:
                for batch in cursor.sql(query, params=params).to_arrow_reader(_STREAM_ROWS):
                    columns: dict[str, pa.Array | pa.ChunkedArray] = {
                        n: batch.column(n) for n in batch.schema.names if n not in ("_row", "_file")
                    }
                    if "_file" in batch.schema.names:
                        columns["source_file"] = files.take(batch.column("_file"))
                    if passthrough is not None and starts is not None:
                        order = batch.column("_row").to_numpy()
                        columns.update(_gather(passthrough, starts, order, containers))
                    if "_over" in batch.schema.names:  # a call whose result came from another file
                        over = batch.column("_over")
                        for name in sql.PAIRED_COLUMNS:
                            taken = batch.column(f"_over_{name}").cast(columns[name].type)
                            columns[name] = pc.if_else(over, taken, columns[name])
                    yield pa.table([columns[n].cast(schema.field(n).type) for n in schema.names], schema=schema)
        finally:
            cursor.close()
            closer.done()

    return TableStream(schema, batches(), rows)


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


class _Open:
    """The passthrough streams of the few containers a stream is reading from.

    Memory-mapped, so only pages a gather touches are read, and only the last
    ``_KEEP_OPEN`` containers stay mapped: canonical order walks a project's sessions
    in about the order its containers hold them, so consecutive batches mostly hit the
    same containers, and what stays resident is bounded whatever the corpus size.
    """

    def __init__(self, passthrough: _Passthrough) -> None:
        self.passthrough = passthrough
        self.stream = passthrough_stream(passthrough.name)
        self.tables: OrderedDict[str, pa.Table] = OrderedDict()
        self.headers: dict[str, tuple[int, dict[str, Any]]] = {}  # a re-map skips the parse

    def __call__(self, name: str) -> pa.Table:
        table = self.tables.get(name)
        if table is None:
            path = container_path(self.passthrough.shard_dir, name)
            if name not in self.headers:
                self.headers[name] = read_header(path)
            base, header = self.headers[name]
            table = read_mapped(path, base, header, self.stream)
            self.tables[name] = table
            if len(self.tables) > _KEEP_OPEN:
                self.tables.popitem(last=False)
        else:
            self.tables.move_to_end(name)
        return table


_KEEP_OPEN = 6


def _gather(
    passthrough: _Passthrough, starts: np.ndarray, order: np.ndarray, container: _Open | None = None
) -> dict[str, pa.ChunkedArray]:
    """The passthrough columns of merge rows ``order``, in that order (copied out of
    the maps). Rows of one file stay contiguous in canonical order, so they come as
    zero-copy slices before the one copy."""
    names = list(PASSTHROUGH_COLUMNS[passthrough.name])
    container = container or _Open(passthrough)
    # Canonical order interleaves sessions from many containers (session ids are random),
    # so each container this gather needs is mapped once here, not once per run.
    held: dict[str, pa.Table] = {}
    chunks: list[pa.Table] = []
    for first, length in _runs(order):
        while length:
            span = int(np.searchsorted(starts, first, side="right")) - 1
            name, start, rows = passthrough.spans[span]
            within = first - int(starts[span])
            count = min(length, rows - within)
            table = held.get(name)
            if table is None:
                table = held[name] = container(name)
            chunks.append(table.slice(start + within, count))
            first += count
            length -= count
    merged = pa.concat_tables(chunks).combine_chunks()
    return {n: merged.column(n) for n in names}
