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
import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field

from pipeline.collate.jobs import Job, WorkerSetup, collate_all, parse_json
from pipeline.collate.masks import IGNORE, stage_renderer
from pipeline.collate.sdpo import DEFAULT_HINTS, Site, find_sites, strip_thinking_from
from pipeline.collate.tokenizer import (
    default_tokenizer,
    engines,
)
from pipeline.core.errors import TracelakeError
from pipeline.core.externals import recheck
from pipeline.core.stage import ExportContext, ExternalInput, Stage, StageContext, StageResult
from pipeline.core.store import TableStream
from pipeline.export.common import Quarantine
from schemas.datasets import (
    COLLATED_PREFERENCE,
    COLLATED_SDPO,
    COLLATED_SFT,
    PREFERENCE,
    SFT,
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
    sdpo: bool = Field(True, description="Make SDPO hint-distillation rows at tool-error sites.")
    hints: dict[str, str] = Field(
        default_factory=dict, description="Error kind -> hint, over the defaults (command_not_found, "
                                          "file_not_found, permission_denied, syntax_error, connection_error, "
                                          "tool_error).")
    hint_role: Literal["user", "system"] = Field("user", description="The role of the inserted hint message.")
    strip_thinking: bool = Field(
        False, description="Drop thinking from SDPO traces. Off: the recovery's reasoning is what the hint "
                           "should change, and a recovery that is only reasoning is still one.")


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


class _Rows:
    """Collated rows by kind, turned into Arrow every ``CHUNK`` rows and spilled to an
    Arrow stream file in the stage's scratch area, then streamed back to the store batch
    by batch: a big run's token lists never sit in memory whole (a token id is 8 bytes
    in Arrow, ~36 as a Python int in a list). Jobs are submitted in each table's
    canonical order, so the rows come out in it (the store checks)."""

    CHUNK = 512
    SPECS = {"sft": COLLATED_SFT, "preference": COLLATED_PREFERENCE, "sdpo": COLLATED_SDPO}

    def __init__(self, scratch: Path) -> None:
        self.scratch = scratch
        self.pending: dict[str, list[dict[str, Any]]] = {kind: [] for kind in self.SPECS}
        self.writers: dict[str, tuple[Any, Any]] = {}  # kind -> (file, writer)
        self.counts: Counter[str] = Counter()

    @property
    def count(self) -> int:
        return sum(self.counts.values())

    def add(self, kind: str, row: dict[str, Any]) -> None:
        self.pending[kind].append(row)
        self.counts[kind] += 1
        if len(self.pending[kind]) >= self.CHUNK:
            self._flush(kind)

    def _flush(self, kind: str) -> None:
        if not self.pending[kind]:
            return
        chunk = _with_attention_mask(self.SPECS[kind], self.pending[kind]) if kind == "sft" else \
            from_rows(self.SPECS[kind], self.pending[kind])
        self.pending[kind] = []
        if kind not in self.writers:
            self.scratch.mkdir(parents=True, exist_ok=True)
            handle = tempfile.TemporaryFile(prefix=".tmp-collated-", dir=self.scratch)  # gone when closed
            self.writers[kind] = (handle, pa.ipc.new_stream(handle, chunk.schema))
        self.writers[kind][1].write_table(chunk)

    def stream(self, kind: str) -> TableStream:
        self._flush(kind)
        schema = self.SPECS[kind].schema
        if kind not in self.writers:
            return TableStream(schema, [], 0)
        handle, writer = self.writers.pop(kind)
        writer.close()
        handle.seek(0)

        def batches() -> Iterator[pa.RecordBatch]:
            with handle:
                yield from pa.ipc.open_stream(handle)

        return TableStream(schema, batches(), self.counts[kind])


def _with_attention_mask(spec: Any, rows: list[dict[str, Any]]) -> pa.Table:
    """SFT rows, whose attention mask is all ones (a row is one example, unpadded): made
    here in Arrow from the ids' offsets, not carried back from a worker as a list."""
    fields = [field for field in spec.schema if field.name != "attention_mask"]
    table = pa.Table.from_pylist(rows, schema=pa.schema(fields))
    ids = table.column("input_ids").combine_chunks()
    ones = pa.array(np.ones(len(ids.values), dtype=np.int64))
    mask = pa.LargeListArray.from_arrays(ids.offsets, ones)
    position = spec.schema.get_field_index("attention_mask")
    return table.add_column(position, spec.schema.field(position), mask).cast(spec.schema)


_READ_ROWS = 256  # rows turned into Python objects at a time
_SFT_COLUMNS = ["task_id", "session_id", "split", "messages", "tools"]


def _stored_rows(path: Path, columns: list[str]) -> Iterator[dict[str, Any]]:
    """A stored table's rows as they lie, a batch at a time."""
    with pq.ParquetFile(path) as parquet:
        for batch in parquet.iter_batches(batch_size=_READ_ROWS, columns=columns):
            yield from batch.to_pylist()


def _canonical_rows(path: Path, columns: list[str], keys: tuple[str, ...], stored: tuple[str, ...]
                    ) -> Iterator[dict[str, Any]]:
    """A stored table's rows in the order of a table sorted on ``keys`` (the same stable
    Arrow sort), a batch at a time. A table stored sorted on ``keys`` already is read as
    it lies; otherwise its Arrow form is sorted and taken from a batch at a time (Arrow
    text, not Python objects, is what stays in memory). DuckDB's bounded sort was tried
    for this and failed with its own out-of-memory error on the 500 MB corpus's
    preference table (wide JSON strings): a stage must not fail on data it can hold."""
    if tuple(stored) == tuple(keys):
        yield from _stored_rows(path, columns)
        return
    table = pq.read_table(path, columns=columns)
    order = pc.sort_indices(table.select(list(keys)), sort_keys=[(key, "ascending") for key in keys])
    for start in range(0, len(order), _READ_ROWS):
        yield from table.take(order[start:start + _READ_ROWS]).to_pylist()


def _task_key(row: dict[str, Any]) -> tuple[str, str, str]:
    return row["split"], row["session_id"], row["task_id"]


def _num_rows(path: Path) -> int:
    with pq.ParquetFile(path) as parquet:
        return int(parquet.metadata.num_rows)


def run(ctx: StageContext[CollateConfig]) -> StageResult:
    config = ctx.config
    folder = ctx.external("model")
    renderer = stage_renderer(STAGE_NAME, folder, config.template, config.template_kwargs)
    template = renderer.template
    sft_path, preference_path = ctx.path("sft"), ctx.path("preference")
    # The SDPO sites first (one pass, keeping only where they are), so that every count
    # is known before the work starts; the rows themselves are read as the work goes.
    sites, sdpo_yield, filtered = _sdpo_sites(ctx, sft_path) if config.sdpo else ({}, {}, {})
    total = _num_rows(sft_path) + _num_rows(preference_path) + sum(len(found) for found in sites.values())

    hints = {**DEFAULT_HINTS, **config.hints}

    def jobs() -> Iterator[Job]:
        """Each kind in the order of the table it makes (_Rows keeps the kinds apart): a
        task's SDPO sites follow its SFT row, so one pass over SFT makes both, in SDPO's
        order (SFT's keys, then the failing index)."""
        for row in _canonical_rows(sft_path, _SFT_COLUMNS, COLLATED_SFT.sort_keys, SFT.sort_keys):
            yield Job("sft", row)
            for site in sites.get(_task_key(row), ()):
                yield Job("sdpo", {"task_id": row["task_id"], "session_id": row["session_id"],
                                   "split": row["split"], "messages": row["messages"], "tools": row["tools"],
                                   "strip_thinking": config.strip_thinking, "site": site,
                                   "hint": hints[site.error_kind], "hint_role": config.hint_role})
        for row in _canonical_rows(preference_path, ["pair_id", "prompt", "chosen", "rejected", "tools"],
                                   COLLATED_PREFERENCE.sort_keys, PREFERENCE.sort_keys):
            yield Job("preference", row)

    setup = WorkerSetup(
        folder=str(folder), template=template, kwargs=dict(config.template_kwargs),
        recheck=functools.partial(recheck, ctx.layout, ctx.cache_mac, ctx.externals["model"]),
        max_length=config.max_length,
    )
    results = collate_all(renderer, jobs(), total, setup, ctx.workers,
                          lambda done, total: ctx.tracker.track(done, total, "collate"), ctx.pool)
    quarantine = Quarantine(STAGE_NAME)
    tally = _Tally()
    rows = _Rows(ctx.scratch)
    sdpo_refused: Counter[str] = Counter()
    renders: Counter[str] = Counter()
    examples = 0
    for done in results:
        examples += 1
        renders.update(done.renders)
        for size in done.masks:
            tally.add(size)
        if done.row is not None:
            rows.add(done.kind, done.row)
            continue
        assert done.reason is not None
        if done.kind == "sdpo":  # one task's SFT row and its sites are told apart
            sdpo_refused[done.reason] += 1
            record = f"{done.record_id}#site{done.site}"
            quarantine.add(done.reason, record, done.session_id, f"sdpo: {done.detail}")
        else:
            quarantine.add(done.reason, done.record_id, done.session_id, done.detail)
    if examples != total:
        raise TracelakeError(f"collate: {examples} results for {total} examples (a table changed while read?)")
    rejected = dict(sorted(quarantine.counts.items()))
    stats = {
        "templates": {
            template.name: {
                "examples": total,
                "collated": rows.count,
                "rejected": sum(rejected.values()),
                "rejected_share": round(sum(rejected.values()) / total, 6) if total else 0.0,
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
        # Conversations whose prefixes minijinja rendered (its whole render equal to
        # transformers'), and those rendered by transformers alone.
        "renders": dict(sorted(renders.items())),
        "sdpo": _sdpo_stats(sdpo_yield, rows.counts["sdpo"], dict(sdpo_refused), config),
    }
    return StageResult(
        tables={
            "collated_sft": rows.stream("sft"),
            "collated_preference": rows.stream("preference"),
            "collated_sdpo": rows.stream("sdpo"),
            "quarantine": quarantine.table(),
        },
        records_in=total + sum(filtered.values()),
        records_out=rows.count,
        quarantined=rejected,
        filtered=filtered,
        stats=stats,
    )


def _sdpo_sites(ctx: StageContext[CollateConfig], sft_path: Path
                ) -> tuple[dict[tuple[str, str, str], list[Site]], dict[str, int], dict[str, int]]:
    """Per task, its structural tool-error sites with a recovery, in the conversations
    export-sft published: the same eligibility (accepted tasks, its caps, its secret and
    template-token firewall, no copied context) and the same train/valid split."""
    config = ctx.config
    calls = ctx.table("tool_calls", columns=["session_id", "tool_use_id", "is_error", "error_kind"])
    errors: dict[str, dict[str, str]] = {}
    for session, call, is_error, kind in zip(*(calls[c].to_pylist() for c in calls.column_names), strict=True):
        if is_error:
            errors.setdefault(session, {})[call] = kind or "tool_error"
    del calls
    sites: dict[tuple[str, str, str], list[Site]] = {}
    tally = {"conversations": 0, "sessions": 0, "error_sites": 0, "string_only_flags": 0, "empty_recoveries": 0}
    sessions: set[str] = set()
    for row in _stored_rows(sft_path, ["split", "session_id", "task_id", "messages"]):
        messages = parse_json(row["messages"])
        if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
            continue
        if config.strip_thinking:
            messages = strip_thinking_from(messages)
        found = find_sites(messages, errors.get(row["session_id"], {}), config.strip_thinking)
        tally["conversations"] += 1
        sessions.add(row["session_id"])
        tally["string_only_flags"] += found.string_only
        tally["error_sites"] += len(found.sites) + found.empty_recoveries
        tally["empty_recoveries"] += found.empty_recoveries
        if found.sites:
            sites[_task_key(row)] = sorted(found.sites, key=lambda site: site.failing)
    tally["sessions"] = len(sessions)
    return sites, tally, {"empty_recovery": tally["empty_recoveries"]} if tally["empty_recoveries"] else {}


def _sdpo_stats(tally: dict[str, int], aligned: int, refused: dict[str, int], config: CollateConfig
                ) -> dict[str, Any]:
    """``alignment_ratio``: aligned rows over the sites that got as far as the alignment
    check; sites refused before it (too long, a control token...) are listed apart."""
    misaligned = refused.get("sdpo_misaligned", 0)
    attempted = aligned + misaligned
    return {
        **tally,
        "rows": aligned,
        "misaligned": misaligned,
        "refused": dict(sorted(refused.items())),
        "alignment_ratio": round(aligned / attempted, 6) if attempted else None,
        "strip_thinking": config.strip_thinking,
        "thinking": "kept: the recovery's reasoning is what the hint should change"
                    if not config.strip_thinking else "stripped: recoveries with only reasoning are not sites",
    }


def materialize(ctx: ExportContext[CollateConfig]) -> None:
    """``collated/sft.parquet``: exactly the columns axolotl and TRL take pre-tokenised
    (input_ids, attention_mask, labels), plus task_id for lineage; the preference rows
    beside it."""
    out = ctx.export_dir / "collated"
    out.mkdir(parents=True, exist_ok=True)
    _copy(ctx.path("collated_sft"), out / "sft.parquet", list(EXPORT_COLUMNS))
    _copy(ctx.path("collated_preference"), out / "preference.parquet",
          [c for c in COLLATED_PREFERENCE.schema.names if c != "template"])
    _copy(ctx.path("collated_sdpo"), out / "sdpo.parquet", COLLATED_SDPO.schema.names)


_COPY_ROWS = 1024


def _copy(source: Path, target: Path, columns: list[str]) -> None:
    """``columns`` of a stored table into an export file, a row group per batch read:
    a big run's token lists are never all in memory."""
    with pq.ParquetFile(source) as parquet:
        schema = parquet.schema_arrow
        schema = pa.schema([schema.field(c) for c in columns])
        with pq.ParquetWriter(target, schema, compression="zstd") as writer:
            for batch in parquet.iter_batches(batch_size=_COPY_ROWS, columns=columns):
                writer.write_batch(batch)


_CHECK_ROWS = 512


def validate(ctx: ExportContext[CollateConfig]) -> list[str]:
    """Re-read what was written: the columns, one label per id, a label is -100 or the
    id it stands on, no example without a trained token."""
    with pq.ParquetFile(ctx.export_dir / "collated" / "sft.parquet") as parquet:
        return _check_export(parquet)


def _check_export(parquet: pq.ParquetFile) -> list[str]:
    errors: list[str] = []
    columns = parquet.schema_arrow.names
    if tuple(columns) != EXPORT_COLUMNS:
        errors.append(f"collated/sft.parquet has columns {columns}, not {list(EXPORT_COLUMNS)}")
        return errors
    index = 0
    for batch in parquet.iter_batches(batch_size=_CHECK_ROWS):  # a batch at a time: bounded memory
        for ids, mask, labels, task in zip(*(batch.column(c).to_pylist() for c in EXPORT_COLUMNS), strict=True):
            if not (len(ids) == len(mask) == len(labels)) or any(m != 1 for m in mask):
                errors.append(f"collated/sft.parquet row {index} ({task}): lengths or attention mask are wrong")
            elif any(label not in (IGNORE, token) for label, token in zip(labels, ids, strict=True)):
                errors.append(f"collated/sft.parquet row {index} ({task}): a label is neither -100 nor its id")
            elif all(label == IGNORE for label in labels):
                errors.append(f"collated/sft.parquet row {index} ({task}): nothing is trained")
            if len(errors) >= 20:
                return errors
            index += 1
    return errors


STAGE = Stage(
    name=STAGE_NAME,
    version=VERSION,
    engines=engines,
    config_model=CollateConfig,
    inputs=("sft", "preference", "tool_calls"),
    outputs=(COLLATED_SFT, COLLATED_PREFERENCE, COLLATED_SDPO),
    run=run,
    materialize=materialize,
    validate=validate,
    externals=(ExternalInput("model", "tokenizer", "model", default=default_tokenizer),),
)
