"""Drift report models: what changed between two runs, and why it matters.

A DriftReport is written beside the run's receipts as ``drift.json``. It holds no
wall-clock time, so the same two runs always produce the same report bytes.
Run ``python -m schemas.drift`` to regenerate ``schemas/json/drift_report.json``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Severity = Literal["ok", "warn", "alert"]
FailOn = Literal["warn", "alert", "never"]
SEVERITY_RANK: dict[str, int] = {"ok": 0, "warn": 1, "alert": 2, "never": 3}

FindingKind = Literal[
    "count_swing",
    "new_quarantine_reason",
    "new_error_kind",
    "firewall_breach",
    "deterministic_violation",
    "stage_missing",
    "stage_failed",
    "signature_invalid",
    "signature_unchecked",
    "object_integrity",
    "source_reach_drop",
]
MetricGroup = Literal["stage", "table", "dataset", "category", "quarantine", "error_kind", "reach"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DriftThresholds(_Model):
    """When a count swing becomes a finding. Percentages are of the earlier count."""

    warn_pct: float = Field(default=20.0, ge=0, description="Swing (%) that raises a warn.")
    alert_pct: float = Field(default=50.0, ge=0, description="Swing (%) that raises an alert.")
    min_abs_change: int = Field(
        default=5,
        ge=0,
        description="A swing must also move the count by at least this many rows, so "
        "that 2 -> 3 (+50%) on a tiny count is not an alert.",
    )

    @model_validator(mode="after")
    def _ordered(self) -> DriftThresholds:
        if self.alert_pct < self.warn_pct:
            raise ValueError(f"alert_pct ({self.alert_pct}) must be >= warn_pct ({self.warn_pct})")
        return self


class MetricDelta(_Model):
    """One count compared across the two runs."""

    group: MetricGroup
    key: str = Field(description="e.g. 'collect.records_out', 'messages', 'collect:malformed_json'.")
    before: int | None = Field(description="Count in the earlier run; null if it had none.")
    after: int | None = Field(description="Count in this run; null if it has none.")
    change: int
    change_pct: float | None = Field(description="Relative to 'before'; null when before is 0.")


class RowSample(_Model):
    """Where two versions of a table first disagree (row index after canonical sort)."""

    index: int
    recorded: dict[str, object] | None
    recomputed: dict[str, object] | None


class Finding(_Model):
    """One cause of drift. Several metrics moving for one cause stay one finding."""

    kind: FindingKind
    severity: Literal["warn", "alert"]
    subject: str = Field(description="What drifted, e.g. 'table:messages' or 'stage:collect'.")
    message: str
    stage: str | None = None
    tables: list[str] = Field(default_factory=list)
    before: int | None = None
    after: int | None = None
    change_pct: float | None = None
    details: list[str] = Field(default_factory=list)


class DriftReport(_Model):
    """Run-to-run comparison; ``severity`` is the worst finding (ok when none)."""

    schema_version: Literal[1] = 1
    run_id: str
    against_run_id: str | None = Field(description="Earlier run compared with; null if none.")
    severity: Severity
    thresholds: DriftThresholds
    findings: list[Finding]
    metrics: list[MetricDelta] = Field(description="Every compared count, changed or not.")
    checks: list[str] = Field(
        description="Checks that ran (e.g. 'signatures', 'firewall:export-sft'), for auditing "
        "that a clean report is clean because something was looked at."
    )


def severity_of(findings: list[Finding]) -> Severity:
    worst = max((SEVERITY_RANK[f.severity] for f in findings), default=0)
    return "alert" if worst == 2 else "warn" if worst == 1 else "ok"


JSON_SCHEMA_PATH = Path(__file__).parent / "json" / "drift_report.json"


def json_schema_text() -> str:
    return json.dumps(DriftReport.model_json_schema(), indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":
    JSON_SCHEMA_PATH.parent.mkdir(parents=True, exist_ok=True)
    JSON_SCHEMA_PATH.write_text(json_schema_text())
    print(f"wrote {JSON_SCHEMA_PATH}")
