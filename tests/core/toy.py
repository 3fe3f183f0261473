"""Tiny real stages for exercising the runner without the collect machinery."""

from __future__ import annotations

from collections import Counter

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel

from pipeline.core.stage import Stage, StageContext, StageResult
from schemas.records import QUARANTINE
from schemas.tables import TableSpec

CALLS: Counter[str] = Counter()


class NumberRow(BaseModel):
    key: str
    value: int


class SquareRow(BaseModel):
    key: str
    square: int


class MakeConfig(BaseModel):
    n: int = 5
    drop_odd: bool = False


class SquareConfig(BaseModel):
    cheat: bool = False  # when True, breaks count conservation on purpose


NUMBERS = TableSpec("numbers", NumberRow, ("key",))
SQUARES = TableSpec("squares", SquareRow, ("key",))


def make_numbers(ctx: StageContext) -> StageResult:
    CALLS["make"] += 1
    cfg = ctx.config
    assert isinstance(cfg, MakeConfig)
    values = list(range(cfg.n))
    kept = [v for v in values if not (cfg.drop_odd and v % 2)]
    table = pa.table({"key": [f"k{v:04d}" for v in kept], "value": kept})
    return StageResult(
        tables={"numbers": table, "quarantine": QUARANTINE.schema.empty_table()},
        records_in=len(values),
        records_out=len(kept),
        filtered={"odd": len(values) - len(kept)} if cfg.drop_odd else {},
    )


def square(ctx: StageContext) -> StageResult:
    CALLS["square"] += 1
    cfg = ctx.config
    assert isinstance(cfg, SquareConfig)
    numbers = ctx.table("numbers")
    out = pa.table({"key": numbers["key"], "square": pc.multiply(numbers["value"], numbers["value"])})
    return StageResult(
        tables={"squares": out, "quarantine": QUARANTINE.schema.empty_table()},
        records_in=numbers.num_rows,
        records_out=numbers.num_rows + (1 if cfg.cheat else 0),
    )


MAKE = Stage("make", "1", MakeConfig, (), (NUMBERS,), make_numbers)
SQUARE = Stage("square", "1", SquareConfig, ("numbers",), (SQUARES,), square)
STAGES = [MAKE, SQUARE]


class ExportConfig(BaseModel):
    forbidden: str = "k9999"  # a key the firewall rejects if it shows up in the export


def export_numbers(ctx: StageContext) -> StageResult:
    numbers = ctx.table("numbers")
    return StageResult(
        tables={"exported": numbers, "quarantine": QUARANTINE.schema.empty_table()},
        records_in=numbers.num_rows,
        records_out=numbers.num_rows,
    )


def materialize(ctx):  # type: ignore[no-untyped-def]
    CALLS["materialize"] += 1
    out = ctx.export_dir / "numbers" / "rows.txt"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(ctx.table("exported")["key"].to_pylist()) + "\n")


def validate(ctx):  # type: ignore[no-untyped-def]
    CALLS["validate"] += 1
    text = (ctx.export_dir / "numbers" / "rows.txt").read_text()
    return [f"forbidden key {ctx.config.forbidden}"] if ctx.config.forbidden in text.split() else []


EXPORTED = TableSpec("exported", NumberRow, ("key",))
EXPORT = Stage("export", "1", ExportConfig, ("numbers",), (EXPORTED,), export_numbers,
               materialize=materialize, validate=validate)
