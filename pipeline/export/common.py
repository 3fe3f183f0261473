"""Small helpers every scoring and export stage shares."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import xxhash

from pipeline.core.imports import LazyModule
from pipeline.core.stage import ExportContext, StageContext
from schemas.records import QUARANTINE
from schemas.tables import TableSpec, from_rows

if TYPE_CHECKING:
    import polars as pl
else:
    pl = LazyModule("polars")

SCORER_VERSION = "1.0.0"

# Category order: higher is better. Preference pairs need a strict improvement.
CATEGORY_RANK = {"rejected": 0, "needs_human_review": 1, "partially_accepted": 2, "accepted": 3}


def row_id(*parts: str) -> str:
    """``digest_json(list(parts))``: for a list of strings orjson writes the same bytes as
    the canonical (stdlib) encoder, several times faster (tests/exports/test_equivalence)."""
    return xxhash.xxh3_128_hexdigest(orjson.dumps(list(parts)))


def read_table(path: Path, columns: list[str] | None = None) -> pa.Table:
    """One Parquet file as a table. ``pq.ParquetFile`` rather than ``pq.read_table``: the
    latter imports pyarrow.dataset (and pandas), ~0.2 s the first stage would pay. One
    thread: the lake's tables are one row group, and Arrow's threaded read of one was
    measured no faster and far more erratic (0.13-0.9 s for the same 135 MB)."""
    return pq.ParquetFile(path).read(columns=columns, use_threads=False)


def input_table(ctx: StageContext[Any], name: str, columns: list[str] | None = None) -> pa.Table:
    return read_table(ctx.path(name), columns)


def output_table(ctx: ExportContext[Any], name: str) -> pa.Table:
    return read_table(ctx.path(name))


def frame(ctx: StageContext[Any], name: str, columns: list[str] | None = None) -> pl.DataFrame:
    """An input table as a polars frame, read by polars itself: its reader builds polars'
    string views directly, where going through Arrow would copy every string again."""
    return read_frame(ctx.path(name), columns)


def read_frame(path: Path, columns: list[str] | None = None) -> pl.DataFrame:
    return pl.read_parquet(path, columns=columns, glob=False)  # a root may hold [ ] * ?


def dumps(obj: Any) -> str:
    """Compact JSON with stable key order, for values stored as strings in Parquet."""
    return orjson.dumps(obj, option=orjson.OPT_SORT_KEYS).decode()


def loads(text: str | None) -> Any:
    return orjson.loads(text) if text else None


def to_table(spec: TableSpec, rows: list[dict[str, Any]]) -> pa.Table:
    return from_rows(spec, rows) if rows else spec.schema.empty_table()


class Quarantine:
    """Collects set-aside records with one reason each, and their per-reason counts."""

    def __init__(self, stage: str) -> None:
        self.stage = stage
        self.rows: list[dict[str, Any]] = []
        self.counts: Counter[str] = Counter()

    def add(
        self,
        reason: str,
        record_id: str | None,
        session_id: str | None = None,
        detail: str | None = None,
        source_file: str | None = None,
        line_no: int | None = None,
    ) -> None:
        self.counts[reason] += 1
        self.rows.append(
            {
                "stage": self.stage,
                "source_file": source_file,
                "line_no": line_no,
                "record_id": record_id,
                "session_id": session_id,
                "reason": reason,
                "detail": detail[:500] if detail else detail,
            }
        )

    def table(self) -> pa.Table:
        return to_table(QUARANTINE, self.rows)
