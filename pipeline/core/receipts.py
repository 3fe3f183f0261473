"""Write, sign, load and check StageReceipts and run statements.

A run folder ``receipts/<run_id>/`` holds one signed StageReceipt per stage that ran and,
written last, the run's own signed statement (``run.statement.json``): an in-toto
Statement whose subjects are those receipt files (sha256 of their bytes) and every
export file, and whose predicate is the RunSummary. ``summary.json`` and ``summary.md``
are renderings of that statement for people; nothing reads them as the truth.

A run folder starts with an ``.unfinished`` mark that goes only once the statement has
landed: a run killed half-way is never listed as a run, and the next run clears it.
Readers take the statement and receipts only after their signatures verify against the
root's trusted keys (``pipeline.core.trust``).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import ValidationError

from pipeline.core.errors import NotFound, SignatureError
from pipeline.core.hashing import canonical_json, digest_json
from pipeline.core.signing import decode_payload_unverified, sign_statement, verify_envelope
from pipeline.core.store import LakeLayout, atomic_write_bytes
from pipeline.core.trees import LONE_FILE
from pipeline.core.trust import TrustedKeys
from schemas.receipt import (
    RECEIPT_PREDICATE_TYPE,
    RUN_PREDICATE_TYPE,
    STATEMENT_TYPE,
    ExportFile,
    RunSummary,
    StageReceipt,
)

RECEIPT_SUFFIX = ".receipt.json"
STATEMENT_FILE = "run.statement.json"
SUMMARY_FILE = "summary.json"
SUMMARY_MD = "summary.md"
UNFINISHED_MARK = ".unfinished"
RUN_ID = re.compile(r"^\d{8}T\d{6}\d*Z-[0-9a-f]{4}$")


class ReceiptError(SignatureError):
    """A receipt or statement that does not verify or does not say what it must."""


# --- statements ---------------------------------------------------------------------------


def export_subject(run_id: str, file: ExportFile, stage: str | None = None) -> dict[str, Any]:
    annotations: dict[str, Any] = {"size": file.size}
    if stage is not None:
        annotations["stage"] = stage
    return {
        "name": f"exports/{run_id}/{file.path}",
        "digest": {"sha256": file.sha256, "blake3": file.blake3},
        "annotations": annotations,
    }


def statement_for(receipt: StageReceipt) -> dict[str, Any]:
    """in-toto Statement v1: subjects are the output objects, artifact files and export files."""
    subjects = [
        {
            "name": ref.path,
            "digest": {"sha256": ref.sha256, "blake3": ref.blake3, "xxh3_128": ref.xxh3_128},
            "annotations": {"table": ref.name, "rows": ref.rows},
        }
        for ref in receipt.outputs
    ]
    subjects += [
        {
            "name": f"{ref.path}/{file.path}" if file.path != LONE_FILE else ref.path,
            "digest": {"sha256": file.sha256},
            "annotations": {"artifact": ref.name, "size": file.size},
        }
        for ref in receipt.artifacts
        for file in ref.files
    ]
    subjects += [export_subject(receipt.run_id, f) for f in receipt.exports]
    return {
        "_type": STATEMENT_TYPE,
        "subject": subjects,
        "predicateType": RECEIPT_PREDICATE_TYPE,
        "predicate": receipt.model_dump(mode="json"),
    }


def run_statement_for(
    summary: RunSummary, receipt_digests: dict[str, str], exports: dict[str, list[ExportFile]]
) -> dict[str, Any]:
    """The run's Statement: subjects are its receipt files and every export file."""
    subjects: list[dict[str, Any]] = [
        {"name": f"receipts/{summary.run_id}/{stage}{RECEIPT_SUFFIX}", "digest": {"sha256": digest}}
        for stage, digest in sorted(receipt_digests.items())
    ]
    for stage, files in sorted(exports.items()):
        subjects += [export_subject(summary.run_id, f, stage) for f in files]
    return {
        "_type": STATEMENT_TYPE,
        "subject": subjects,
        "predicateType": RUN_PREDICATE_TYPE,
        "predicate": summary.model_dump(mode="json"),
    }


def _envelope_bytes(statement: dict[str, Any], key: Ed25519PrivateKey) -> bytes:
    envelope = sign_statement(statement, key)
    return (json.dumps(envelope, indent=2, sort_keys=True) + "\n").encode("utf-8")


# --- writing ------------------------------------------------------------------------------


def receipt_path(layout: LakeLayout, run_id: str, stage: str) -> Path:
    return layout.run_dir(run_id) / f"{stage}{RECEIPT_SUFFIX}"


def cache_entry_path(layout: LakeLayout, cache_key: str) -> Path:
    return layout.receipt_cache / f"{cache_key}.json"


def begin_run(layout: LakeLayout, run_id: str) -> None:
    """The run folder appears with its mark already in it (made aside, then renamed):
    a run killed at any point never leaves an unmarked folder behind."""
    staging = layout.receipts / f".tmp-run-{run_id}"
    staging.mkdir(parents=True)
    (staging / UNFINISHED_MARK).write_text("a run is writing this folder, or was killed doing so\n")
    os.rename(staging, layout.run_dir(run_id))


def write_receipt(layout: LakeLayout, receipt: StageReceipt, key: Ed25519PrivateKey) -> str:
    """Sign and store a stage receipt (and, when it passed, the cache entry for its
    key); returns the sha256 of the receipt file's bytes."""
    data = _envelope_bytes(statement_for(receipt), key)
    atomic_write_bytes(receipt_path(layout, receipt.run_id, receipt.stage), data)
    if receipt.status == "ok":
        atomic_write_bytes(cache_entry_path(layout, receipt.cache_key), data)
    return hashlib.sha256(data).hexdigest()


def write_run_statement(
    layout: LakeLayout,
    summary: RunSummary,
    receipt_digests: dict[str, str],
    exports: dict[str, list[ExportFile]],
    key: Ed25519PrivateKey,
    renderings: dict[str, str],
) -> None:
    """Renderings first, then the signed statement, then the mark goes: the statement
    is what makes the folder a run."""
    folder = layout.run_dir(summary.run_id)
    for name, text in renderings.items():
        atomic_write_bytes(folder / name, text.encode("utf-8"))
    statement = run_statement_for(summary, receipt_digests, exports)
    atomic_write_bytes(folder / STATEMENT_FILE, _envelope_bytes(statement, key))
    (folder / UNFINISHED_MARK).unlink(missing_ok=True)


def as_signed(summary: RunSummary) -> RunSummary:
    """The summary as its signed statement carries it (canonical JSON sorts every
    mapping's keys): what the renderings are made from, by the run and by verify."""
    return RunSummary.model_validate_json(canonical_json(summary.model_dump(mode="json")))


def summary_json(summary: RunSummary) -> str:
    return summary.model_dump_json(indent=2) + "\n"


# --- reading ------------------------------------------------------------------------------


def load_envelope(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_bytes())
    except FileNotFoundError as exc:
        raise NotFound(f"{path} does not exist") from exc
    except (OSError, ValueError) as exc:
        raise ReceiptError(f"{path} is not readable JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ReceiptError(f"{path} is not a DSSE envelope")
    return data


def _open(
    envelope: dict[str, Any], keys: TrustedKeys | None, predicate_type: str
) -> tuple[dict[str, Any], str | None]:
    """(statement, signer keyid); unverified (keyid None) only when ``keys`` is None."""
    if keys is None:
        statement, keyid = decode_payload_unverified(envelope), None
    else:
        try:
            statement, keyid = verify_envelope(envelope, keys.keys)
        except SignatureError as exc:
            raise ReceiptError(f"{exc} (trusted keys: {keys.source})") from exc
    if statement.get("_type") != STATEMENT_TYPE or statement.get("predicateType") != predicate_type:
        raise ReceiptError(
            f"not a {predicate_type} statement (predicateType {statement.get('predicateType')!r})"
        )
    return statement, keyid


def open_receipt(envelope: dict[str, Any], keys: TrustedKeys | None) -> tuple[StageReceipt, dict[str, Any]]:
    """The receipt an envelope carries, after its signature verifies against ``keys``
    (``None``: unverified, for showing a broken run only)."""
    statement, _ = _open(envelope, keys, RECEIPT_PREDICATE_TYPE)
    try:
        receipt = StageReceipt.model_validate(statement.get("predicate"))
    except ValidationError as exc:
        raise ReceiptError(f"predicate is not a StageReceipt: {_first_error(exc)}") from exc
    if statement.get("subject") != statement_for(receipt)["subject"]:
        raise ReceiptError("subjects disagree with the receipt's outputs and exports")
    return receipt, statement


def open_run_statement(
    envelope: dict[str, Any], keys: TrustedKeys | None
) -> tuple[RunSummary, dict[str, Any], str | None]:
    statement, keyid = _open(envelope, keys, RUN_PREDICATE_TYPE)
    try:
        summary = RunSummary.model_validate(statement.get("predicate"))
    except ValidationError as exc:
        raise ReceiptError(f"predicate is not a RunSummary: {_first_error(exc)}") from exc
    return summary, statement, keyid


def _first_error(exc: ValidationError) -> str:
    error = exc.errors()[0]
    where = ".".join(str(p) for p in error.get("loc", ()))
    return f"{where}: {error.get('msg')}" if where else str(error.get("msg"))


def load_run_summary(layout: LakeLayout, run_id: str, keys: TrustedKeys | None) -> RunSummary:
    """The RunSummary from the run's signed statement (verified unless ``keys`` is None)."""
    path = layout.run_dir(run_id) / STATEMENT_FILE
    try:
        summary, _, _ = open_run_statement(load_envelope(path), keys)
    except ReceiptError as exc:
        raise ReceiptError(f"{layout.relative(path)}: {exc}") from exc
    if summary.run_id != run_id:
        raise ReceiptError(f"{layout.relative(path)} is the statement of run {summary.run_id}")
    return summary


def run_receipt_paths(layout: LakeLayout, run_id: str) -> list[Path]:
    return sorted(layout.run_dir(run_id).glob(f"*{RECEIPT_SUFFIX}"))


def load_run_receipts(layout: LakeLayout, run_id: str, keys: TrustedKeys | None) -> list[StageReceipt]:
    """The run's stage receipts, each verified unless ``keys`` is None."""
    receipts = []
    for path in run_receipt_paths(layout, run_id):
        try:
            receipt, _ = open_receipt(load_envelope(path), keys)
        except ReceiptError as exc:
            raise ReceiptError(f"{layout.relative(path)}: {exc}") from exc
        if receipt.run_id != run_id:
            raise ReceiptError(f"{layout.relative(path)} is a receipt of run {receipt.run_id}")
        receipts.append(receipt)
    return receipts


# --- runs -----------------------------------------------------------------------------------


LEGACY_RECEIPT_TYPE = "https://tracelake.dev/StageReceipt/v1"


def run_state(layout: LakeLayout, run_id: str) -> str:
    """What a folder under receipts/ named like a run is:

    - 'complete': its signed statement landed (and the mark is gone);
    - 'unfinished': marked: a run is writing it, or was killed doing so;
    - 'legacy': a run written before run statements (receipts of StageReceipt/v1);
    - 'broken': anything else (a statement deleted, a folder replaced by a link...).
    """
    folder = layout.run_dir(run_id)
    if folder.is_symlink() or not folder.is_dir():
        return "broken"
    if (folder / UNFINISHED_MARK).exists():
        return "unfinished"
    if (folder / STATEMENT_FILE).exists():
        return "complete"
    if not (folder / SUMMARY_FILE).is_file():
        return "broken"
    for path in run_receipt_paths(layout, run_id):
        try:
            if decode_payload_unverified(load_envelope(path)).get("predicateType") != LEGACY_RECEIPT_TYPE:
                return "broken"
        except (ReceiptError, NotFound):
            return "broken"
    return "legacy"


def run_folders(layout: LakeLayout) -> dict[str, str]:
    """Every folder under receipts/ named like a run id -> its state."""
    if not layout.receipts.is_dir():
        return {}
    return {
        p.name: run_state(layout, p.name)
        for p in sorted(layout.receipts.iterdir())
        if RUN_ID.match(p.name)
    }


def list_runs(layout: LakeLayout) -> list[str]:
    """Complete runs, oldest first (run ids sort by time)."""
    return [run_id for run_id, state in run_folders(layout).items() if state == "complete"]


def resolve_run(layout: LakeLayout, run_id: str | None) -> str:
    runs = list_runs(layout)
    if not runs:
        raise NotFound(f"no runs under {layout.receipts}")
    if run_id is None or run_id == "latest":
        return runs[-1]
    if run_id in runs:
        return run_id
    matches = [r for r in runs if r.startswith(run_id)]
    if len(matches) == 1:
        return matches[0]
    state = run_folders(layout).get(run_id)
    if state is not None:
        raise NotFound(f"run {run_id} is not a complete run ({state}: its signed run statement is missing)")
    raise NotFound(f"run {run_id!r} not found (have {len(runs)} runs)")


def previous_run(layout: LakeLayout, run_id: str) -> str | None:
    runs = list_runs(layout)
    earlier = [r for r in runs if r < run_id]
    return earlier[-1] if earlier else None


def run_hash(receipts: list[StageReceipt]) -> str:
    """H(all cache keys, output and artifact digests): no run id, no time."""
    return digest_json(
        sorted(
            [r.stage, r.cache_key, sorted([o.name, o.xxh3_128] for o in r.outputs)]
            # artifacts only where there are some (run hashes of table-only runs stay as
            # they were), and only of stages declared bitwise-deterministic: a training
            # run's step log holds its timings; its tables are what a re-run reproduces
            + ([sorted([a.name, a.digest] for a in r.artifacts)]
               if r.artifacts and r.determinism == "bitwise" else [])
            for r in receipts
        )
    )
