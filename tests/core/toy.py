"""Tiny real stages for exercising the runner without the collect machinery."""

from __future__ import annotations

import json
import os
from collections import Counter

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel

from pipeline.core.stage import ExternalInput, Stage, StageContext, StageResult, Traits
from schemas.records import QUARANTINE
from schemas.tables import ArtifactSpec, TableSpec

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


# --- artifacts, external inputs, resumable work --------------------------------------------


class AdapterRow(BaseModel):
    step: int
    loss: float


class AdapterConfig(BaseModel):
    scale: int = 3


ADAPTER_LOG = TableSpec("adapter_log", AdapterRow, ("step",))


def train_adapter(ctx: StageContext[AdapterConfig]) -> StageResult:
    """A model-making stage: no records mapped, a folder of files out (an "adapter")."""
    CALLS["adapter"] += 1
    squares = ctx.table("squares")["square"].to_pylist()
    out = ctx.artifact_dir("adapter")
    (out / "weights").mkdir()
    (out / "weights" / "w.bin").write_bytes(bytes(v * ctx.config.scale % 256 for v in squares))
    (out / "adapter_config.json").write_text('{"r": 8}\n')
    (out / ".tmp-notes").write_text("a stage's file, whatever its name\n")
    log = pa.table({"step": [0, 1], "loss": [1.0, 0.5]})
    return StageResult(tables={"adapter_log": log}, records_in=len(squares), records_out=len(squares),
                       artifacts={"adapter": out})


ADAPTER = Stage(
    "adapter", "1", AdapterConfig, ("squares",), (ADAPTER_LOG,), train_adapter,
    traits=Traits(maps_records=False),
    artifacts=(ArtifactSpec("adapter", "LoRA-like weights and their config"),),
)


class RenderedRow(BaseModel):
    key: str
    text: str


class RenderConfig(BaseModel):
    template_path: str = ""


RENDERED = TableSpec("rendered", RenderedRow, ("key",))


def render(ctx: StageContext[RenderConfig]) -> StageResult:
    """Reads a chat template from outside the lake, only through its context."""
    CALLS["render"] += 1
    template = ctx.external("template").read_text()
    numbers = ctx.table("numbers")
    text = [template.replace("{value}", str(v)) for v in numbers["value"].to_pylist()]
    out = pa.table({"key": numbers["key"], "text": text})
    return StageResult(tables={"rendered": out, "quarantine": QUARANTINE.schema.empty_table()},
                       records_in=numbers.num_rows, records_out=numbers.num_rows)


RENDER = Stage(
    "render", "1", RenderConfig, ("numbers",), (RENDERED,), render,
    externals=(ExternalInput("template", "chat_template", "template_path"),),
)


PROCESSED: list[int] = []  # the items a resumable stage worked on, in this process
DIE_AFTER_ENV = "TRACELAKE_TOY_DIE_AFTER"


def slow_square(ctx: StageContext[SquareConfig]) -> StageResult:
    """Checkpoints after every item; killed hard (``os._exit``, no cleanup) after
    ``$TRACELAKE_TOY_DIE_AFTER`` items when that is set."""
    values = ctx.table("numbers")["value"].to_pylist()
    saved = ctx.resumed("done")
    done: list[int] = json.loads(saved) if saved is not None else []
    die_after = int(os.environ.get(DIE_AFTER_ENV, "0"))
    for value in values[len(done):]:
        PROCESSED.append(value)
        done.append(value * value)
        ctx.checkpoint("done", json.dumps(done).encode())
        if die_after and len(PROCESSED) >= die_after:
            os._exit(9)
    keys = ctx.table("numbers")["key"]
    out = pa.table({"key": keys, "square": pa.array(done, pa.int64())})
    return StageResult(tables={"squares": out, "quarantine": QUARANTINE.schema.empty_table()},
                       records_in=len(values), records_out=len(values))


SLOW_SQUARE = Stage("square", "1", SquareConfig, ("numbers",), (SQUARES,), slow_square)


def loose_adapter(ctx: StageContext[AdapterConfig]) -> StageResult:
    """Returns a folder of the shared scratch area as its artifact: refused."""
    out = ctx.scratch / "loose"
    out.mkdir(parents=True, exist_ok=True)
    (out / "w.bin").write_bytes(b"w")
    return StageResult(tables={"adapter_log": pa.table({"step": [0], "loss": [1.0]})}, records_in=0,
                       records_out=0, artifacts={"adapter": out})


LOOSE_ADAPTER = Stage(
    "adapter", "1", AdapterConfig, ("squares",), (ADAPTER_LOG,), loose_adapter,
    traits=Traits(maps_records=False),
    artifacts=(ArtifactSpec("adapter", "LoRA-like weights and their config"),),
)
