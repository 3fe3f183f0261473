"""Tiny test-only stages that produce real, signed runs in a temporary lake.

``seed`` makes a ``scores`` table (with a category column), a ``tool_calls`` table (with
an error_kind column) and quarantine rows, all from its config, so a test changes the
"input" by changing the config. ``flaky`` depends on a module-level counter: the
nondeterministic stage the drift report must catch. ``export-toy`` writes an SFT-like
JSONL export with a firewall: only accepted rows may be exported.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
from pydantic import BaseModel, Field

from pipeline.core.runner import Runner, RunOptions, RunResult
from pipeline.core.stage import ExportContext, Stage, StageContext, StageResult, Traits
from pipeline.core.store import LakeLayout
from schemas.records import QUARANTINE
from schemas.tables import TableSpec, empty_table, from_rows

CATEGORIES = ("bugfix", "feature", "refactor", "docs")


class ScoreRow(BaseModel):
    task_id: str
    session_id: str
    category: str | None
    accepted: bool


class CallRow(BaseModel):
    tool_use_id: str
    session_id: str
    error_kind: str | None


class FlakyRow(BaseModel):
    task_id: str
    nonce: int


SCORES = TableSpec("scores", ScoreRow, ("task_id",))
CALLS = TableSpec("tool_calls", CallRow, ("tool_use_id",))
FLAKY = TableSpec("flaky_out", FlakyRow, ("task_id",))
SFT = TableSpec("sft", ScoreRow, ("task_id",))


class SeedConfig(BaseModel):
    sessions: int = Field(default=100, description="Sessions to generate.")
    malformed: dict[str, int] = Field(default_factory=dict, description="reason -> lines to quarantine.")
    error_kinds: list[str] = Field(default_factory=lambda: ["timeout"], description="Error kinds cycled.")
    category_skew: str | None = Field(default=None, description="Category forced for every 2nd session.")


def run_seed(ctx: StageContext) -> StageResult:
    config = ctx.config
    assert isinstance(config, SeedConfig)
    if config.sessions < 0:
        raise ValueError("sessions must be >= 0")
    scores, calls = [], []
    kinds = itertools.cycle(config.error_kinds or [None])
    for i in range(config.sessions):
        category = CATEGORIES[i % len(CATEGORIES)]
        if config.category_skew and i % 2 == 0:
            category = config.category_skew
        scores.append({"task_id": f"t{i:04d}", "session_id": f"s{i:04d}", "category": category,
                       "accepted": i % 5 != 0})
        calls.append({"tool_use_id": f"u{i:04d}", "session_id": f"s{i:04d}",
                      "error_kind": next(kinds) if i % 3 == 0 else None})
    quarantine = [
        {"stage": "seed", "source_file": "x.jsonl", "line_no": n, "record_id": None,
         "session_id": None, "reason": reason, "detail": None}
        for reason, count in sorted(config.malformed.items())
        for n in range(count)
    ]
    return StageResult(
        tables={
            "scores": from_rows(SCORES, scores),
            "tool_calls": from_rows(CALLS, calls),
            "quarantine": from_rows(QUARANTINE, quarantine),
        },
        records_in=config.sessions + len(quarantine),
        records_out=config.sessions,
        quarantined=dict(config.malformed),
    )


SEED = Stage(name="seed", version="1", config_model=SeedConfig, inputs=(), outputs=(SCORES, CALLS),
             run=run_seed)

_counter = itertools.count()


class NoConfig(BaseModel):
    pass


def run_flaky(ctx: StageContext) -> StageResult:
    tasks = ctx.table("scores", columns=["task_id"]).column("task_id").to_pylist()
    nonce = next(_counter)  # the bug: output depends on how often the stage ran
    table = from_rows(FLAKY, [{"task_id": t, "nonce": nonce} for t in tasks])
    return StageResult(
        tables={"flaky_out": table, "quarantine": empty_table(QUARANTINE)},
        records_in=len(tasks),
        records_out=len(tasks),
    )


FLAKY_STAGE = Stage(name="flaky", version="1", config_model=NoConfig, inputs=("scores",),
                    outputs=(FLAKY,), run=run_flaky)


class LossRow(BaseModel):
    step: int
    loss: float


LOSS = TableSpec("loss_log", LossRow, ("step",))


def run_training(ctx: StageContext) -> StageResult:
    """A model-making stage: no records mapped (no quarantine table), and a loss that
    moves in its last bits from run to run (as float sums on another thread order do)."""
    noise = next(_counter) * 1e-12
    table = from_rows(LOSS, [{"step": s, "loss": 2.0 / (s + 1) + noise} for s in range(8)])
    return StageResult(tables={"loss_log": table}, records_in=0, records_out=0)


def stage_with(determinism: str, tolerance: float = 0.0) -> list[Stage]:
    """The stable stages, the flaky one declared ``determinism``, and a training stage
    declared within ``tolerance`` (or ``determinism`` itself when that is ``none``)."""
    flaky = dataclasses.replace(FLAKY_STAGE, traits=Traits(determinism=determinism))  # type: ignore[arg-type]
    training = Stage(name="train-toy", version="1", config_model=NoConfig, inputs=(), outputs=(LOSS,),
                     run=run_training, traits=Traits(determinism="tolerance" if determinism != "none" else "none",
                                                     tolerance=tolerance, maps_records=False))
    return [SEED, flaky, training, EXPORT_STAGE]


def run_export(ctx: StageContext) -> StageResult:
    scores = ctx.table("scores")
    accepted = scores.filter(pa.compute.field("accepted"))
    return StageResult(
        tables={"sft": accepted, "quarantine": empty_table(QUARANTINE)},
        records_in=scores.num_rows,
        records_out=accepted.num_rows,
        filtered={"not_accepted": scores.num_rows - accepted.num_rows},
    )


def export_file(ctx: ExportContext) -> Path:
    return ctx.export_dir / "sft.jsonl"


def materialize_export(ctx: ExportContext) -> None:
    path = export_file(ctx)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = ctx.table("sft").to_pylist()
    path.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))


def validate_export(ctx: ExportContext) -> list[str]:
    """Firewall: every exported line must be an accepted task present in the sft table."""
    allowed = set(ctx.table("sft").column("task_id").to_pylist())
    errors = []
    for n, line in enumerate(export_file(ctx).read_text().splitlines(), start=1):
        row: dict[str, Any] = json.loads(line)
        if not row.get("accepted") or row.get("task_id") not in allowed:
            errors.append(f"sft.jsonl:{n}: task {row.get('task_id')} is not an accepted task")
    return errors


EXPORT_STAGE = Stage(name="export-toy", version="1", config_model=NoConfig, inputs=("scores",),
                     outputs=(SFT,), run=run_export, materialize=materialize_export,
                     validate=validate_export)

STAGES = [SEED, FLAKY_STAGE, EXPORT_STAGE]
STABLE = [SEED, EXPORT_STAGE]


def run(root: Path, stages: Sequence[Stage] = STABLE, **seed: Any) -> RunResult:
    options = RunOptions(root=root, sources=[], stage_config={"seed": seed},
                         recorded_at="2026-01-01T00:00:00Z")
    return Runner(stages, options).run()


def forget_cache(root: Path) -> None:
    """Make the next run execute every stage again instead of hitting the run cache."""
    for path in LakeLayout(root).receipt_cache.glob("*.json"):
        path.unlink()


# --- a source-reading stage, for deep verify ----------------------------------------------


class LineRow(BaseModel):
    session_id: str
    source_file: str
    line_no: int
    text: str


LINES = TableSpec("lines", LineRow, ("session_id", "source_file", "line_no"))


def run_lines(ctx: StageContext) -> StageResult:
    rows, quarantine = [], []
    for file in ctx.sources["claude-code"]:
        for n, raw in enumerate(file.path.read_text().splitlines(), start=1):
            try:
                record = json.loads(raw)
                rows.append({"session_id": record["session_id"], "source_file": file.display_path,
                             "line_no": n, "text": record["text"]})
            except (ValueError, KeyError):
                quarantine.append({"stage": "lines", "source_file": file.display_path, "line_no": n,
                                   "record_id": None, "session_id": None, "reason": "invalid_json",
                                   "detail": None})
    return StageResult(
        tables={"lines": from_rows(LINES, rows), "quarantine": from_rows(QUARANTINE, quarantine)},
        records_in=len(rows) + len(quarantine),
        records_out=len(rows),
        quarantined={"invalid_json": len(quarantine)} if quarantine else {},
    )


LINES_STAGE = Stage(name="lines", version="1", config_model=NoConfig, inputs=(), outputs=(LINES,),
                    run=run_lines, source_kinds=("claude-code",))


def write_sessions(folder: Path, files: int = 4) -> None:
    """Odd file i continues session i-1 (a resumed session), so sampling needs a closure."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(files):
        lines = [json.dumps({"session_id": f"s{i}", "text": f"hello {i}.{k}"}) for k in range(3)]
        if i % 2:
            lines.append(json.dumps({"session_id": f"s{i - 1}", "text": f"resumed {i - 1}"}))
        lines.append("{broken")
        (folder / f"f{i}.jsonl").write_text("\n".join(lines) + "\n")


def run_sources(root: Path, folder: Path, stages: Sequence[Stage] = (LINES_STAGE,)) -> RunResult:
    from pipeline.core.sources import SourceSpec

    options = RunOptions(root=root, sources=[SourceSpec("claude-code", folder)],
                         recorded_at="2026-01-01T00:00:00Z")
    return Runner(stages, options).run()
