"""Every kept run's verified receipts, as rows, without verifying every run each time.

The lake database holds every run's receipts, artifacts and inputs (``receipt_history``,
``artifacts``, ``run_inputs``). Opening and verifying each earlier run's receipts
(signatures, then the models) costs a few ms per run, on every run: seconds once a
root keeps hundreds of runs. A run's receipts never change once signed, so each run's
rows are kept in ``data/cache/history.json``, tagged with the cache MAC (only the
signing key's holder can make an entry) together with the trusted keys they were
verified under and the BLAKE3 digest of the run's receipt files. A run is verified
again when its receipt files' bytes differ from the digest (a run whose receipts no
longer verify is left out, as before), or when the trusted keys changed; a run no
longer kept drops out; a tag that fails makes the whole cache a miss.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import blake3

from pipeline.core.errors import TracelakeError
from pipeline.core.hashing import CacheMac
from pipeline.core.receipts import list_runs, load_run_receipts, run_receipt_paths
from pipeline.core.store import LakeLayout, atomic_write_bytes
from pipeline.core.trust import TrustedKeys
from schemas.receipt import StageReceipt

HEADER = b"tracelake-history-v1 "
TABLES = ("receipts", "artifacts", "inputs")

RowsOf = Callable[[list[StageReceipt]], dict[str, list[dict[str, Any]]]]


@dataclass
class History:
    receipts: list[dict[str, Any]] = field(default_factory=list)
    artifacts: list[dict[str, Any]] = field(default_factory=list)
    inputs: list[dict[str, Any]] = field(default_factory=list)
    verified: int = 0  # runs verified now (not taken from the cache)


def history_rows(layout: LakeLayout, keys: TrustedKeys, rows_of: RowsOf, mac: CacheMac | None,
                 shape: str = "") -> History:
    """The rows of every kept run whose receipts verify, in run order. ``shape`` names
    the rows' columns: rows cached in another shape are built again."""
    trust = [*sorted(keys.ids), f"shape:{shape}"]
    cached = _load(layout, mac, trust) if mac is not None else {}
    kept: dict[str, dict[str, Any]] = {}
    out = History()
    for run_id in list_runs(layout):
        digest = _files_digest(layout, run_id)
        entry = cached.get(run_id)
        if entry is None or entry.get("files") != digest:
            try:
                rows = rows_of(load_run_receipts(layout, run_id, keys))
            except TracelakeError:  # receipts that do not verify: left out
                continue
            entry = {"files": digest, **rows}
            out.verified += 1
        kept[run_id] = entry
        for table in TABLES:
            getattr(out, table).extend(entry[table])
    if mac is not None and (out.verified or set(kept) != set(cached)):
        _save(layout, mac, trust, kept)
    return out


def _files_digest(layout: LakeLayout, run_id: str) -> str:
    hasher = blake3.blake3()
    for path in run_receipt_paths(layout, run_id):
        data = path.read_bytes()
        hasher.update(f"{path.name}\0{len(data)}\0".encode())
        hasher.update(data)
    return str(hasher.hexdigest())


def _load(layout: LakeLayout, mac: CacheMac, trust: list[str]) -> dict[str, dict[str, Any]]:
    try:
        head, _, body = layout.history_cache.read_bytes().partition(b"\n")
        tag = bytes.fromhex(head[len(HEADER):].decode("ascii")) if head.startswith(HEADER) else b""
    except (OSError, ValueError):
        return {}
    if not mac.same(tag, mac.tag(body)):
        return {}
    try:
        loaded = json.loads(body)
    except ValueError:
        return {}
    if not isinstance(loaded, dict) or loaded.get("trust") != trust or not isinstance(loaded.get("runs"), dict):
        return {}
    runs: dict[str, dict[str, Any]] = loaded["runs"]
    return runs


def _save(layout: LakeLayout, mac: CacheMac, trust: list[str], runs: dict[str, dict[str, Any]]) -> None:
    body = json.dumps({"trust": trust, "runs": runs}, sort_keys=True).encode("utf-8")
    atomic_write_bytes(layout.history_cache, HEADER + mac.tag(body).hex().encode("ascii") + b"\n" + body)
