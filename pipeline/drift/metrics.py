"""Counts worth comparing between runs, read from signed receipts and the lake.

Every metric carries a *scope*: the stage or table that must exist in both runs for the
comparison to mean anything. A stage added since the earlier run is not a +inf% swing,
and a run without a ``scores`` table has no category distribution to compare.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.core.errors import SignatureError
from pipeline.core.receipts import load_envelope, open_receipt, run_receipt_paths
from pipeline.core.store import LakeLayout
from schemas.datasets import DATASET_TABLES
from schemas.drift import DriftThresholds, Finding, MetricDelta
from schemas.receipt import ObjectRef, StageReceipt

MetricKey = tuple[str, str]  # (group, key)
CATEGORY_TABLE, CATEGORY_COLUMN = "scores", "category"
ERROR_TABLE, ERROR_COLUMN = "tool_calls", "error_kind"
NULL_LABEL = "(null)"


@dataclass
class RunView:
    """One run as drift sees it: receipts by stage (unverified here; verify_run checks them)."""

    run_id: str
    receipts: dict[str, StageReceipt] = field(default_factory=dict)
    unreadable: dict[str, str] = field(default_factory=dict)  # receipt file -> error

    @property
    def ok_receipts(self) -> list[StageReceipt]:
        return [r for _, r in sorted(self.receipts.items()) if r.status == "ok"]

    def tables(self) -> dict[str, ObjectRef]:
        return {ref.name: ref for r in self.ok_receipts for ref in r.outputs}


def load_view(layout: LakeLayout, run_id: str) -> RunView:
    view = RunView(run_id)
    for path in run_receipt_paths(layout, run_id):
        try:
            receipt, _ = open_receipt(load_envelope(path), None)
        except (OSError, ValueError, KeyError, TypeError, SignatureError) as exc:
            view.unreadable[path.name] = f"{type(exc).__name__}: {exc}"
            continue
        view.receipts[receipt.stage] = receipt
    return view


@dataclass
class Metrics:
    counts: dict[MetricKey, int] = field(default_factory=dict)
    scope: dict[MetricKey, str] = field(default_factory=dict)
    scopes: set[str] = field(default_factory=set)

    def put(self, group: str, key: str, value: int, scope: str) -> None:
        self.counts[(group, key)] = self.counts.get((group, key), 0) + value
        self.scope[(group, key)] = scope


def value_counts(path: Path, column: str) -> dict[str, int]:
    """Distribution of one column; vectorised so a million-row table stays cheap."""
    table = pq.read_table(path, columns=[column])
    counts = pc.value_counts(table.column(column).combine_chunks())
    return {
        NULL_LABEL if item["values"] is None else str(item["values"]): int(item["counts"])
        for item in counts.to_pylist()
    }


def _column_counts(layout: LakeLayout, ref: ObjectRef, column: str) -> dict[str, int] | None:
    path = layout.root / ref.path
    try:
        if column not in pq.read_schema(path).names:
            return None
        return value_counts(path, column)
    except (OSError, pa.ArrowException):
        return None  # a missing or broken object is reported by the integrity check


def run_metrics(layout: LakeLayout, view: RunView) -> Metrics:
    metrics = Metrics()
    for receipt in view.ok_receipts:
        stage_scope = f"stage:{receipt.stage}"
        metrics.scopes.add(stage_scope)
        metrics.put("stage", f"{receipt.stage}.records_in", receipt.records_in, stage_scope)
        metrics.put("stage", f"{receipt.stage}.records_out", receipt.records_out, stage_scope)
        for reason, count in receipt.quarantined.items():
            metrics.put("quarantine", f"{receipt.stage}:{reason}", count, stage_scope)
        for ref in receipt.outputs:
            if ref.name.endswith("_quarantine"):
                continue  # covered reason by reason above
            group = "dataset" if ref.name in DATASET_TABLES else "table"
            metrics.scopes.add(f"table:{ref.name}")
            metrics.put(group, ref.name, ref.rows, f"table:{ref.name}")
    tables = view.tables()
    for table, column, group in (
        (CATEGORY_TABLE, CATEGORY_COLUMN, "category"),
        (ERROR_TABLE, ERROR_COLUMN, "error_kind"),
    ):
        counts = _column_counts(layout, tables[table], column) if table in tables else None
        if counts is None:
            continue
        scope = f"column:{table}.{column}"
        metrics.scopes.add(scope)
        for value, count in counts.items():
            if group == "error_kind" and value == NULL_LABEL:
                continue  # calls without an error are not an error kind
            metrics.put(group, value, count, scope)
    _reach_metrics(layout, tables, metrics)
    return metrics


def _reach_metrics(layout: LakeLayout, tables: dict[str, ObjectRef], metrics: Metrics) -> None:
    """Per source kind, the prompts collect kept and the tasks score graded: a client
    whose tasks stop reaching score (a format change) shows as a falling share."""
    if not {"prompts", "sessions", CATEGORY_TABLE} <= tables.keys():
        return
    try:
        sessions = pq.read_table(layout.root / tables["sessions"].path, columns=["session_id", "source_kind"])
        prompts = pq.read_table(layout.root / tables["prompts"].path, columns=["session_id"])
        kinds = prompts.join(sessions, "session_id", join_type="left outer")
        prompted = pc.value_counts(kinds.column("source_kind").combine_chunks()).to_pylist()
        scored = _column_counts(layout, tables[CATEGORY_TABLE], "source_kind") or {}
    except (OSError, KeyError, pa.ArrowException):
        return  # a missing or broken object is reported by the integrity check
    metrics.scopes.add("reach")
    for item in prompted:
        kind = NULL_LABEL if item["values"] is None else str(item["values"])
        metrics.put("reach", f"{kind}.prompts", int(item["counts"]), "reach")
        metrics.put("reach", f"{kind}.scored", scored.get(kind, 0), "reach")


def reach_findings(before: Metrics, after: Metrics, thresholds: DriftThresholds) -> list[Finding]:
    """A source whose share of prompts that reach score fell by ``warn_pct`` / ``alert_pct``
    of its earlier share (and by ``min_abs_change`` tasks at least)."""
    findings: list[Finding] = []
    if "reach" not in before.scopes or "reach" not in after.scopes:
        return findings
    kinds = sorted({name.rpartition(".")[0] for m in (before, after) for group, name in m.counts if group == "reach"})
    for kind in kinds:
        b_prompts, a_prompts = (m.counts.get(("reach", f"{kind}.prompts"), 0) for m in (before, after))
        b_scored, a_scored = (m.counts.get(("reach", f"{kind}.scored"), 0) for m in (before, after))
        if not b_prompts or not b_scored:
            continue
        if not a_prompts:  # none of its prompts even collected any more: a format change
            if b_scored >= thresholds.min_abs_change:
                findings.append(Finding(
                    kind="source_reach_drop", severity="alert", subject=f"reach:{kind}",
                    message=f"{kind}: no prompt collected, none reached score (was {b_scored} of {b_prompts})",
                    stage="score", tables=["prompts", CATEGORY_TABLE], before=b_scored, after=0,
                    change_pct=-100.0,
                ))
            continue
        b_share, a_share = b_scored / b_prompts, a_scored / a_prompts
        lost = round((b_share - a_share) * a_prompts)  # tasks missing at the earlier share
        if a_share >= b_share or lost < thresholds.min_abs_change:
            continue
        drop = (b_share - a_share) / b_share * 100
        severity = "alert" if drop >= thresholds.alert_pct else "warn" if drop >= thresholds.warn_pct else None
        if severity is None:
            continue
        findings.append(Finding(
            kind="source_reach_drop",
            severity=severity,  # type: ignore[arg-type]
            subject=f"reach:{kind}",
            message=f"{kind}: {a_scored} of {a_prompts} prompts reached score "
                    f"({a_share:.0%}, was {b_share:.0%})",
            stage="score",
            tables=["prompts", CATEGORY_TABLE],
            before=b_scored,
            after=a_scored,
            change_pct=round(-drop, 2),
        ))
    return findings


def swing_severity(before: int, after: int, thresholds: DriftThresholds) -> str | None:
    delta = abs(after - before)
    if delta == 0 or delta < thresholds.min_abs_change:
        return None
    pct = delta / before * 100 if before else float("inf")
    if pct >= thresholds.alert_pct:
        return "alert"
    if pct >= thresholds.warn_pct:
        return "warn"
    return None


def _pct(before: int, after: int) -> float | None:
    return round((after - before) / before * 100, 2) if before else None


def compare_metrics(
    before: Metrics, after: Metrics, thresholds: DriftThresholds
) -> tuple[list[MetricDelta], list[Finding]]:
    deltas: list[MetricDelta] = []
    findings: list[Finding] = []
    stage_swings: dict[str, list[tuple[str, str, int, int]]] = {}
    shared_scopes = before.scopes & after.scopes
    for key in sorted(set(before.counts) | set(after.counts)):
        group, name = key
        scope = after.scope.get(key) or before.scope[key]
        if scope not in shared_scopes:
            continue
        b, a = before.counts.get(key, 0), after.counts.get(key, 0)
        deltas.append(
            MetricDelta(
                group=group,  # type: ignore[arg-type]
                key=name,
                before=before.counts.get(key),
                after=after.counts.get(key),
                change=a - b,
                change_pct=_pct(b, a),
            )
        )
        if group in ("quarantine", "error_kind") and b == 0 and a > 0:
            findings.append(_new_kind(group, name, a))
            continue
        if group in ("error_kind", "reach"):
            continue  # only new error kinds matter; reach is judged as a share below
        severity = swing_severity(b, a, thresholds)
        if severity is None:
            continue
        if group == "stage":
            stage, _, field_name = name.rpartition(".")
            stage_swings.setdefault(stage, []).append((severity, field_name, b, a))
            continue
        findings.append(_swing(group, name, severity, b, a))
    for stage, swings in sorted(stage_swings.items()):
        findings.append(_stage_swing(stage, swings))
    findings.extend(reach_findings(before, after, thresholds))
    return deltas, findings


def _new_kind(group: str, name: str, count: int) -> Finding:
    if group == "quarantine":
        stage, _, reason = name.partition(":")
        return Finding(
            kind="new_quarantine_reason",
            severity="warn",
            subject=f"quarantine:{name}",
            message=f"{stage} quarantined {count} record(s) for a new reason {reason!r}",
            stage=stage,
            before=0,
            after=count,
        )
    return Finding(
        kind="new_error_kind",
        severity="warn",
        subject=f"error_kind:{name}",
        message=f"new tool error kind {name!r} ({count} call(s))",
        tables=[ERROR_TABLE],
        before=0,
        after=count,
    )


def _swing(group: str, name: str, severity: str, before: int, after: int) -> Finding:
    what = {
        "table": f"table {name} rows",
        "dataset": f"dataset {name} rows",
        "category": f"scores with category {name!r}",
        "quarantine": f"quarantine {name}",
    }[group]
    pct = _pct(before, after)
    shown = f"{pct:+.1f}%" if pct is not None else "new"
    return Finding(
        kind="count_swing",
        severity=severity,  # type: ignore[arg-type]
        subject=f"{group}:{name}",
        message=f"{what}: {before} -> {after} ({shown})",
        stage=name.partition(":")[0] if group == "quarantine" else None,
        tables=[name] if group in ("table", "dataset") else [],
        before=before,
        after=after,
        change_pct=pct,
    )


def _stage_swing(stage: str, swings: list[tuple[str, str, int, int]]) -> Finding:
    """records_in and records_out usually move together: one cause, one finding."""
    swings.sort(key=lambda s: (s[0] != "alert", -abs(s[3] - s[2]) / max(s[2], 1), s[1]))
    severity, field_name, before, after = swings[0]
    pct = _pct(before, after)
    return Finding(
        kind="count_swing",
        severity=severity,  # type: ignore[arg-type]
        subject=f"stage:{stage}",
        message=f"stage {stage} {field_name}: {before} -> {after}"
        + (f" ({pct:+.1f}%)" if pct is not None else ""),
        stage=stage,
        before=before,
        after=after,
        change_pct=pct,
        details=[f"{f}: {b} -> {a}" for _, f, b, a in swings],
    )
