"""Rows of the tables the SQL layer builds from signed receipts (``pipeline.sql``).

One model per table: its Arrow schema (``schemas.tables.arrow_schema``) is what DuckDB
sees, its JSON Schema what a client reads; nothing else lists the columns.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class _Row(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ReceiptRow(_Row):
    """One stage receipt (tables ``receipts`` and ``receipt_history``)."""

    run_id: str
    stage: str
    stage_version: str
    status: str
    cache_hit: bool
    cache_key: str
    config_hash: str
    records_in: int
    records_out: int
    quarantined: int
    filtered: int
    quarantined_by_reason: str = Field(description="JSON object: reason -> records.")
    filtered_by_reason: str = Field(description="JSON object: reason -> records.")
    validation_passed: bool
    validation_errors: str = Field(description="JSON list.")
    started_at: str
    finished_at: str
    duration_s: float
    recorded_at: str
    git_sha: str | None
    tracelake_version: str
    executor: str | None = Field(default=None, description="Where it ran (None: a cache hit, nothing ran).")
    tasks: int | None = Field(default=None, description="Units of work on the executor's pool.")
    retries: int | None = None
    failed_tasks: int | None = Field(default=None, description="Units that failed on every attempt.")


class ArtifactRow(_Row):
    """One artifact a stage produced, in any run (table ``artifacts``)."""

    run_id: str
    stage: str
    name: str
    digest: str = Field(description="Tree digest: sha256 over the manifest of (path, size, sha256).")
    files: int
    bytes: int
    path: str = Field(description="Folder relative to the lake root.")


class RunInputRow(_Row):
    """One input of one stage in any run (table ``run_inputs``): which runs used this
    model, tokenizer or template is ``WHERE digest = ...``."""

    run_id: str
    stage: str
    input: str = Field(description="A table name, source:<kind>, external:<name> or artifact:<name>.")
    kind: str = Field(description="table, source, external or artifact.")
    digest: str = Field(description="Tree digest (sha256) of an external input or an artifact, else its xxh3-128.")
    rows: int | None
    location: str | None = Field(description="Where an external input was read.")
