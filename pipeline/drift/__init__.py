"""Run-to-run drift: count swings, new failure kinds, firewall re-checks, nondeterminism
and broken receipts, reported as ok / warn / alert. See docs/DRIFT.md."""

from pipeline.drift.report import DRIFT_JSON, DRIFT_MD, compute_drift, markdown, write_report
from pipeline.drift.settings import exit_code, resolve_fail_on, resolve_thresholds

__all__ = [
    "DRIFT_JSON",
    "DRIFT_MD",
    "compute_drift",
    "exit_code",
    "markdown",
    "resolve_fail_on",
    "resolve_thresholds",
    "write_report",
]
