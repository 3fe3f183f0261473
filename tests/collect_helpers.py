"""Shared helpers for the collect tests: run the stage through the real runner."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.core.runner import Runner, RunOptions
from pipeline.core.sources import SourceSpec
from pipeline.stages.collect import STAGE

TABLES = ("sessions", "messages", "tool_calls", "prompts", "branches", "subagents", "collect_quarantine")


@dataclass
class Collected:
    root: Path
    receipt: Any
    tables: dict[str, pa.Table]
    digests: dict[str, str]


def collect(root: Path, sources: list[tuple[str, Path]], workers: int = 1, **config: Any) -> Collected:
    specs = [SourceSpec(kind, path) for kind, path in sources]
    options = RunOptions(root=root, sources=specs, workers=workers, recorded_at="2026-01-01T00:00:00Z",
                         stage_config={"collect": config} if config else {})
    result = Runner([STAGE], options).run(["collect"])
    outcome = result.outcomes[0]
    assert outcome.status == "ok", outcome.error
    tables = {name: pq.read_table(root / ref.path) for name, ref in result.summary.tables.items()}
    return Collected(root, outcome.receipt, tables, dict(result.summary.stages[0].outputs))


def all_text(tables: dict[str, pa.Table]) -> str:
    """Every string cell of every table, for leak checks."""
    parts = []
    for table in tables.values():
        for column in table.columns:
            if pa.types.is_large_string(column.type) or pa.types.is_string(column.type):
                parts.extend(v for v in column.to_pylist() if v is not None)
    return "\n".join(parts)
