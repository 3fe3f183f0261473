"""`tracelake receipts verify`: every claim a run makes, checked against the bytes.

A run is its signed statement plus the signed receipts it lists. Verification holds
only keys the root trusts (or the one given with ``--pubkey``) and checks, naming each
thing that differs:

- the statement's signature, type and run id;
- each receipt listed in the statement exists with the sha256 listed; no receipt is
  missing and no unlisted receipt is present;
- each receipt's signature, type, run id and file name, its subjects, and what it can
  prove of itself (its cache key recomputes, its config hashes, its counts conserve);
- every object a receipt names re-hashes (sha256 and BLAKE3);
- every export file re-hashes, is listed by its stage and by the statement, and no
  unlisted file sits in the run's export folder;
- each stage's table and artifact inputs are outputs of this run's upstream stages;
- the statement's own claims (run_hash, totals, stages, tables, datasets) follow from
  the receipts;
- ``summary.json`` and ``summary.md`` are exactly the renderings of the statement.

Around the run, ``root_problems`` reports what no run accounts for: a run folder whose
statement is gone, one marked unfinished while no run is writing, an export folder of
no complete run. Files must be regular files: a link or a FIFO is reported, not followed.
"""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.core.artifacts import INPUT_PREFIX as ARTIFACT_INPUT_PREFIX
from pipeline.core.artifacts import artifact_input, artifact_problem
from pipeline.core.cache import claims_problem
from pipeline.core.errors import NotFound
from pipeline.core.hashing import file_digests
from pipeline.core.lock import writer_active
from pipeline.core.receipts import (
    RECEIPT_SUFFIX,
    RUN_ID,
    STATEMENT_FILE,
    SUMMARY_FILE,
    SUMMARY_MD,
    ReceiptError,
    export_subject,
    load_envelope,
    open_receipt,
    open_run_statement,
    run_folders,
    run_hash,
    run_receipt_paths,
    summary_json,
)
from pipeline.core.report import summary_markdown
from pipeline.core.store import LakeLayout
from pipeline.core.trust import TrustedKeys
from schemas.datasets import DATASET_TABLES
from schemas.receipt import ObjectRef, RunSummary, StageReceipt


@dataclass
class Problem:
    subject: str
    problem: str
    kind: str = "integrity"  # "signature": who said it cannot be trusted; "integrity": what was said is false


@dataclass
class VerifyReport:
    run_id: str
    signer: str | None = None
    receipts: int = 0
    objects: int = 0
    artifact_files: int = 0
    export_files: int = 0
    problems: list[Problem] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.problems

    def add(self, subject: str, problem: str, kind: str = "integrity") -> None:
        self.problems.append(Problem(subject, problem, kind))


def _file_problem(path: Path, size: int | None, sha256: str, blake3: str) -> str | None:
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return "missing"
    if not stat.S_ISREG(mode):
        return "is not a regular file (a link, a FIFO...)"
    digests = file_digests(path)
    if size is not None and digests.size != size:
        return f"size is {digests.size} bytes, recorded {size}"
    if digests.sha256 != sha256:
        return "bytes do not match the recorded sha256"
    if digests.blake3 != blake3:
        return "bytes do not match the recorded BLAKE3"
    return None


def _rel(layout: LakeLayout, path: Path) -> str:
    """``path`` relative to the root, without following links (a link out of the root is
    a finding to name, not a crash)."""
    try:
        return path.relative_to(layout.root).as_posix()
    except ValueError:
        return path.as_posix()


def _check_receipt(layout: LakeLayout, run_id: str, path: Path, keys: TrustedKeys,
                   report: VerifyReport) -> StageReceipt | None:
    rel = _rel(layout, path)
    if path.is_symlink():
        report.add(rel, "is a link, not a file of this run", "signature")
        return None
    try:
        receipt, _ = open_receipt(load_envelope(path), keys)
    except (ReceiptError, NotFound) as exc:
        report.add(rel, str(exc), "signature")
        return None
    report.receipts += 1
    if receipt.run_id != run_id:
        report.add(rel, f"is a receipt of run {receipt.run_id}, not of this run")
    if path.name != f"{receipt.stage}{RECEIPT_SUFFIX}":
        report.add(rel, f"holds the receipt of stage {receipt.stage}")
    if (problem := claims_problem(receipt)) is not None:
        report.add(rel, problem)
    for ref in receipt.outputs:
        report.objects += 1
        if (problem := _file_problem(layout.root / ref.path, None, ref.sha256, ref.blake3)) is not None:
            report.add(ref.path, f"object {problem}")
    for artifact in receipt.artifacts:
        report.artifact_files += len(artifact.files)
        if (problem := artifact_problem(layout, artifact)) is not None:
            report.add(artifact.path, problem)
    for file in receipt.exports:
        report.export_files += 1
        target = layout.export_dir(run_id) / file.path
        if (problem := _file_problem(target, file.size, file.sha256, file.blake3)) is not None:
            report.add(_rel(layout, target), f"export file {problem}")
    return receipt


def _check_listing(layout: LakeLayout, run_id: str, statement: dict[str, object],
                   receipts: dict[str, StageReceipt], report: VerifyReport) -> None:
    """The statement's subjects against the run folder and the export folder."""
    subjects = statement.get("subject")
    listed: dict[str, dict[str, object]] = {}
    for subject in subjects if isinstance(subjects, list) else []:
        if isinstance(subject, dict) and isinstance(subject.get("name"), str):
            listed[str(subject["name"])] = subject
    prefix = f"receipts/{run_id}/"
    listed_receipts = {n: s for n, s in listed.items() if n.startswith(prefix)}
    on_disk = {_rel(layout, p) for p in run_receipt_paths(layout, run_id)}
    for name, subject in sorted(listed_receipts.items()):
        digest = subject.get("digest")
        expected = digest.get("sha256") if isinstance(digest, dict) else None
        path = layout.root / name
        if name not in on_disk:
            report.add(name, "receipt listed in the run statement is missing")
        elif hashlib.sha256(path.read_bytes()).hexdigest() != expected:
            report.add(name, "receipt bytes differ from the run statement")
    for name in sorted(on_disk - set(listed_receipts)):
        report.add(name, "receipt is not listed in the run statement")
    # Export files: the statement's, the receipts' and the folder's must be one set.
    stated = {n: s for n, s in listed.items() if n.startswith(f"exports/{run_id}/")}
    expected_exports = {
        subject["name"]: subject
        for stage, r in receipts.items()
        for subject in (export_subject(run_id, f, stage) for f in r.exports)
    }
    for name in sorted(set(stated) | set(expected_exports)):
        if name not in expected_exports:
            report.add(name, "export file in the run statement is listed by no stage receipt")
        elif name not in stated:
            report.add(name, "export file of a stage receipt is missing from the run statement")
        elif stated[name] != expected_exports[name]:
            report.add(name, "export file digests differ between the run statement and its receipt")
    folder = layout.export_dir(run_id)
    if folder.is_symlink():
        report.add(_rel(layout, folder), "the run's export folder is a link")
    elif folder.is_dir():
        for current, dirs, files in os.walk(folder):  # never follows links
            for name in sorted(dirs + files):
                path = Path(current) / name
                if path.is_symlink() or not (path.is_dir() or path.is_file()):
                    if _rel(layout, path) not in stated:
                        report.add(_rel(layout, path), "is in the run's export folder but is not a file of the run")
                elif path.is_file() and _rel(layout, path) not in stated:
                    report.add(_rel(layout, path), "file in the run's export folder is not in the run statement")


def _check_claims(summary: RunSummary, receipts: dict[str, StageReceipt], report: VerifyReport,
                  subject: str) -> None:
    """What the statement says about the run, recomputed from the receipts."""
    def claim(ok: bool, what: str) -> None:
        if not ok:
            report.add(subject, f"{what} does not follow from the receipts")

    statuses = {s.stage: s for s in summary.stages}
    for stage, status in statuses.items():
        receipt = receipts.get(stage)
        if status.status == "skipped_upstream_failed":
            claim(receipt is None, f"stage {stage} skipped, yet it has a receipt:")
            continue
        if receipt is None:
            report.add(subject, f"stage {stage} is {status.status} but its receipt is missing")
            continue
        claim(
            (status.status, status.cache_hit, status.cache_key, status.records_in, status.records_out,
             status.quarantined, status.filtered, status.outputs, status.validation_passed)
            == (receipt.status, receipt.cache_hit, receipt.cache_key, receipt.records_in,
                receipt.records_out, sum(receipt.quarantined.values()), sum(receipt.filtered.values()),
                {o.name: o.xxh3_128 for o in receipt.outputs}, receipt.validation.passed),
            f"stage {stage}'s status",
        )
    for stage in sorted(set(receipts) - set(statuses)):
        report.add(subject, f"receipt of stage {stage} is not among the statement's stages")
    ordered = [receipts[s] for s in statuses if s in receipts]
    ok = [r for r in ordered if r.status == "ok"]
    tables: dict[str, ObjectRef] = {ref.name: ref for r in ok for ref in r.outputs}
    claim(summary.run_hash == run_hash(ordered), "run_hash")
    claim(summary.tables == dict(sorted(tables.items())), "the table list")
    claim(summary.total_records_in == sum(s.records_in for s in summary.stages), "total_records_in")
    claim(summary.total_records_out == sum(s.records_out for s in summary.stages), "total_records_out")
    claim(summary.total_quarantined == sum(s.quarantined for s in summary.stages), "total_quarantined")
    claim(summary.total_filtered == sum(s.filtered for s in summary.stages), "total_filtered")
    claim(summary.datasets == {n: tables[n].rows for n in DATASET_TABLES if n in tables}, "datasets")
    claim(summary.overall_passed == all(s.status == "ok" for s in summary.stages), "overall_passed")
    produced = {(ref.name, ref.xxh3_128) for r in ok for ref in r.outputs}
    made = {(ref.name, ref.sha256, ref.xxh3_128) for r in ok for ref in map(artifact_input, r.artifacts)}
    for receipt in ordered:
        for ref in receipt.inputs:
            # Sources and external inputs (a model, a template) come from outside the run.
            if ref.name.startswith(ARTIFACT_INPUT_PREFIX):
                if (ref.name, ref.sha256, ref.xxh3_128) not in made:
                    report.add(subject, f"stage {receipt.stage} read {ref.name} {ref.sha256}, "
                                        "which no stage of this run produced")
            elif ":" not in ref.name and (ref.name, ref.xxh3_128) not in produced:
                report.add(subject, f"stage {receipt.stage} read {ref.name} {ref.xxh3_128}, "
                                    "which no stage of this run produced")


def _check_renderings(layout: LakeLayout, summary: RunSummary, receipts: dict[str, StageReceipt],
                      report: VerifyReport) -> None:
    folder = layout.run_dir(summary.run_id)
    ordered = [receipts[s.stage] for s in summary.stages if s.stage in receipts]
    for name, expected in ((SUMMARY_FILE, summary_json(summary)),
                           (SUMMARY_MD, summary_markdown(summary, ordered))):
        path = folder / name
        try:
            actual = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            report.add(_rel(layout, path), "missing or unreadable (a rendering of the run statement)")
            continue
        if actual != expected:
            report.add(_rel(layout, path), "differs from the signed run statement it renders")


def verify_run(layout: LakeLayout, run_id: str, keys: TrustedKeys) -> VerifyReport:
    report = VerifyReport(run_id)
    statement_path = layout.run_dir(run_id) / STATEMENT_FILE
    subject = _rel(layout, statement_path)
    if layout.run_dir(run_id).is_symlink():
        report.add(_rel(layout, layout.run_dir(run_id)), "the run folder is a link", "signature")
        return report
    summary: RunSummary | None = None
    statement: dict[str, object] = {}
    try:
        summary, statement, report.signer = open_run_statement(load_envelope(statement_path), keys)
    except (ReceiptError, NotFound) as exc:
        report.add(subject, str(exc), "signature")
    if summary is not None and summary.run_id != run_id:
        report.add(subject, f"is the statement of run {summary.run_id}", "signature")
        summary = None
    receipts: dict[str, StageReceipt] = {}
    for path in run_receipt_paths(layout, run_id):
        receipt = _check_receipt(layout, run_id, path, keys, report)
        if receipt is not None:
            receipts[receipt.stage] = receipt
    if summary is None:
        return report
    _check_listing(layout, run_id, statement, receipts, report)
    _check_claims(summary, receipts, report, subject)
    _check_renderings(layout, summary, receipts, report)
    return report



def root_problems(layout: LakeLayout) -> list[Problem]:
    """Folders no complete run accounts for (see the module docstring)."""
    folders = run_folders(layout)
    writing = writer_active(layout)
    problems = []
    for run_id, state in folders.items():
        name = f"receipts/{run_id}"
        if state == "broken":
            problems.append(Problem(name, "is not a complete run: its signed run statement is missing", "signature"))
        elif state == "unfinished" and not writing:
            problems.append(Problem(name, "is marked unfinished but no run is writing this root "
                                          "(left by a killed run: the next run clears it)", "integrity"))
    if layout.exports.is_dir():
        for entry in sorted(layout.exports.iterdir()):
            if RUN_ID.match(entry.name) and folders.get(entry.name) not in ("complete", "legacy") and not (
                    writing and folders.get(entry.name) == "unfinished"):
                problems.append(Problem(f"exports/{entry.name}", "export folder of no complete run", "integrity"))
    return problems
