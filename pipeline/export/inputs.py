"""What every export stage reads: scores, and the conversations score prepared once."""

from __future__ import annotations

from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.core.imports import LazyModule
from pipeline.core.stage import ExportContext, StageContext
from pipeline.export.common import Quarantine, frame, read_frame, read_table
from pipeline.export.conversation import (
    drop_thinking,
    features,
    join_messages,
    strip_tools,
    talks_about,
)
from pipeline.export.dedupe import DedupeConfig, DedupeResult, collapse
from pipeline.export.firewall import BATCH_ROWS, TEMPLATE_TOKENS, StringScan, value_digests
from pipeline.export.prepare import dedupe_keys

if TYPE_CHECKING:
    import polars as pl
else:
    pl = LazyModule("polars")

EXPORT_INPUTS = ("scores", "tasks", "conversations", "tool_specs", "branches")


# Columns kept in Arrow (gathered by row index, never copied through Python or polars):
# the conversation JSON is most of the table's bytes, the signatures most of its values.
LARGE_COLUMNS = ("prompt", "completion", "minhash")


@dataclass
class ExportInputs:
    scores: pl.DataFrame  # sorted by session_id, prompt_number, task_id
    conversations: pl.DataFrame  # same order; the small columns asked for and ``_c``
    path: Path  # the conversations table, for its large JSON columns (see ``fetch``)
    large_columns: list[str]
    minhash: np.ndarray  # (rows, num_perm) signatures by ``_c`` (empty when not asked for)
    tool_schema: dict[tuple[str, str], str]  # (source_kind, name) -> schema JSON
    required: dict[tuple[str, str], list[str]]
    _tools: dict[tuple[str, tuple[str, ...]], str] = field(default_factory=dict)
    _large: Future[pa.Table] | None = None
    _position: dict[int, int] = field(default_factory=dict)

    def fetch(self, rows: Iterable[int]) -> None:
        """Start reading the JSON columns of conversation rows ``rows`` (``_c``) on a worker
        thread (Parquet decoding releases the GIL) while the stage works on the rest. Only
        those rows are kept, batch by batch: less fresh memory to fault in."""
        wanted = np.unique(np.fromiter(rows, dtype=np.int64))
        pool = ThreadPoolExecutor(max_workers=1)
        if len(wanted) * 2 > self.conversations.height:  # most rows: one plain read is cheaper
            self._position = {c: c for c in range(self.conversations.height)}
            self._large = pool.submit(read_table, self.path, self.large_columns)
        else:
            self._position = {c: i for i, c in enumerate(wanted.tolist())}
            self._large = pool.submit(gather_rows, self.path, self.large_columns, wanted)
        pool.shutdown(wait=False)

    @property
    def large(self) -> pa.Table:
        """The fetched rows' JSON columns; row ``index(c)`` is conversation row ``c``."""
        if self._large is None:
            self.fetch(range(self.conversations.height))
        assert self._large is not None
        return self._large.result()

    def index(self, c: int) -> int:
        return self._position[c]

    @property
    def n_fetched(self) -> int:
        """Rows of ``large`` (appended rows go after them)."""
        return len(self._position)

    def tools_json(self, source_kind: str, names: list[str]) -> str:
        """JSON list of the schemas of ``names`` (sorted, distinct), built from stored JSON."""
        key = (source_kind, tuple(sorted(set(names))))
        found = self._tools.get(key)
        if found is None:
            parts = [self.tool_schema[(source_kind, n)] for n in key[1] if (source_kind, n) in self.tool_schema]
            found = self._tools[key] = "[" + ",".join(parts) + "]"
        return found

    def halves(self, c: int) -> tuple[str, str]:
        """(prompt, completion) JSON of conversation row ``c``."""
        i = self.index(c)
        return self.large["prompt"][i].as_py(), self.large["completion"][i].as_py()


def gather_rows(path: Path, columns: list[str], rows: np.ndarray) -> pa.Table:
    """Rows ``rows`` (sorted) of a Parquet file's ``columns``, streamed in batches and
    combined into one chunk per column (gathers from many chunks are slow)."""
    parts = []
    base = done = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=BATCH_ROWS, columns=columns, use_threads=False):
        upto = int(np.searchsorted(rows, base + batch.num_rows))
        if upto > done:
            parts.append(batch.take(pa.array(rows[done:upto] - base)))
        done, base = upto, base + batch.num_rows
    if not parts:
        schema = pq.ParquetFile(path).schema_arrow
        return pa.schema([schema.field(c) for c in columns]).empty_table()
    return pa.Table.from_batches(parts).combine_chunks()


def signature_matrix(column: pa.ChunkedArray) -> np.ndarray:
    """A list<int> column of equal-length signatures as one (rows, width) uint32 matrix."""
    array = column.combine_chunks()
    if len(array) == 0:
        return np.zeros((0, 0), dtype=np.uint32)
    values: np.ndarray = array.flatten().to_numpy(zero_copy_only=False)
    return values.astype(np.uint32).reshape(len(array), -1)


def load_inputs(ctx: StageContext[Any], columns: list[str]) -> ExportInputs:
    """Scores and the small conversation columns asked for; the large JSON ones are read
    later, for the rows the stage needs (``ExportInputs.fetch``)."""
    keys = ["task_id", "session_id", "prompt_number"]
    wanted = keys + [c for c in columns if c not in keys]
    path = ctx.path("conversations")
    large = [c for c in wanted if c in LARGE_COLUMNS and c != "minhash"]
    conversations = read_frame(path, [c for c in wanted if c not in large and c != "minhash"]).with_row_index("_c")
    minhash = (signature_matrix(read_table(path, ["minhash"])["minhash"]) if "minhash" in wanted
               else np.zeros((0, 0), np.uint32))
    specs = frame(ctx, "tool_specs")
    tool_schema, required = {}, {}
    for name, kind, req, schema in specs.select("name", "source_kind", "required", "tool_schema").iter_rows():
        tool_schema[(kind, name)] = schema
        required[(kind, name)] = list(req)
    scores = frame(ctx, "scores", columns=["task_id", "session_id", "prompt_number", "category"])
    return ExportInputs(
        scores=scores.sort("session_id", "prompt_number", "task_id"),
        conversations=conversations.sort("session_id", "prompt_number", "task_id"),
        path=path,
        large_columns=large,
        minhash=minhash,
        tool_schema=tool_schema,
        required=required,
    )


def select_candidates(
    inputs: ExportInputs,
    allowed: set[str] | None,
    quarantine: Quarantine,
    unsafe: tuple[str, frozenset[str]] | None = None,
) -> pl.DataFrame:
    """Scored tasks in the allowed categories, joined to their conversations in (session,
    prompt) order. Disallowed categories and scored tasks without a conversation (no
    provenance) are set aside, in score order. ``unsafe`` names the categories no opt-in
    ever admits and the reason they get (e.g. rejected work: ``unsafe_sft_category``);
    the rest of the disallowed ones are ``category_disallowed`` (an opt-in would admit them)."""
    scored = inputs.scores
    if allowed is not None:
        unsafe_reason, unsafe_categories = unsafe if unsafe is not None else ("", frozenset())
        for task_id, session_id, category in scored.filter(~pl.col("category").is_in(sorted(allowed))).select(
            "task_id", "session_id", "category"
        ).iter_rows():
            reason = unsafe_reason if category in unsafe_categories else "category_disallowed"
            quarantine.add(reason, task_id, session_id, category)
        scored = scored.filter(pl.col("category").is_in(sorted(allowed)))
    known = scored.join(inputs.conversations.select("task_id"), on="task_id", how="semi")
    for task_id in scored.join(known, on="task_id", how="anti")["task_id"].to_list():
        quarantine.add("missing_provenance", task_id, None, "scored task not in tasks")
    joined = known.select("task_id", "category").join(inputs.conversations, on="task_id", how="inner")
    return joined.sort("session_id", "prompt_number", "task_id")


# --- rows an export changes -------------------------------------------------------------


def transform_rows(
    rows: list[dict[str, Any]],
    inputs: ExportInputs,
    keep_thinking: bool,
    skip: set[str],
    tokens: tuple[str, ...],
    rebuild_all: bool,
) -> tuple[list[dict[str, Any]], int]:
    """Apply the export's transforms to the rows that need them and recompute their
    features and scan. Returns (rows, skip-listed calls removed); a rebuilt row gets
    ``rebuilt = True``, its ``messages`` and its dedupe ``text``; the others keep their
    JSON in ``inputs.large`` (row ``_c``).

    A transform only removes strings, so a rebuilt row whose conversation score scanned
    clean (with the default tokens) is clean: only the others are scanned again.
    """
    removed = 0
    texts, rescan = StringScan(tokens), StringScan(tokens)
    rebuilt: list[dict[str, Any]] = []
    for row in rows:
        touches_skip = bool(skip) and any(n in skip for n in row["tool_names"])
        if not (rebuild_all or touches_skip or (not keep_thinking and row["has_thinking"])):
            row["rebuilt"] = False
            continue
        messages = orjson.loads(join_messages(*inputs.halves(row["_c"])))
        if not keep_thinking:
            drop_thinking(messages)
        row["skip_dependent"] = False
        if touches_skip:
            messages, n, tools = strip_tools(messages, skip)
            removed += n
            row["skip_dependent"] = talks_about(messages, tools)
        known_clean = tokens == TEMPLATE_TOKENS and not row["secret_kinds"] and row["template_token"] is None
        row.update(features(messages, row["source_kind"], inputs.required))
        row["rebuilt"] = True
        row["messages"] = messages
        row["n_messages"] = len(messages)
        row["text_group"] = texts.add_messages(messages)
        if not known_clean:
            row["scan_group"] = rescan.add_messages(messages)
        rebuilt.append(row)
    results = rescan.results()
    for row in rebuilt:
        if "scan_group" in row:
            row["secret_kinds"], row["template_token"] = results[row.pop("scan_group")]
        row["text"] = texts.text(row.pop("text_group"))
    return rows, removed


def dedupe_rows(survivors: list[dict[str, Any]], inputs: ExportInputs, config: DedupeConfig) -> DedupeResult:
    """Collapse duplicates among ``survivors`` (keep-first), re-signing rebuilt rows."""
    if not survivors:
        return DedupeResult()
    matrix = inputs.minhash[[r["_c"] for r in survivors]]
    fresh = [i for i, r in enumerate(survivors) if r["rebuilt"]]
    if fresh:
        digests, sigs = dedupe_keys([survivors[i]["text"] for i in fresh], config.signature_params())
        if sigs.shape[1] != matrix.shape[1]:
            matrix = np.zeros((len(survivors), sigs.shape[1]), dtype=np.uint32)
        for k, i in enumerate(fresh):
            survivors[i]["text_digest"] = digests[k]
        matrix[fresh] = sigs
    return collapse([r["task_id"] for r in survivors], [r["text_digest"] for r in survivors], matrix,
                    config.threshold)


# --- validation -------------------------------------------------------------------------


PROMPT, COMPLETION, MESSAGES = 0, 1, 2  # positions in conversations.json_digests


def run_conversations(ctx: ExportContext[Any]) -> dict[str, list[str]] | None:
    """task_id -> JSON digests of the conversations score wrote and scanned clean, read
    from the conversations table the stage was given; None for a stage that reads none
    (then every field is scanned in full)."""
    ref = ctx.inputs.get("conversations")
    if ref is None:
        return None
    table = read_table(ctx.layout.root / ref.path, columns=["task_id", "json_digests", "secret_kinds", "template_token"])
    out = {}
    for task_id, digests, kinds, token in zip(*(table[c].to_pylist() for c in table.column_names), strict=True):
        if not kinds and token is None:
            out[task_id] = digests
    return out


def known_clean_mask(table: pa.Table, conv: dict[str, list[str]] | None, field: str, task_col: str,
                     which: int) -> list[bool]:
    """Per row: ``field`` is byte-identical (by digest) to the ``which`` JSON of the
    conversation of the row's ``task_col`` task, which score scanned clean."""
    if conv is None:
        return [False] * table.num_rows
    return known_clean(table[task_col].to_pylist(), value_digests(table[field]), conv, which)


def known_clean(task_ids: list[str], digests: list[str | None], conv: dict[str, list[str]] | None,
                which: int) -> list[bool]:
    """known_clean_mask from the values' digests (``value_digests``)."""
    if conv is None:
        return [False] * len(task_ids)
    out = []
    for task_id, digest in zip(task_ids, digests, strict=True):
        stored = conv.get(task_id)
        out.append(stored is not None and digest is not None and digest == stored[which])
    return out
