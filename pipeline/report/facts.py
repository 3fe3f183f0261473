"""What a run's report shows, read from the run's DuckDB views and its drift report.

Every number comes from a query over the same views `tracelake sql` serves (signed
receipts and the Parquet objects they name), so the page cannot disagree with them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

TOP_TOOLS = 15  # the tools with the most calls; the rest are summed into one row


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StageRow(_Model):
    stage: str
    status: str
    cache_hit: bool
    records_in: int
    records_out: int
    quarantined: int
    filtered: int


class SetAside(_Model):
    stage: str
    reason: str
    count: int


class Count(_Model):
    label: str
    count: int


class ToolErrors(_Model):
    tool: str
    calls: int
    errors: int

    @property
    def rate(self) -> float:
        return self.errors / self.calls if self.calls else 0.0


class Redaction(_Model):
    kind: str
    values: int
    placeholders: int


class DriftLine(_Model):
    severity: str
    kind: str
    message: str


class LossPoint(_Model):
    step: int
    loss: float


class EvalLine(_Model):
    metric: str
    base: float | None
    adapter: float | None
    delta: float | None
    gate: str | None
    passed: bool | None


class ReportFacts(_Model):
    run_id: str
    run_hash: str
    tracelake_version: str
    stages: list[StageRow]
    set_aside: list[SetAside]
    categories: list[Count]
    tools: list[ToolErrors]
    redactions: list[Redaction]
    drift_against: str | None
    drift_severity: str
    drift: list[DriftLine]
    loss: list[LossPoint]  # the train stage's steps; empty when the run trained nothing
    evaluation: list[EvalLine] = []  # the eval stage's scorecard; empty when the run evaluated nothing


def gather(root: Path, run_id: str | None) -> ReportFacts:
    from pipeline.core.receipts import load_run_summary
    from pipeline.core.store import LakeLayout
    from pipeline.core.trust import load_trusted
    from pipeline.drift import compute_drift, resolve_thresholds
    from pipeline.sql import connect

    con, resolved = connect(root, run_id)
    views = {row[0] for row in con.execute("SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall()}
    views |= {row[0] for row in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()}
    layout = LakeLayout(root.resolve())
    drift = compute_drift(layout, resolved, None, resolve_thresholds({}), load_trusted(layout))
    version = con.execute("SELECT any_value(tracelake_version) FROM receipts").fetchone()
    run_hash = load_run_summary(layout, resolved, load_trusted(layout)).run_hash
    return ReportFacts(
        run_id=resolved,
        run_hash=run_hash,
        tracelake_version=str(version[0]) if version and version[0] else "?",
        stages=[StageRow(**r) for r in _rows(con, STAGES_SQL)],
        set_aside=[SetAside(**r) for r in _rows(con, SET_ASIDE_SQL)] if "quarantine" in views else [],
        categories=[Count(**r) for r in _rows(con, CATEGORIES_SQL)] if "scores" in views else [],
        tools=[ToolErrors(**r) for r in _rows(con, TOOLS_SQL)] if "tool_calls" in views else [],
        redactions=[Redaction(**r) for r in _rows(con, REDACTIONS_SQL)] if "redactions" in views else [],
        drift_against=drift.against_run_id,
        drift_severity=drift.severity,
        drift=[DriftLine(severity=f.severity, kind=f.kind, message=f.message) for f in drift.findings],
        loss=[LossPoint(**r) for r in _rows(con, LOSS_SQL)] if "train_steps" in views else [],
        evaluation=[EvalLine(**r) for r in _rows(con, EVAL_SQL)] if "eval" in views else [],
    )


STAGES_SQL = """
SELECT stage, status, cache_hit, records_in, records_out, quarantined, filtered FROM receipts
"""
SET_ASIDE_SQL = """
SELECT stage, reason, count(*) AS count FROM quarantine GROUP BY ALL ORDER BY count DESC, stage, reason
"""
CATEGORIES_SQL = """
SELECT category AS label, count(*) AS count FROM scores GROUP BY ALL ORDER BY count DESC, label
"""
TOOLS_SQL = f"""
WITH per_tool AS (
    SELECT name AS tool, count(*) AS calls, count(*) FILTER (WHERE is_error) AS errors
    FROM tool_calls GROUP BY ALL
), ranked AS (
    SELECT *, row_number() OVER (ORDER BY calls DESC, tool) AS rank FROM per_tool
)
SELECT tool, calls, errors FROM (
    SELECT tool, calls, errors, rank FROM ranked WHERE rank <= {TOP_TOOLS}
    UNION ALL
    SELECT '(other tools)', sum(calls)::BIGINT, sum(errors)::BIGINT, {TOP_TOOLS} + 1
    FROM ranked WHERE rank > {TOP_TOOLS} HAVING count(*) > 0
) ORDER BY rank
"""
LOSS_SQL = "SELECT step, loss FROM train_steps ORDER BY step"
EVAL_SQL = "SELECT metric, base, adapter, delta, gate, passed FROM eval ORDER BY gate IS NULL, metric"
REDACTIONS_SQL = """
SELECT kind, sum(values_redacted)::BIGINT AS values, sum(placeholders)::BIGINT AS placeholders
FROM redactions GROUP BY ALL ORDER BY placeholders DESC, kind
"""


def _rows(con: Any, sql: str) -> list[dict[str, Any]]:
    cursor = con.execute(sql)
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
