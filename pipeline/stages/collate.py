"""collate: SFT and preference rows through the model's real chat template into token
ids and proven loss masks (``pipeline.collate.masks``).

The tokenizer folder is an external input (``--external model=PATH`` or
``[collate] model``; by default the offline Qwen tokenizer, kept as a lake artifact),
so a changed tokenizer or template re-runs collate and nothing else. Every example is
proven or refused with its reason; the receipt's stats give, per template, how many
were refused and why.
"""

from __future__ import annotations

import json
from typing import Any

import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field

from pipeline.collate.masks import IGNORE, Masked, Refused, Renderer, mask_conversation
from pipeline.collate.tokenizer import (
    choose_template,
    default_tokenizer,
    engines,
    load_tokenizer,
)
from pipeline.core.errors import TracelakeError
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


def _messages(text: str) -> Any:
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return None


def _tools(text: str | None) -> list[dict[str, Any]] | None:
    tools = _messages(text) if text else None
    return tools if isinstance(tools, list) and tools else None


class _Tally:
    def __init__(self) -> None:
        self.examples = 0
        self.tokens = 0
        self.trained = 0
        self.dropped_turns = 0
        self.dropped_tokens = 0
        self.truncated = 0

    def add(self, masked: Masked) -> None:
        self.tokens += len(masked.input_ids)
        self.trained += masked.trained
        self.dropped_turns += masked.dropped_turns
        self.dropped_tokens += masked.dropped_tokens
        self.truncated += masked.dropped_tokens > 0


def run(ctx: StageContext[CollateConfig]) -> StageResult:
    config = ctx.config
    tokenizer = load_tokenizer(ctx.external("model"))
    template = choose_template(tokenizer, config.template)
    try:
        renderer = Renderer(tokenizer, template, dict(config.template_kwargs))
    except Refused as refused:  # a template that cannot frame a single turn
        raise TracelakeError(f"collate cannot use the chat template {template.name!r}: {refused}") from None
    quarantine = Quarantine(STAGE_NAME)
    tally = _Tally()
    sft_rows: list[dict[str, Any]] = []
    sft = ctx.table("sft", columns=["task_id", "session_id", "split", "messages", "tools"]).to_pylist()
    for row in ctx.tracker.track(sft, len(sft), "collate sft"):
        tally.examples += 1
        try:
            masked = mask_conversation(renderer, _messages(row["messages"]), _tools(row["tools"]),
                                       max_length=config.max_length)
        except Refused as refused:
            quarantine.add(refused.reason, row["task_id"], row["session_id"], refused.detail)
            continue
        tally.add(masked)
        sft_rows.append({
            "task_id": row["task_id"], "session_id": row["session_id"], "split": row["split"],
            "input_ids": masked.input_ids, "attention_mask": [1] * len(masked.input_ids),
            "labels": masked.labels, "n_tokens": len(masked.input_ids), "n_trained": masked.trained,
            "assistant_turns": masked.assistant_turns, "dropped_turns": masked.dropped_turns,
            "template": template.name,
        })
    pref_rows: list[dict[str, Any]] = []
    pairs = ctx.table("preference", columns=["pair_id", "prompt", "chosen", "rejected", "tools",
                                             "chosen_task_id"]).to_pylist()
    for row in ctx.tracker.track(pairs, len(pairs), "collate preference"):
        tally.examples += 1
        try:
            pref_rows.append(_preference(renderer, row, config.max_length, tally))
        except Refused as refused:
            quarantine.add(refused.reason, row["pair_id"], None, refused.detail)
    rejected = dict(sorted(quarantine.counts.items()))
    stats = {
        "templates": {
            template.name: {
                "examples": tally.examples,
                "collated": len(sft_rows) + len(pref_rows),
                "rejected": sum(rejected.values()),
                "rejected_share": round(sum(rejected.values()) / tally.examples, 6) if tally.examples else 0.0,
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
            "collated_sft": from_rows(COLLATED_SFT, sft_rows),
            "collated_preference": from_rows(COLLATED_PREFERENCE, pref_rows),
            "quarantine": quarantine.table(),
        },
        records_in=len(sft) + len(pairs),
        records_out=len(sft_rows) + len(pref_rows),
        quarantined=rejected,
        stats=stats,
    )


def _preference(renderer: Renderer, row: dict[str, Any], max_length: int, tally: _Tally) -> dict[str, Any]:
    """Prompt ids (through the generation prompt) and each side's completion ids with
    the mask of its own assistant turns; both sides must give the same prompt ids."""
    prompt, tools = _messages(row["prompt"]), _tools(row["tools"])
    if not isinstance(prompt, list):
        raise Refused("bad_messages", "prompt")
    sides: dict[str, tuple[list[int], list[int], list[int]]] = {}
    for side in ("chosen", "rejected"):
        completion = _messages(row[side])
        if not isinstance(completion, list):
            raise Refused("bad_messages", side)
        masked = mask_conversation(renderer, prompt + completion, tools, train_from=len(prompt),
                                   max_length=max_length)
        if masked.dropped_tokens:  # one side cut, the other whole: not a fair pair
            raise Refused("too_long", f"the {side} side exceeds max_length")
        start = masked.spans[0][0]
        ids = masked.input_ids
        sides[side] = (ids[:start], ids[start:], [int(label != IGNORE) for label in masked.labels[start:]])
        tally.add(masked)
    if sides["chosen"][0] != sides["rejected"][0]:
        raise Refused("prompt_ids_differ", "the two sides render the shared prompt differently")
    return {
        "pair_id": row["pair_id"],
        "prompt_input_ids": sides["chosen"][0],
        "chosen_input_ids": sides["chosen"][1], "chosen_mask": sides["chosen"][2],
        "rejected_input_ids": sides["rejected"][1], "rejected_mask": sides["rejected"][2],
        "template": renderer.template.name,
    }


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
