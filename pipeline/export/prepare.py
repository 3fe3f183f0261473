"""What score prepares once so the three exports do not each redo it.

Every task's conversation (JSON), its row features, its firewall scan (secret kinds and
template token over its strings) and its dedupe keys (exact digest, MinHash signature)
go into the ``conversations`` table; the tool schemas derived from every observed call go
into ``tool_specs``. Exports read both and recompute only for rows they transform.
"""

from __future__ import annotations

import functools
from concurrent.futures import Executor
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import xxhash

from pipeline.core.errors import TracelakeError
from pipeline.core.imports import LazyModule
from pipeline.core.workpool import Failed, WorkPool
from pipeline.export.common import dumps
from pipeline.export.conversation import CallFacts
from pipeline.export.dedupe import DEFAULT_SIGNATURE
from pipeline.export.dedupe import dedupe_keys as keys_of
from pipeline.export.firewall import (
    TEMPLATE_TOKENS,
    ArrowStrings,
    binary_rows,
    call_strings,
    first_tokens,
    secret_kinds_many,
    value_digests,
)
from pipeline.export.frames import Part, build_part, parts
from schemas.datasets import SCORING_TABLES
from schemas.tables import from_columns

if TYPE_CHECKING:
    import polars as pl
else:
    pl = LazyModule("polars")


def required_of(schemas: dict[tuple[str, str], dict[str, Any]]) -> dict[tuple[str, str], list[str]]:
    return {key: value["required"] for key, value in schemas.items()}


def tool_specs_table(schemas: dict[tuple[str, str], dict[str, Any]]) -> pa.Table:
    keys = sorted(schemas)
    return from_columns(SCORING_TABLES["tool_specs"], {
        "name": [n for _, n in keys],
        "source_kind": [k for k, _ in keys],
        "n_calls": [schemas[k]["n_calls"] for k in keys],
        "required": [schemas[k]["required"] for k in keys],
        "tool_schema": [dumps(schemas[k]["schema"]) for k in keys],
    })


def dedupe_keys(texts: list[str], params: tuple[int, int, int] = DEFAULT_SIGNATURE) -> tuple[list[str], np.ndarray]:
    num_perm, seed, max_chars = params
    return keys_of(texts, num_perm, seed, max_chars)


def call_columns(calls: pl.DataFrame, parsed_args: list[dict[str, Any]], facts: CallFacts) -> pl.DataFrame:
    """``calls`` with the per-call columns frames.build needs: one Python pass per call, and
    the work on arguments once per distinct (name, parsed arguments) (see tools.parse_all).

    A call's JSON is ``dumps({"function": {"arguments", "name"}, "id", "type"})`` spelled
    out around its arguments' JSON, which is what makes the arguments' part shareable.
    """
    memo: dict[tuple[str, int], tuple[str, list[str], str, str]] = {}
    call_json, call_text, strings, step_json = [], [], [], []
    for args, name, call_id, step in zip(parsed_args, facts.name, calls["tool_use_id"].to_list(), facts.steps,
                                         strict=True):
        key = (name, id(args))
        found = memo.get(key)
        if found is None:
            values = call_strings(name, args)
            head = '{"function":{"arguments":' + dumps(args) + ',"name":' + dumps(name) + '},"id":'
            found = memo[key] = (head, values, "\n".join([x for x in values if x]), dumps(step))
        call_json.append(found[0] + dumps(call_id) + ',"type":"function"}')
        strings.append(found[1])
        call_text.append(found[2])
        step_json.append(found[3])
    columns = pa.table({  # Arrow builds list columns in C; polars' Series() would go value by value
        "call_json": pa.array(call_json, pa.large_string()),
        "call_text": pa.array(call_text, pa.large_string()),
        "call_strings": pa.array(strings, pa.large_list(pa.large_string())),
        "chars": pa.array(facts.chars, pa.int64()),
        "repeated": pa.array(facts.repeated, pa.int64()),
        "category": pa.array(facts.category, pa.large_string()),
        "missing": pa.array(facts.missing, pa.bool_()),
        "step_json": pa.array(step_json, pa.large_string()),
        "touched": pa.array(facts.touched, pa.large_list(pa.large_string())),
    })
    added = pl.from_arrow(columns)
    assert isinstance(added, pl.DataFrame)
    return pl.concat([calls, added], how="horizontal")


def conversations_table(
    tasks: pl.DataFrame,
    messages: pl.DataFrame,
    calls: pl.DataFrame,
    parsed_args: list[dict[str, Any]],
    branches: pl.DataFrame | None,
    facts: CallFacts,
    pool: Executor | None = None,
) -> pa.Table:
    """The ``conversations`` table; ``calls``, ``parsed_args`` and ``facts`` are aligned.

    With a ``pool``, the sessions are split in two consecutive halves, each built, signed,
    scanned and hashed on its own thread: most of that work (polars, numpy, RE2, xxhash)
    releases the GIL, so the halves share the two cores.
    """
    pieces = parts(tasks, messages, call_columns(calls, parsed_args, facts), 2 if pool is not None else 1)
    later = [pool.submit(_conversations, branches, piece) for piece in pieces[1:]] if pool is not None else []
    tables = [_conversations(branches, pieces[0]), *(f.result() for f in later)]
    return pa.concat_tables(tables)


# Tasks per unit on an executor's pool: a few hundred sessions' worth, so that a unit's
# overhead (its part pickled to a worker, the secret screens loaded once per worker)
# vanishes while a big lake still spreads across the cluster.
POOL_TASKS = 1024


def conversations_on_pool(
    pool: WorkPool,
    tasks: pl.DataFrame,
    messages: pl.DataFrame,
    calls: pl.DataFrame,
    parsed_args: list[dict[str, Any]],
    branches: pl.DataFrame | None,
    facts: CallFacts,
) -> pa.Table:
    """``conversations_table`` with a part of whole sessions per unit on ``pool``: parts
    are consecutive in output order and each builds on its own, so the table is the same
    for any number of parts and any completion order. A part that fails on every
    attempt fails the stage (there is no file to quarantine in its place)."""
    pieces = parts(tasks, messages, call_columns(calls, parsed_args, facts), max(1, -(-tasks.height // POOL_TASKS)))
    unit = functools.partial(_conversations, branches)
    tables = []
    for outcome in pool.map(unit, pieces, "score partitions"):
        if isinstance(outcome, Failed):
            raise TracelakeError(f"score: a partition of sessions failed on every attempt: {outcome.error}")
        tables.append(outcome)
    return pa.concat_tables(tables)


def _conversations(branches: pl.DataFrame | None, piece: Part) -> pa.Table:
    built = build_part(*piece, branches)
    spec = SCORING_TABLES["conversations"]
    frame = built.tasks.drop("_t")
    table = frame.drop("text").to_arrow()
    text_digest, sigs = keys_of(frame["text"].to_arrow(), *DEFAULT_SIGNATURE)
    start = built.tasks["_t"][0] if frame.height else 0  # parts are consecutive in _t
    kinds, tokens = scan_units(frame.height, built.units.with_columns(pl.col("_t") - start))
    prompt, completion = table["prompt"], table["completion"]
    digests = [list(d) for d in zip(value_digests(prompt), value_digests(completion),
                                    messages_digests(prompt, completion), strict=True)]
    columns = {
        **{name: table[name] for name in table.column_names},
        "secret_kinds": pa.array(kinds, pa.list_(pa.string())),
        "template_token": pa.array(tokens, pa.string()),
        "json_digests": pa.array(digests, pa.list_(pa.string())),
        "text_digest": pa.array(text_digest, pa.string()),
        "minhash": minhash_array(sigs),
    }
    return pa.table([columns[f.name] for f in spec.schema], names=spec.schema.names).cast(spec.schema)


def scan_units(n_tasks: int, units: pl.DataFrame) -> tuple[list[list[str]], list[str | None]]:
    """Per task (by position ``_t``): (sorted secret kinds, first template token) over its
    strings, each distinct string screened once (the StringScan rules)."""
    unique = ArrowStrings(units["s"].unique().to_arrow())  # each result is per string: order is free
    kinds_of, tokens_of = secret_kinds_many(unique), first_tokens(unique, TEMPLATE_TOKENS)
    flagged = {unique[i]: (kinds_of[i], tokens_of[i]) for i in range(len(unique)) if kinds_of[i] or tokens_of[i]}
    kinds: list[list[str]] = [[] for _ in range(n_tasks)]
    tokens: list[str | None] = [None] * n_tasks
    if not flagged:
        return kinds, tokens
    rank = {t: i for i, t in enumerate(TEMPLATE_TOKENS)}
    hits = units.filter(pl.col("s").is_in(pl.Series(list(flagged), dtype=pl.String).implode()))
    found: dict[int, set[str]] = {}
    for i, value in hits.select("_t", "s").iter_rows():
        k, token = flagged[value]
        found.setdefault(i, set()).update(k)
        current = tokens[i]
        if token is not None and (current is None or rank[token] < rank[current]):
            tokens[i] = token
    for i, found_kinds in found.items():
        kinds[i] = sorted(found_kinds)
    return kinds, tokens


def messages_digests(prompt: pa.ChunkedArray, completion: pa.ChunkedArray) -> list[str]:
    """json_digest(join_messages(p, c)) per row, hashed in pieces from the Arrow buffers
    (nothing is joined or decoded)."""
    out = []
    for p, c in zip(binary_rows(prompt), binary_rows(completion), strict=True):
        assert p is not None and c is not None  # both halves are always written
        if len(c) == 2 and c.tobytes() == b"[]":  # join_messages' shortcuts
            out.append(xxhash.xxh3_128_hexdigest(p))
            continue
        if len(p) == 2 and p.tobytes() == b"[]":
            out.append(xxhash.xxh3_128_hexdigest(c))
            continue
        h = xxhash.xxh3_128()
        h.update(p[:-1])
        h.update(b",")
        h.update(c[1:])
        out.append(h.hexdigest())
    return out


def minhash_array(sigs: np.ndarray) -> pa.Array:
    n, width = sigs.shape
    offsets = pa.array(np.arange(0, (n + 1) * width, width, dtype=np.int64))
    return pa.LargeListArray.from_arrays(offsets, pa.array(sigs.astype(np.int64).ravel()))
