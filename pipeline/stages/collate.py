"""collate: SFT and preference rows through the model's real chat template into token
ids and proven loss masks (``pipeline.collate.masks``).

The tokenizer folder is an external input (``--external model=PATH`` or
``[collate] model``; by default the offline Qwen tokenizer, kept as a lake artifact),
so a changed tokenizer or template re-runs collate and nothing else. Every example is
proven or refused with its reason; the receipt's stats give, per template, how many
were refused and why.
"""

from __future__ import annotations

import functools
from typing import Any

import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field

from pipeline.collate.jobs import Job, WorkerSetup, collate_all
from pipeline.collate.masks import IGNORE, Refused, Renderer
from pipeline.collate.tokenizer import (
    choose_template,
    default_tokenizer,
    engines,
    load_tokenizer,
)
from pipeline.core.errors import TracelakeError
from pipeline.core.externals import recheck
from pipeline.core.stage import ExportContext, ExternalInput, Stage, StageContext, StageResult
from pipeline.export.common import Quarantine
from schemas.datasets import (
    COLLATED_PREFERENCE,
    COLLATED_SFT,
)
from schemas.tables import from_rows

STAGE_NAME, VERSION = "collate", "1.0.0"
EXPORT_COLUMNS = ("input_ids", "attention_mask", "labels", "task_id")


class CollateConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field("", description="A local Hugging Face model or tokenizer folder (default: the "
                                        "offline Qwen tokenizer). Its digest, not its path, is in the cache key.")
    template: str = Field("auto", description="auto: TRL's *_training.jinja for the model's family when TRL "
                                              "ships one, else the model's own; model: the model's own as it "
                                              "is; or a TRL template name (qwen3_training, llama3_training...).")
    template_kwargs: dict[str, bool | int | float | str] = Field(
        default_factory=dict, description="Arguments every render gets (e.g. enable_thinking = false)."
    )
    max_length: int = Field(4096, gt=0, description="Longer examples are cut by whole assistant turns.")


class _Tally:
    def __init__(self) -> None:
        self.tokens = 0
        self.trained = 0
        self.dropped_turns = 0
        self.dropped_tokens = 0
        self.truncated = 0

    def add(self, size: tuple[int, int, int, int]) -> None:
        tokens, trained, dropped_turns, dropped_tokens = size
        self.tokens += tokens
        self.trained += trained
        self.dropped_turns += dropped_turns
        self.dropped_tokens += dropped_tokens
        self.truncated += dropped_tokens > 0


def run(ctx: StageContext[CollateConfig]) -> StageResult:
    config = ctx.config
    folder = ctx.external("model")
    tokenizer = load_tokenizer(folder)
    template = choose_template(tokenizer, config.template)
    try:
        renderer = Renderer(tokenizer, template, dict(config.template_kwargs))
    except Refused as refused:  # a template that cannot frame a single turn
        raise TracelakeError(f"collate cannot use the chat template {template.name!r}: {refused}") from None
    sft = ctx.table("sft", columns=["task_id", "session_id", "split", "messages", "tools"]).to_pylist()
    pairs = ctx.table("preference", columns=["pair_id", "prompt", "chosen", "rejected", "tools"]).to_pylist()
    jobs = [Job("sft", row) for row in sft] + [Job("preference", row) for row in pairs]
    setup = WorkerSetup(
        folder=str(folder), template=template, kwargs=dict(config.template_kwargs),
        recheck=functools.partial(recheck, ctx.layout, ctx.cache_mac, ctx.externals["model"]),
        max_length=config.max_length,
    )
    results = collate_all(renderer, jobs, setup, ctx.workers,
                          lambda done, total: ctx.tracker.track(done, total, "collate"))
    quarantine = Quarantine(STAGE_NAME)
    tally = _Tally()
    rows: dict[str, list[dict[str, Any]]] = {"sft": [], "preference": []}
    for job, done in zip(jobs, results, strict=True):
        for size in done.masks:
            tally.add(size)
        if done.row is not None:
            rows[job.kind].append(done.row)
        else:
            assert done.reason is not None
            quarantine.add(done.reason, done.record_id, done.session_id, done.detail)
    rejected = dict(sorted(quarantine.counts.items()))
    stats = {
        "templates": {
            template.name: {
                "examples": len(jobs),
                "collated": len(rows["sft"]) + len(rows["preference"]),
                "rejected": sum(rejected.values()),
                "rejected_share": round(sum(rejected.values()) / len(jobs), 6) if jobs else 0.0,
                "reasons": rejected,
                "generation_tags": template.generation_tags,
            }
        },
        "tokens": tally.tokens,
        "trained_tokens": tally.trained,
        "truncated_examples": tally.truncated,
        "truncation_dropped_turns": tally.dropped_turns,
        "truncation_dropped_tokens": tally.dropped_tokens,
        "terminator": renderer.terminator,
    }
    return StageResult(
        tables={
            "collated_sft": from_rows(COLLATED_SFT, rows["sft"]),
            "collated_preference": from_rows(COLLATED_PREFERENCE, rows["preference"]),
            "quarantine": quarantine.table(),
        },
        records_in=len(jobs),
        records_out=len(rows["sft"]) + len(rows["preference"]),
        quarantined=rejected,
        stats=stats,
    )


def materialize(ctx: ExportContext[CollateConfig]) -> None:
    """``collated/sft.parquet``: exactly the columns axolotl and TRL take pre-tokenised
    (input_ids, attention_mask, labels), plus task_id for lineage; the preference rows
    beside it."""
    out = ctx.export_dir / "collated"
    out.mkdir(parents=True, exist_ok=True)
    sft = ctx.table("collated_sft").select(list(EXPORT_COLUMNS))
    pq.write_table(sft, out / "sft.parquet", compression="zstd")
    preference = ctx.table("collated_preference").drop_columns(["template"])
    pq.write_table(preference, out / "preference.parquet", compression="zstd")


def validate(ctx: ExportContext[CollateConfig]) -> list[str]:
    """Re-read what was written: the columns, one label per id, a label is -100 or the
    id it stands on, no example without a trained token."""
    errors: list[str] = []
    path = ctx.export_dir / "collated" / "sft.parquet"
    table = pq.read_table(path)
    if tuple(table.column_names) != EXPORT_COLUMNS:
        errors.append(f"collated/sft.parquet has columns {table.column_names}, not {list(EXPORT_COLUMNS)}")
        return errors
    for index, (ids, mask, labels, task) in enumerate(zip(*(table[c].to_pylist() for c in EXPORT_COLUMNS),
                                                           strict=True)):
        if not (len(ids) == len(mask) == len(labels)) or any(m != 1 for m in mask):
            errors.append(f"collated/sft.parquet row {index} ({task}): lengths or attention mask are wrong")
        elif any(label not in (IGNORE, token) for label, token in zip(labels, ids, strict=True)):
            errors.append(f"collated/sft.parquet row {index} ({task}): a label is neither -100 nor its id")
        elif all(label == IGNORE for label in labels):
            errors.append(f"collated/sft.parquet row {index} ({task}): nothing is trained")
        if len(errors) >= 20:
            break
    return errors


STAGE = Stage(
    name=STAGE_NAME,
    version=VERSION,
    engines=engines,
    config_model=CollateConfig,
    inputs=("sft", "preference"),
    outputs=(COLLATED_SFT, COLLATED_PREFERENCE),
    run=run,
    materialize=materialize,
    validate=validate,
    externals=(ExternalInput("model", "tokenizer", "model", default=default_tokenizer),),
)
