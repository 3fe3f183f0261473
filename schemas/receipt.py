"""Receipt models: what a stage proves about one execution, and a run's summary.

A StageReceipt is the predicate of an in-toto Statement v1 whose subjects are the output
objects; the Statement travels in a DSSE envelope signed with Ed25519. Timings and the
run id live in the receipt but never in a cache key, a digest or the run_hash.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

RECEIPT_PREDICATE_TYPE = "https://tracelake.dev/StageReceipt/v1"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
DSSE_PAYLOAD_TYPE = "application/vnd.in-toto+json"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ObjectRef(_Model):
    """A table as stored in the lake: logical identity plus the file that holds it."""

    name: str = Field(description="Table name within the run, e.g. 'messages'.")
    xxh3_128: str = Field(description="Logical digest over canonical row content.")
    sha256: str = Field(description="Digest of the Parquet file bytes (storage integrity).")
    rows: int = Field(ge=0)
    path: str = Field(description="Object path relative to the lake root.")


class InputRef(_Model):
    """A stage input: an upstream table or a digest over source files."""

    name: str
    xxh3_128: str
    sha256: str | None = None
    rows: int | None = None


class Validation(_Model):
    passed: bool
    errors: list[str] = Field(default_factory=list)


class Timings(_Model):
    started_at: str
    finished_at: str
    duration_s: float


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
    validation: Validation
    error: str | None = None
    tracelake_version: str
    git_sha: str | None
    recorded_at: str
    timings: Timings


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


class RunSummary(_Model):
    """Time-free summary: two runs over the same inputs produce the same run_hash."""

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
