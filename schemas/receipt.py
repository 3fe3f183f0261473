"""Receipt models: what a stage proves about one execution, and what a run proves.

A StageReceipt is the predicate of an in-toto Statement v1 whose subjects are the output
objects and export files; a RunSummary is the predicate of the run's own Statement,
whose subjects are the run's stage receipts and every export file. Both travel in DSSE
envelopes signed with Ed25519. Timings and the run id live in receipts but never in a
cache key, a digest, an object's bytes or the run_hash.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

RECEIPT_PREDICATE_TYPE = "https://tracelake.dev/StageReceipt/v2"
RUN_PREDICATE_TYPE = "https://tracelake.dev/RunStatement/v1"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
DSSE_PAYLOAD_TYPE = "application/vnd.in-toto+json"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ObjectRef(_Model):
    """A table as stored in the lake: logical identity plus the file that holds it."""

    name: str = Field(description="Table name within the run, e.g. 'messages'.")
    xxh3_128: str = Field(description="Logical digest over canonical row content.")
    sha256: str = Field(description="Digest of the Parquet file bytes (storage integrity).")
    blake3: str = Field(description="BLAKE3 of the file bytes (checked before a run reuses it).")
    rows: int = Field(ge=0)
    path: str = Field(description="Object path relative to the lake root.")


class ExportFile(_Model):
    """A file written for external clients (a trainer, ``datasets``, a third party)."""

    path: str = Field(description="Path inside the run's export folder, e.g. 'sft/train.jsonl'.")
    size: int = Field(ge=0)
    sha256: str
    blake3: str


class InputRef(_Model):
    """A stage input: an upstream table (its name), a digest over source files
    (``source:<kind>``) or an external input (``external:<name>``: a model, tokenizer or
    chat template, digested as a tree; ``sha256`` is its tree digest, ``rows`` its files)."""

    name: str
    xxh3_128: str
    sha256: str | None = None
    rows: int | None = None
    location: str | None = Field(
        default=None, description="External inputs: where it was read (never part of a cache key)."
    )


class TreeFile(_Model):
    """One file of a tree (an artifact or an external input), in its sorted manifest."""

    path: str = Field(description="Relative POSIX path inside the tree ('.' for a lone file).")
    size: int = Field(ge=0)
    sha256: str


class ArtifactRef(_Model):
    """A named directory of files a stage produced (a LoRA adapter, a plot, a snapshot),
    stored once under its tree digest."""

    name: str
    digest: str = Field(description="sha256 over the canonical manifest of (path, size, sha256).")
    files: list[TreeFile]
    bytes: int = Field(ge=0)
    path: str = Field(description="Folder relative to the lake root.")


class SecretRescan(_Model):
    """What the export firewall's secret rescan of the written files covered and found."""

    scanners: dict[str, str] = Field(description="Secret-scanning distribution -> version, both rule sets.")
    strings_scanned: int = Field(description="Distinct strings rescanned in what the stage wrote.")
    values_vouched: int = Field(
        description="Written JSON values byte-identical to a conversation the score stage scanned clean."
    )
    findings: dict[str, int] = Field(
        default_factory=dict, description="Secret kind -> written values it was found in (empty when clean)."
    )


class Validation(_Model):
    passed: bool
    errors: list[str] = Field(default_factory=list)
    secret_rescan: SecretRescan | None = Field(
        default=None, description="Export stages: the firewall's rescan of their written files."
    )


class Timings(_Model):
    started_at: str
    finished_at: str
    duration_s: float


class Execution(_Model):
    """Where a stage's execution ran and how its units of work went. A record, like the
    timings: the cache key, the outputs and the run_hash are the same on every executor."""

    executor: str = Field(description="local, subprocess, ray, ray://HOST:PORT or ray:auto")
    tasks: int = Field(default=0, ge=0, description="Units of work the executor's pool ran (0: the stage's own processes).")
    retries: int = Field(default=0, ge=0, description="Attempts after a unit's first (a killed worker, an error).")
    failed: int = Field(default=0, ge=0, description="Units that failed on every attempt (collect quarantines their files).")
    unit_s: float = Field(default=0.0, ge=0, description="The units' own run time, summed over workers.")
    map_s: float = Field(default=0.0, ge=0, description="Wall time the stage waited on its units; the rest of its "
                         "duration is its reduce (merge, sort, write) and set-up.")
    gpus: int = Field(default=0, ge=0, description="GPUs each task held: a stage that wants one (train) runs whole "
                      "as one task on a GPU node when the Ray cluster has one; 0 elsewhere.")


class StageReceipt(_Model):
    """One stage, one run. Counts conserve: records_in = out + quarantined + filtered."""

    run_id: str
    stage: str
    stage_version: str
    status: Literal["ok", "failed"]
    cache_key: str
    cache_hit: bool
    config: dict[str, object]
    config_hash: str
    inputs: list[InputRef]
    outputs: list[ObjectRef]
    records_in: int
    records_out: int
    quarantined: dict[str, int]
    filtered: dict[str, int]
    stats: dict[str, object] = Field(
        default_factory=dict, description="Stage-specific tallies (line kinds, redactions)."
    )
    exports: list[ExportFile] = Field(
        default_factory=list, description="Files in exports/<run_id>/ this stage published."
    )
    artifacts: list[ArtifactRef] = Field(
        default_factory=list, description="Directories of files the stage produced (not tables)."
    )
    determinism: Literal["bitwise", "tolerance", "none"] = Field(
        default="bitwise", description="The stage's declared determinism (its traits) when it ran."
    )
    validation: Validation
    error: str | None = None
    cached_from: str | None = Field(
        default=None, description="On a cache hit: the run whose execution is reused."
    )
    tracelake_version: str
    git_sha: str | None
    recorded_at: str
    timings: Timings
    execution: Execution | None = Field(default=None, description="None on a cache hit: nothing ran.")


class StageStatus(_Model):
    stage: str
    status: Literal["ok", "failed", "skipped_upstream_failed"]
    cache_hit: bool
    cache_key: str | None
    records_in: int
    records_out: int
    quarantined: int
    filtered: int
    outputs: dict[str, str] = Field(description="table name -> xxh3-128")
    validation_passed: bool


class RejectedCacheEntry(_Model):
    """A stored cache entry a run refused to reuse (then the stage ran again)."""

    stage: str
    cache_key: str
    reason: str


class Cleanup(_Model):
    """Debris of killed runs that this run removed before it started."""

    temp_files: int = 0
    temp_bytes: int = 0
    unfinished_runs: list[str] = Field(default_factory=list)


class RunSummary(_Model):
    """The predicate of a run's signed statement. Time-free: two runs over the same
    inputs produce the same run_hash."""

    run_id: str
    tracelake_version: str
    stages: list[StageStatus]
    tables: dict[str, ObjectRef]
    total_records_in: int
    total_records_out: int
    total_quarantined: int
    total_filtered: int
    datasets: dict[str, int]
    overall_passed: bool
    run_hash: str
    rejected_cache: list[RejectedCacheEntry] = Field(default_factory=list)
    cleanup: Cleanup = Field(default_factory=Cleanup)
