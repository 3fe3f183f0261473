"""Findings that are not count swings: broken trust, missing stages, nondeterminism,
and the contamination firewall re-checked on the exported files themselves.

A receipt can say an export passed its firewall; only re-reading the files proves they
still do (someone may have edited an export after the run), so the export stages'
``validate`` hooks run again here.
"""

from __future__ import annotations

from collections.abc import Sequence

from pipeline.audit.verify import verify_run
from pipeline.core.receipts import load_run_summary
from pipeline.core.stage import ExportContext, Stage
from pipeline.core.store import LakeLayout, lake_inputs
from pipeline.core.trust import TrustedKeys
from pipeline.drift.metrics import RunView
from schemas.drift import Finding

MAX_DETAILS = 20


def first_line(text: str | None) -> str:
    return (text or "").strip().splitlines()[0] if (text or "").strip() else ""


def deterministic_findings(before: RunView, after: RunView, stages: Sequence[Stage] = ()) -> list[Finding]:
    """Same cache key means same stage code, config and inputs: outputs must match, for
    every stage but one declared not bitwise deterministic (``Traits``), which deep
    verify judges by its tolerance or its validation instead."""
    loose = {s.name for s in stages if s.traits.determinism != "bitwise"}
    findings = []
    for stage, receipt in sorted(after.receipts.items()):
        if stage in loose:
            continue
        prior = before.receipts.get(stage)
        if prior is None or prior.status != "ok" or receipt.status != "ok":
            continue
        if prior.cache_key != receipt.cache_key:
            continue
        old = {ref.name: ref.xxh3_128 for ref in prior.outputs}
        new = {ref.name: ref.xxh3_128 for ref in receipt.outputs}
        differing = sorted(n for n in set(old) | set(new) if old.get(n) != new.get(n))
        if differing:
            findings.append(
                Finding(
                    kind="deterministic_violation",
                    severity="alert",
                    subject=f"stage:{stage}",
                    message=f"stage {stage} produced different output for the same cache key "
                    f"({', '.join(differing)})",
                    stage=stage,
                    tables=differing,
                    details=[f"cache_key {receipt.cache_key}"]
                    + [f"{n}: {old.get(n)} -> {new.get(n)}" for n in differing],
                )
            )
    return findings


def stage_findings(layout: LakeLayout, before: RunView | None, after: RunView) -> list[Finding]:
    """Failed, skipped, receipt-less stages, and stages the earlier run had but this lacks."""
    summary = load_run_summary(layout, after.run_id, None)  # signatures: signature_findings
    findings: list[Finding] = []
    seen: set[str] = set()
    for status in summary.stages:
        seen.add(status.stage)
        receipt = after.receipts.get(status.stage)
        if status.status == "skipped_upstream_failed":
            findings.append(_stage_problem("stage_failed", status.stage, "skipped: an upstream stage failed"))
        elif receipt is None and f"{status.stage}.receipt.json" not in after.unreadable:
            findings.append(_stage_problem("stage_missing", status.stage, "receipt file is missing"))
        elif status.status != "ok" or (receipt is not None and receipt.status != "ok"):
            error = first_line(receipt.error if receipt else None)
            if receipt is not None and not error and receipt.validation.errors:
                error = first_line(receipt.validation.errors[0])
            findings.append(_stage_problem("stage_failed", status.stage, f"failed: {error}"))
    for stage in sorted(set(after.receipts) - seen):
        receipt = after.receipts[stage]
        if receipt.status != "ok":
            findings.append(_stage_problem("stage_failed", stage, f"failed: {first_line(receipt.error)}"))
    if before is not None:
        for stage in sorted(set(before.receipts) - seen - set(after.receipts)):
            findings.append(
                _stage_problem("stage_missing", stage, f"ran in {before.run_id} but not in this run")
            )
    return findings


def _stage_problem(kind: str, stage: str, message: str) -> Finding:
    return Finding(
        kind=kind,  # type: ignore[arg-type]
        severity="alert",
        subject=f"stage:{stage}",
        message=f"stage {stage} {message}",
        stage=stage,
    )


def signature_findings(
    layout: LakeLayout, run_id: str, keys: TrustedKeys | None, label: str
) -> list[Finding]:
    if keys is None or not keys.keys:
        return [
            Finding(
                kind="signature_unchecked",
                severity="warn",
                subject=f"run:{run_id}",
                message=f"signatures of the {label} run were not checked: no trusted key "
                "(pass --pubkey, or trust a key with `tracelake receipts trust`)",
            )
        ]
    findings = []
    for problem in verify_run(layout, run_id, keys).problems:
        findings.append(
            Finding(
                kind="signature_invalid" if problem.kind == "signature" else "object_integrity",
                severity="alert",
                subject=problem.subject,
                message=f"{label} run {run_id}: {problem.subject}: {first_line(problem.problem)}",
            )
        )
    return findings


def firewall_findings(
    layout: LakeLayout, view: RunView, stages: Sequence[Stage]
) -> tuple[list[str], list[Finding]]:
    """Re-run each export stage's validate hook on this run's tables and export files."""
    checks: list[str] = []
    findings: list[Finding] = []
    for stage in stages:
        receipt = view.receipts.get(stage.name)
        if stage.validate is None or receipt is None or receipt.status != "ok":
            continue
        checks.append(f"firewall:{stage.name}")
        try:
            ctx = ExportContext(
                layout=layout,
                config=stage.config_model.model_validate(receipt.config),
                run_id=view.run_id,
                outputs={ref.name: ref for ref in receipt.outputs},
                export_dir=layout.exports / view.run_id,
                inputs=lake_inputs(layout, receipt.inputs) or {},
            )
            errors = list(stage.validate(ctx))
        except Exception as exc:  # a validator that cannot read the files is a breach too
            errors = [f"validate failed: {type(exc).__name__}: {exc}"]
        if errors:
            findings.append(
                Finding(
                    kind="firewall_breach",
                    severity="alert",
                    subject=f"stage:{stage.name}",
                    message=f"{stage.name}: {len(errors)} firewall violation(s) in this run's "
                    f"exports, e.g. {first_line(errors[0])}",
                    stage=stage.name,
                    tables=[spec.name for spec in stage.outputs],
                    details=[first_line(e) for e in errors[:MAX_DETAILS]],
                )
            )
    return checks, findings
