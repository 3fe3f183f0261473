"""The run cache: a stage's key, and the checks a stored entry passes before reuse.

A stage's cache key is H(name, version, canonical config, sorted input digests),
computed before it runs. ``receipts/cache/<key>.json`` holds the signed receipt of the
run that last executed the stage under that key. Reusing it means copying its claims
(counts, digests, export files) into this run's receipt and signing them again, so
an entry is reused only after all of these hold:

- its signature verifies with the key this run signs with. Not merely a key the root
  trusts: ``receipts/trusted-keys.pem`` is a file in the root, and anyone who can add a
  key to it could otherwise have their forgery re-signed with ours (after a key rotation
  every stage therefore runs once more);
- it is a passed receipt of this stage and version, filed under this key, its key
  recomputes from its own fields and its inputs are this run's inputs;
- its counts conserve;
- every object and export file it names is there with the BLAKE3 it records, and every
  artifact file with its sha256.

Anything else is a miss: the stage runs again (repairing a damaged object on the way)
and the run's summary names the entry and why it was refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pipeline.core import exports
from pipeline.core.artifacts import artifact_problem
from pipeline.core.errors import NotFound
from pipeline.core.hashing import digest_json
from pipeline.core.receipts import ReceiptError, cache_entry_path, load_envelope, open_receipt
from pipeline.core.sources import TASK_FAILED
from pipeline.core.store import LakeLayout, object_problem
from pipeline.core.trust import TrustedKeys
from schemas.receipt import InputRef, StageReceipt

if TYPE_CHECKING:
    from pipeline.core.stage import Stage


def cache_key(stage: str, version: str, config: dict[str, Any], inputs: list[InputRef]) -> str:
    return digest_json(
        {
            "stage": stage,
            "version": version,
            "config": config,
            "inputs": sorted([i.name, i.xxh3_128] for i in inputs),
        }
    )


def conservation_problem(
    records_in: int, records_out: int, quarantined: dict[str, int], filtered: dict[str, int]
) -> str | None:
    total = records_out + sum(quarantined.values()) + sum(filtered.values())
    if records_in == total:
        return None
    return (
        f"records_in={records_in} != out {records_out} + quarantined "
        f"{sum(quarantined.values())} + filtered {sum(filtered.values())}"
    )


def claims_problem(receipt: StageReceipt) -> str | None:
    """What a receipt says that cannot be true of itself."""
    recomputed = cache_key(receipt.stage, receipt.stage_version, receipt.config, receipt.inputs)
    if recomputed != receipt.cache_key:
        return "its cache key does not follow from its stage, version, config and inputs"
    if digest_json(receipt.config) != receipt.config_hash:
        return "its config_hash does not match its config"
    problem = conservation_problem(
        receipt.records_in, receipt.records_out, receipt.quarantined, receipt.filtered
    )
    if problem:
        return f"its counts do not conserve ({problem})"
    if (receipt.status == "ok") != receipt.validation.passed:
        return "its status and validation disagree"
    execution = receipt.execution
    if receipt.cache_hit and execution is not None:
        return "it is a cache hit, yet it records an execution"
    if execution is not None and execution.failed > execution.tasks:
        return "it records more failed units than units"
    # A file is quarantined as task_failed only after a unit holding it failed on a pool.
    task_failed = receipt.quarantined.get(TASK_FAILED, 0)
    if task_failed and not receipt.cache_hit and (execution is None or task_failed > execution.failed):
        return "it quarantines more task_failed files than units failed"
    return None


@dataclass(frozen=True)
class Lookup:
    receipt: StageReceipt | None  # a verified entry to reuse
    rejected: str | None = None  # why a stored entry was refused


def lookup(layout: LakeLayout, stage: Stage, key: str, inputs: list[InputRef], signer: TrustedKeys) -> Lookup:
    """``signer``: the public key of the key this run signs with (only)."""
    path = cache_entry_path(layout, key)
    if not path.exists():
        return Lookup(None)
    try:
        receipt, _ = open_receipt(load_envelope(path), signer)
    except (ReceiptError, NotFound) as exc:
        return Lookup(None, str(exc))
    problem = _mismatch(receipt, stage, key, inputs) or claims_problem(receipt)
    if problem is None:
        problem = next((p for ref in receipt.outputs if (p := object_problem(layout, ref))), None)
    if problem is None:
        problem = next((p for ref in receipt.artifacts if (p := artifact_problem(layout, ref))), None)
    if problem is None and receipt.exports:
        problem = exports.problem(layout.keyed_exports(key), receipt.exports)
    if problem is not None:
        return Lookup(None, problem)
    return Lookup(receipt)


def _mismatch(receipt: StageReceipt, stage: Stage, key: str, inputs: list[InputRef]) -> str | None:
    if receipt.stage != stage.name or receipt.stage_version != stage.full_version:
        return (f"it is a receipt of {receipt.stage} {receipt.stage_version}, "
                f"not {stage.name} {stage.full_version}")
    if receipt.cache_key != key:
        return f"it is filed under {key} but names cache key {receipt.cache_key}"
    if receipt.status != "ok":
        return "it records a failed execution"
    if sorted((i.name, i.xxh3_128) for i in receipt.inputs) != sorted((i.name, i.xxh3_128) for i in inputs):
        return "its inputs are not this run's inputs"
    if sorted(o.name for o in receipt.outputs) != sorted(stage.output_names):
        return "its outputs are not the stage's tables"
    recorded = {a.name for a in receipt.artifacts}
    required = {a.name for a in stage.artifacts if not a.optional}
    if not required <= recorded <= {a.name for a in stage.artifacts} or len(recorded) != len(receipt.artifacts):
        return "its artifacts are not the stage's artifacts"
    return None
