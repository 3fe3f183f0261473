"""Build, sign, store, load and verify StageReceipts and RunSummaries."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from pipeline.core.errors import NotFound, SignatureError
from pipeline.core.hashing import digest_json, sha256_file
from pipeline.core.signing import decode_payload_unverified, sign_statement, verify_envelope
from pipeline.core.store import LakeLayout, atomic_write_text
from schemas.receipt import (
    RECEIPT_PREDICATE_TYPE,
    STATEMENT_TYPE,
    RunSummary,
    StageReceipt,
)

RUN_FILE = "run.json"
SUMMARY_FILE = "summary.json"


def statement_for(receipt: StageReceipt) -> dict[str, Any]:
    """in-toto Statement v1: subjects are the output objects, predicate the receipt."""
    return {
        "_type": STATEMENT_TYPE,
        "subject": [
            {
                "name": ref.path,
                "digest": {"sha256": ref.sha256, "xxh3_128": ref.xxh3_128},
                "annotations": {"table": ref.name, "rows": ref.rows},
            }
            for ref in receipt.outputs
        ],
        "predicateType": RECEIPT_PREDICATE_TYPE,
        "predicate": receipt.model_dump(mode="json"),
    }


def receipt_path(layout: LakeLayout, run_id: str, stage: str) -> Path:
    return layout.run_dir(run_id) / f"{stage}.receipt.json"


def write_receipt(layout: LakeLayout, receipt: StageReceipt, key: Ed25519PrivateKey) -> Path:
    envelope = sign_statement(statement_for(receipt), key)
    text = json.dumps(envelope, indent=2, sort_keys=True) + "\n"
    path = receipt_path(layout, receipt.run_id, receipt.stage)
    atomic_write_text(path, text)
    if receipt.status == "ok":
        atomic_write_text(layout.receipt_cache / f"{receipt.cache_key}.json", text)
    return path


def load_envelope(path: Path) -> dict[str, Any]:
    data = json.loads(path.read_text())
    if not isinstance(data, dict):
        raise SignatureError(f"{path} is not a DSSE envelope")
    return data


def receipt_from_envelope(envelope: dict[str, Any]) -> StageReceipt:
    statement = decode_payload_unverified(envelope)
    return StageReceipt.model_validate(statement["predicate"])


def cached_receipt(layout: LakeLayout, cache_key: str) -> StageReceipt | None:
    path = layout.receipt_cache / f"{cache_key}.json"
    if not path.exists():
        return None
    try:
        return receipt_from_envelope(load_envelope(path))
    except (ValueError, KeyError, SignatureError):
        return None


def list_runs(layout: LakeLayout) -> list[str]:
    if not layout.receipts.is_dir():
        return []
    return sorted(
        p.name for p in layout.receipts.iterdir() if p.is_dir() and (p / SUMMARY_FILE).exists()
    )


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
    raise NotFound(f"run {run_id!r} not found (have {len(runs)} runs)")


def previous_run(layout: LakeLayout, run_id: str) -> str | None:
    runs = list_runs(layout)
    earlier = [r for r in runs if r < run_id]
    return earlier[-1] if earlier else None


def load_summary(layout: LakeLayout, run_id: str) -> RunSummary:
    return RunSummary.model_validate_json((layout.run_dir(run_id) / SUMMARY_FILE).read_text())


def run_receipt_paths(layout: LakeLayout, run_id: str) -> list[Path]:
    return sorted(layout.run_dir(run_id).glob("*.receipt.json"))


def load_run_receipts(layout: LakeLayout, run_id: str) -> list[StageReceipt]:
    return [receipt_from_envelope(load_envelope(p)) for p in run_receipt_paths(layout, run_id)]


def run_hash(receipts: list[StageReceipt]) -> str:
    """H(all cache keys and output digests): no run id, no time."""
    return digest_json(
        sorted(
            [r.stage, r.cache_key, sorted([o.name, o.xxh3_128] for o in r.outputs)]
            for r in receipts
        )
    )


@dataclass
class VerifyProblem:
    subject: str
    problem: str


def verify_run(
    layout: LakeLayout, run_id: str, public_key: Ed25519PublicKey
) -> tuple[int, list[VerifyProblem]]:
    """Check every signature and re-hash every output object. Returns (checked, problems)."""
    problems: list[VerifyProblem] = []
    checked = 0
    paths = run_receipt_paths(layout, run_id)
    if not paths:
        problems.append(VerifyProblem(run_id, "run has no receipts"))
    for path in paths:
        checked += 1
        rel = layout.relative(path)
        try:
            statement = verify_envelope(load_envelope(path), public_key)
            receipt = StageReceipt.model_validate(statement["predicate"])
        except (SignatureError, ValueError, KeyError) as exc:
            problems.append(VerifyProblem(rel, f"signature does not verify: {exc}"))
            continue
        subjects = {s["name"]: s["digest"] for s in statement.get("subject", [])}
        for ref in receipt.outputs:
            checked += 1
            object_path = layout.root / ref.path
            if subjects.get(ref.path, {}).get("sha256") != ref.sha256:
                problems.append(VerifyProblem(ref.path, "subject digest disagrees with receipt"))
            if not object_path.is_file():
                problems.append(VerifyProblem(ref.path, "object missing"))
            elif sha256_file(object_path) != ref.sha256:
                problems.append(VerifyProblem(ref.path, "object bytes do not match sha256"))
    return checked, problems
