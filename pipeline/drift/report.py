"""Assemble a DriftReport from two runs, and write it as JSON and Markdown."""

from __future__ import annotations

from collections.abc import Sequence

from pipeline.core.receipts import previous_run, resolve_run
from pipeline.core.stage import Stage
from pipeline.core.store import LakeLayout, atomic_write_text
from pipeline.core.trust import TrustedKeys
from pipeline.drift.checks import (
    deterministic_findings,
    firewall_findings,
    signature_findings,
    stage_findings,
)
from pipeline.drift.metrics import compare_metrics, load_view, run_metrics
from schemas.drift import (
    SEVERITY_RANK,
    DriftReport,
    DriftThresholds,
    Finding,
    MetricDelta,
    severity_of,
)

DRIFT_JSON = "drift.json"
DRIFT_MD = "drift.md"


def compute_drift(
    layout: LakeLayout,
    run_id: str | None,
    against: str | None,
    thresholds: DriftThresholds,
    keys: TrustedKeys | None,
    stages: Sequence[Stage] | None = None,
) -> DriftReport:
    """Compare ``run_id`` (default latest) with ``against`` (default the run before it).

    Raises TracelakeError (NotFound) for unknown runs: a tool failure, not drift.
    """
    if stages is None:
        from pipeline.stages.registry import STAGES

        stages = STAGES
    current_id = resolve_run(layout, run_id)
    prior_id = resolve_run(layout, against) if against else previous_run(layout, current_id)
    current = load_view(layout, current_id)
    prior = load_view(layout, prior_id) if prior_id else None

    findings: list[Finding] = []
    checks = ["stages", "signatures"]
    findings += stage_findings(layout, prior, current)
    findings += signature_findings(layout, current_id, keys, "this")
    firewall_checks, firewall = firewall_findings(layout, current, stages)
    checks += firewall_checks
    findings += firewall
    deltas: list[MetricDelta] = []
    if prior is not None and prior_id is not None and prior_id != current_id:
        checks += ["signatures:against", "determinism", "counts"]
        findings += signature_findings(layout, prior_id, keys, "earlier")
        findings += deterministic_findings(prior, current, stages)
        deltas, swings = compare_metrics(
            run_metrics(layout, prior), run_metrics(layout, current), thresholds
        )
        findings += swings
    findings = _dedupe(findings)
    findings.sort(key=lambda f: (-SEVERITY_RANK[f.severity], f.kind, f.subject, f.message))
    return DriftReport(
        run_id=current_id,
        against_run_id=prior_id,
        severity=severity_of(findings),
        thresholds=thresholds,
        findings=findings,
        metrics=deltas,
        checks=checks,
    )


def _dedupe(findings: list[Finding]) -> list[Finding]:
    """Signature checks of both runs can name the same shared object twice."""
    seen: set[tuple[str, str, str]] = set()
    unique = []
    for finding in findings:
        key = (finding.kind, finding.subject, finding.message)
        if key not in seen:
            seen.add(key)
            unique.append(finding)
    return unique


def write_report(layout: LakeLayout, report: DriftReport) -> None:
    run_dir = layout.run_dir(report.run_id)
    atomic_write_text(run_dir / DRIFT_JSON, report.model_dump_json(indent=2) + "\n")
    atomic_write_text(run_dir / DRIFT_MD, markdown(report))


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown(report: DriftReport) -> str:
    t = report.thresholds
    badge = {"ok": "OK", "warn": "WARN", "alert": "ALERT"}[report.severity]
    lines = [
        f"# tracelake drift: {badge}",
        "",
        f"- run: `{report.run_id}`",
        f"- against: `{report.against_run_id}`" if report.against_run_id else "- against: (no earlier run)",
        f"- thresholds: warn >= {t.warn_pct:g}%, alert >= {t.alert_pct:g}%, "
        f"min absolute change {t.min_abs_change}",
        f"- checks: {', '.join(report.checks)}",
        "",
    ]
    if report.findings:
        lines += ["## Findings", "", "| severity | kind | subject | finding |", "|---|---|---|---|"]
        for f in report.findings:
            lines.append(f"| {f.severity} | {f.kind} | {_cell(f.subject)} | {_cell(f.message)} |")
        detailed = [f for f in report.findings if f.details]
        for f in detailed:
            lines += ["", f"### {f.kind}: {_cell(f.subject)}", ""]
            lines += [f"- {_cell(d)}" for d in f.details]
    else:
        lines += ["No findings."]
    changed = [m for m in report.metrics if m.change != 0]
    if report.metrics:
        lines += [
            "",
            f"## Counts ({len(changed)} changed, {len(report.metrics) - len(changed)} unchanged)",
            "",
        ]
    if changed:
        lines += ["| group | key | before | after | change | % |", "|---|---|---:|---:|---:|---:|"]
        for m in changed:
            pct = f"{m.change_pct:+.1f}" if m.change_pct is not None else "new"
            lines.append(
                f"| {m.group} | {_cell(m.key)} | {m.before if m.before is not None else 0} | "
                f"{m.after if m.after is not None else 0} | {m.change:+d} | {pct} |"
            )
    return "\n".join(lines) + "\n"
