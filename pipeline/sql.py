"""DuckDB over a run: one view per table, a `quarantine` union, `receipts`, `lineage`,
and every run's `receipt_history`, `artifacts` and `run_inputs`."""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
from pydantic import BaseModel

from pipeline.core.hashing import CacheMac
from pipeline.core.history import history_rows
from pipeline.core.receipts import load_run_receipts, load_run_summary, resolve_run
from pipeline.core.store import LakeLayout
from pipeline.core.trust import TrustedKeys, load_trusted
from schemas.receipt import StageReceipt
from schemas.sql import ArtifactRow, ReceiptRow, RunInputRow
from schemas.tables import arrow_schema


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def receipt_rows(receipts: list[StageReceipt]) -> list[dict[str, Any]]:
    return [
        ReceiptRow(
            run_id=r.run_id,
            stage=r.stage,
            stage_version=r.stage_version,
            status=r.status,
            cache_hit=r.cache_hit,
            cache_key=r.cache_key,
            config_hash=r.config_hash,
            records_in=r.records_in,
            records_out=r.records_out,
            quarantined=sum(r.quarantined.values()),
            filtered=sum(r.filtered.values()),
            quarantined_by_reason=json.dumps(r.quarantined, sort_keys=True),
            filtered_by_reason=json.dumps(r.filtered, sort_keys=True),
            validation_passed=r.validation.passed,
            validation_errors=json.dumps(r.validation.errors),
            started_at=r.timings.started_at,
            finished_at=r.timings.finished_at,
            duration_s=r.timings.duration_s,
            recorded_at=r.recorded_at,
            git_sha=r.git_sha,
            tracelake_version=r.tracelake_version,
            executor=r.execution.executor if r.execution else None,
            tasks=r.execution.tasks if r.execution else None,
            retries=r.execution.retries if r.execution else None,
            failed_tasks=r.execution.failed if r.execution else None,
        ).model_dump()
        for r in receipts
    ]


def artifact_rows(receipts: list[StageReceipt]) -> list[dict[str, Any]]:
    return [
        ArtifactRow(run_id=r.run_id, stage=r.stage, name=a.name, digest=a.digest, files=len(a.files),
                    bytes=a.bytes, path=a.path).model_dump()
        for r in receipts for a in r.artifacts
    ]


def input_rows(receipts: list[StageReceipt]) -> list[dict[str, Any]]:
    rows = []
    for r in receipts:
        for i in r.inputs:
            kind = i.name.partition(":")[0] if ":" in i.name else "table"
            digest = i.sha256 if kind in ("external", "artifact") and i.sha256 else i.xxh3_128
            rows.append(RunInputRow(run_id=r.run_id, stage=r.stage, input=i.name, kind=kind, digest=digest,
                                    rows=i.rows, location=i.location).model_dump())
    return rows


# The history rows' columns: rows cached under other columns are built again.
_ROWS_SHAPE = "|".join(",".join(model.model_fields) for model in (ReceiptRow, ArtifactRow, RunInputRow))


def _run_rows(receipts: list[StageReceipt]) -> dict[str, list[dict[str, Any]]]:
    return {"receipts": receipt_rows(receipts), "artifacts": artifact_rows(receipts), "inputs": input_rows(receipts)}


def receipts_table(receipts: list[StageReceipt]) -> pa.Table:
    return _rows_table(ReceiptRow, receipt_rows(receipts))


def _rows_table(model: type[BaseModel], rows: list[dict[str, Any]]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=arrow_schema(model))


def _register(con: duckdb.DuckDBPyConnection, name: str, table: pa.Table) -> None:
    con.register("_arrow", table)
    con.execute(f"CREATE OR REPLACE TABLE {_quote(name)} AS SELECT * FROM _arrow")
    con.unregister("_arrow")


def define_views(
    con: duckdb.DuckDBPyConnection, layout: LakeLayout, run_id: str, keys: TrustedKeys,
    relative: bool = False, mac: CacheMac | None = None,
) -> list[str]:
    """Create the run's views on ``con`` from its signed statement and receipts (each
    verified with ``keys``); returns the view names. ``receipt_history`` leaves out runs
    whose receipts do not verify. ``relative``: the views name their Parquet files by
    their path in the root (``data/objects/...``), which DuckDB resolves from the folder
    it runs in: a database file that outlives this process then works wherever the root
    is moved or copied, opened from the root. ``mac``: keep each run's history rows in
    the lake's cache (``pipeline.core.history``) instead of verifying every run again."""
    summary = load_run_summary(layout, run_id, keys)
    names: list[str] = []
    if relative:  # resolve them here as they will be there
        con.execute(f"SET file_search_path = '{layout.root.resolve().as_posix().replace(chr(39), chr(39) * 2)}'")
    def view(name: str, relative_path: str) -> None:
        where = Path(relative_path) if relative else (layout.root / relative_path).resolve()
        path = where.as_posix().replace("'", "''")
        con.execute(f"CREATE OR REPLACE VIEW {_quote(name)} AS SELECT * FROM read_parquet('{path}')")
        names.append(name)

    order = {status.stage: i for i, status in enumerate(summary.stages)}
    run_receipts = sorted(load_run_receipts(layout, run_id, keys), key=lambda r: order.get(r.stage, 99))
    for name, ref in summary.tables.items():
        view(name, ref.path)
    # A stage that ran and failed only its validation (a failed eval gate, a firewall
    # finding) wrote and signed its tables: they stay queryable under their names, for
    # the run where they matter most; the receipts view says the stage failed. They are
    # no input of any later stage (the run skipped those).
    for receipt in run_receipts:
        if receipt.status != "ok" and receipt.error is None:
            for ref in receipt.outputs:
                if ref.name not in names:
                    view(ref.name, ref.path)
    quarantines = [n for n in names if n.endswith("_quarantine")]
    if quarantines:
        union = " UNION ALL BY NAME ".join(f"SELECT * FROM {_quote(n)}" for n in quarantines)
        con.execute(f"CREATE OR REPLACE VIEW quarantine AS {union}")
        names.append("quarantine")
    _register(con, "receipts", receipts_table(run_receipts))
    history = history_rows(layout, keys, _run_rows, mac, _ROWS_SHAPE)
    _register(con, "receipt_history", _rows_table(ReceiptRow, history.receipts))
    # Every run's artifacts and inputs: "which runs used this model digest".
    _register(con, "artifacts", _rows_table(ArtifactRow, history.artifacts))
    _register(con, "run_inputs", _rows_table(RunInputRow, history.inputs))
    names += ["receipts", "receipt_history", "artifacts", "run_inputs"]
    names += _define_adapters(con, run_receipts, set(summary.tables))
    names += _define_redactions(con, [n for n in names if n in summary.tables], run_receipts)
    lineage_sql = _lineage_sql(set(names))
    if lineage_sql:
        con.execute(lineage_sql)
        names.append("lineage")
    return names


def _define_adapters(con: duckdb.DuckDBPyConnection, receipts: list[StageReceipt], tables: set[str]) -> list[str]:
    """``adapters``: every adapter this run's train stage made, with the digests of its
    base model and its data; ``adapter_lineage``: the train-split examples (and their
    sessions and source files) each learned from, so both "which adapters learned from
    this file" and "which sessions did this adapter learn from" are one WHERE."""
    rows = []
    for receipt in receipts:
        inputs = {i.name: i for i in receipt.inputs}
        for artifact in receipt.artifacts:
            if artifact.name != "adapter":
                continue
            probe = receipt.stats.get("probe")
            rows.append({
                "adapter": artifact.digest, "run_id": receipt.run_id, "stage": receipt.stage,
                "path": artifact.path, "bytes": artifact.bytes,
                "base_model": inputs["external:model"].sha256 if "external:model" in inputs else None,
                **{name: inputs[name].xxh3_128 if name in inputs else None
                   for name in ("collated_sft", "collated_sdpo", "collated_preference")},
                "objectives": json.dumps(receipt.stats.get("objectives", {"sft": 1.0}), sort_keys=True),
                "probe_verdict": probe.get("verdict") if isinstance(probe, dict) else None,
            })
    if not rows:
        return []
    con.register("_adapters_arrow", pa.Table.from_pylist(rows))
    con.execute("CREATE OR REPLACE TABLE adapters AS SELECT * FROM _adapters_arrow")
    con.unregister("_adapters_arrow")
    names = ["adapters"]
    if {"train_rows", "sessions"} <= tables:
        con.execute(
            "CREATE OR REPLACE VIEW adapter_lineage AS SELECT a.adapter, t.objective, t.task_id, t.session_id, "
            "s.source_file, t.times_seen FROM adapters a JOIN train_rows t ON a.stage = 'train' "
            "JOIN sessions s ON s.session_id = t.session_id"
        )
        names.append("adapter_lineage")
    return names


_PLACEHOLDER_KIND = r"\[REDACTED:([a-z0-9_]+)\]"
_STRING_TYPES = ("VARCHAR", "JSON")
_RID = '"__redactions_row"'  # a row number no lake column is named


def _define_redactions(con: duckdb.DuckDBPyConnection, tables: list[str], receipts: list[StageReceipt]) -> list[str]:
    """``redaction_rules``: how many values each rule redacted in the run (the collect
    receipt's signed tally). ``redactions``: per table, column and kind, how many values
    hold a placeholder and how many placeholders there are (counted in the lake, so
    exact per column), with the rules that produced that kind. Never a value: only
    placeholders are read."""
    from pipeline.secrets.catalogue import kind_of

    rules = []
    for r in receipts:
        tally = r.stats.get("redaction_rules")
        for rule, n in sorted(tally.items()) if isinstance(tally, dict) else ():
            rules.append({"run_id": r.run_id, "stage": r.stage, "rule_id": str(rule), "kind": kind_of(str(rule)),
                          "redactions": int(n)})
    schema = pa.schema([("run_id", pa.string()), ("stage", pa.string()), ("rule_id", pa.string()),
                        ("kind", pa.string()), ("redactions", pa.int64())])
    con.register("_rules_arrow", pa.Table.from_pylist(rules, schema=schema))
    con.execute("CREATE OR REPLACE TABLE redaction_rules AS SELECT * FROM _rules_arrow")
    con.unregister("_rules_arrow")
    # One part per table, its string columns unpivoted: DuckDB binds each part (and
    # reads its Parquet footers) once, not once per column.
    columns: dict[str, list[str]] = {}
    described = con.execute(
        "SELECT table_name, column_name, data_type FROM duckdb_columns() WHERE table_name IN (SELECT unnest(?::VARCHAR[]))",
        [tables],
    ).fetchall() if tables else []
    for table, column, dtype in described:
        if dtype in _STRING_TYPES or dtype.endswith("]") or dtype.startswith(("STRUCT", "MAP")):
            columns.setdefault(table, []).append(column)
    parts = []
    for table in sorted(columns):
        names = ", ".join(_quote(c) for c in columns[table])
        as_text = ", ".join(f"CAST({_quote(c)} AS VARCHAR) AS {_quote(c)}" for c in columns[table])
        parts.append(
            f"SELECT '{table}' AS table_name, column_name, {_RID} AS rid, "
            f"regexp_extract_all(v, '{_PLACEHOLDER_KIND}', 1) AS kinds "
            f"FROM (SELECT row_number() OVER () AS {_RID}, {as_text} FROM {_quote(table)}) "
            f"UNPIVOT (v FOR column_name IN ({names})) "
            f"WHERE contains(v, '[REDACTED:')"
        )
    if not parts:
        parts.append("SELECT NULL::VARCHAR AS table_name, NULL::VARCHAR AS column_name, NULL::BIGINT AS rid, "
                     "[]::VARCHAR[] AS kinds WHERE false")
    found = " UNION ALL ".join(parts)
    con.execute(f"""
        CREATE OR REPLACE VIEW redactions AS
        WITH found AS ({found}),
        per_value AS (
            SELECT table_name, column_name, kind, count(*) AS n
            FROM (SELECT table_name, column_name, rid, unnest(kinds) AS kind FROM found)
            GROUP BY table_name, column_name, rid, kind
        ),
        per_kind AS (
            SELECT table_name, column_name, kind, count(*) AS values_redacted, sum(n)::BIGINT AS placeholders
            FROM per_value GROUP BY ALL
        ),
        rules AS (
            SELECT kind, string_agg(rule_id, ', ' ORDER BY rule_id) AS rule_ids FROM redaction_rules GROUP BY kind
        )
        SELECT p.table_name, p.column_name, p.kind, p.values_redacted, p.placeholders, r.rule_ids
        FROM per_kind p LEFT JOIN rules r USING (kind)
        ORDER BY p.table_name, p.column_name, p.placeholders DESC, p.kind
    """)
    return ["redaction_rules", "redactions"]


def _lineage_sql(tables: set[str]) -> str | None:
    try:
        from pipeline.audit.lineage import lineage_view_sql
    except ImportError:
        return None
    return lineage_view_sql(tables)


def connect(root: Path, run_id: str | None = None) -> tuple[duckdb.DuckDBPyConnection, str]:
    layout = LakeLayout(root.resolve())
    resolved = resolve_run(layout, run_id)
    con = duckdb.connect()
    define_views(con, layout, resolved, load_trusted(layout))
    return con, resolved


def write_lake_db(layout: LakeLayout, run_id: str, mac: CacheMac | None = None) -> Path:
    """Persist the latest run's views into data/lake.duckdb (built aside, then renamed),
    with paths relative to the root: open it from the root (``cd ROOT && duckdb
    data/lake.duckdb``), wherever the root now is."""
    layout.data.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=".tmp-lake-", suffix=".duckdb", dir=layout.data)
    os.close(fd)
    os.unlink(tmp_name)
    try:
        con = duckdb.connect(tmp_name)
        try:
            define_views(con, layout, run_id, load_trusted(layout), relative=True, mac=mac)
            con.execute("CHECKPOINT")
        finally:
            con.close()
        os.replace(tmp_name, layout.duckdb_file)
    finally:
        for leftover in (tmp_name, tmp_name + ".wal"):
            if os.path.exists(leftover):
                os.unlink(leftover)
    return layout.duckdb_file


def query(con: duckdb.DuckDBPyConnection, sql: str) -> tuple[list[str], list[tuple[Any, ...]]]:
    cursor = con.execute(sql)
    columns = [d[0] for d in cursor.description] if cursor.description else []
    return columns, cursor.fetchall()


def _jsonable(value: Any) -> Any:
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return str(value)


def format_json(columns: list[str], rows: list[tuple[Any, ...]]) -> str:
    return json.dumps([{c: _jsonable(v) for c, v in zip(columns, row, strict=True)} for row in rows], ensure_ascii=False, indent=2)


def format_csv(columns: list[str], rows: list[tuple[Any, ...]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows([[_jsonable(v) for v in row] for row in rows])
    return buffer.getvalue()
