"""Streamed tables: same identity and bytes as the whole table, order checked on the way."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.core.errors import TracelakeError
from pipeline.core.store import (
    PARQUET_ROW_GROUP_BYTES,
    LakeLayout,
    TableOrderError,
    TableStream,
    put_stream,
    put_table,
    read_object,
)

SCHEMA = pa.schema([("k", pa.int64()), ("text", pa.large_string())])


def _table(n: int, width: int = 5) -> pa.Table:
    return pa.table(
        {"k": pa.array(range(n), pa.int64()), "text": pa.array([f"{i:0{width}d}" for i in range(n)], pa.large_string())},
        schema=SCHEMA,
    )


def _batches(table: pa.Table, cuts: list[int]) -> list[pa.Table]:
    bounds = sorted({0, table.num_rows, *(c % (table.num_rows + 1) for c in cuts)})
    return [table.slice(a, b - a) for a, b in zip(bounds, bounds[1:], strict=False)]


@given(st.integers(0, 3000), st.lists(st.integers(0, 3000), max_size=6))
@settings(max_examples=25, deadline=None)
def test_a_stream_is_the_same_object_as_the_whole_table(n: int, cuts: list[int]) -> None:
    import tempfile

    table = _table(n)
    with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b:
        whole = put_table(LakeLayout(Path(a)), "t", table)
        streamed = put_stream(
            LakeLayout(Path(b)), "t", SCHEMA, ("k",), TableStream(SCHEMA, _batches(table, cuts), n)
        )
        assert (streamed.xxh3_128, streamed.sha256, streamed.rows) == (whole.xxh3_128, whole.sha256, n)
        assert read_object(LakeLayout(Path(b)), streamed).cast(SCHEMA).equals(table)


def test_row_groups_end_at_a_byte_budget_whatever_the_batching(tmp_path: Path) -> None:
    """Wide rows: the byte budget, not the row count, cuts the groups, at the same rows
    however the stream is batched."""
    import pyarrow.parquet as pq

    width = 64 * 1024
    n = 3 * PARQUET_ROW_GROUP_BYTES // width
    table = _table(n, width)
    one = put_stream(LakeLayout(tmp_path / "a"), "t", SCHEMA, ("k",), TableStream(SCHEMA, [table], n))
    many = put_stream(
        LakeLayout(tmp_path / "b"), "t", SCHEMA, ("k",), TableStream(SCHEMA, _batches(table, [7, 100, 301]), n)
    )
    groups = pq.ParquetFile(tmp_path / "a" / one.path).num_row_groups
    assert groups >= 3
    assert one.sha256 == many.sha256
    digest = hashlib.sha256((tmp_path / "b" / many.path).read_bytes()).hexdigest()
    assert digest == many.sha256


def test_token_lists_weigh_in_the_byte_budget_whatever_the_batching(tmp_path: Path) -> None:
    """A collated table is all lists of ids: their values cut its groups too (the writer
    holds a group in memory), at the same rows however the stream is batched."""
    import pyarrow.parquet as pq

    schema = pa.schema([("k", pa.int64()), ("ids", pa.list_(pa.int32()))])
    tokens = 16 * 1024  # 64 KB of ids a row
    n = 3 * PARQUET_ROW_GROUP_BYTES // (4 * tokens)
    table = pa.table({"k": pa.array(range(n), pa.int64()),
                      "ids": pa.array([[i] * tokens for i in range(n)], pa.list_(pa.int32()))}, schema=schema)
    one = put_stream(LakeLayout(tmp_path / "a"), "t", schema, ("k",), TableStream(schema, [table], n))
    many = put_stream(
        LakeLayout(tmp_path / "b"), "t", schema, ("k",), TableStream(schema, _batches(table, [5, 90, 170]), n)
    )
    assert pq.ParquetFile(tmp_path / "a" / one.path).num_row_groups >= 3
    assert one.sha256 == many.sha256
    assert read_object(LakeLayout(tmp_path / "b"), many).cast(schema).equals(table)


def test_a_stream_out_of_order_fails_and_leaves_nothing(tmp_path: Path) -> None:
    table = _table(10)
    shuffled = [table.slice(5), table.slice(0, 5)]
    layout = LakeLayout(tmp_path)
    with pytest.raises(TableOrderError):
        put_stream(layout, "t", SCHEMA, ("k",), TableStream(SCHEMA, shuffled, 10))
    assert not any(p.is_file() for p in layout.objects.rglob("*"))


def test_a_stream_must_deliver_the_rows_it_announced(tmp_path: Path) -> None:
    layout = LakeLayout(tmp_path)
    with pytest.raises(TracelakeError, match="announced"):
        put_stream(layout, "t", SCHEMA, ("k",), TableStream(SCHEMA, [_table(4)], 5))
    assert not any(p.is_file() for p in layout.objects.rglob("*"))


def test_prefetched_keeps_order_and_reraises_the_producers_error() -> None:
    from pipeline.core.store import prefetched

    assert list(prefetched(iter(range(100)), depth=3)) == list(range(100))

    def failing() -> Iterator[int]:
        yield 1
        raise ValueError("broken batch")

    got = []
    with pytest.raises(ValueError, match="broken batch"):
        for item in prefetched(failing()):
            got.append(item)
    assert got == [1]


def test_prefetched_stops_its_producer_when_the_consumer_stops() -> None:
    """A writer that fails mid-stream must not leave a thread blocked on a full queue."""
    import threading

    from pipeline.core.store import prefetched

    produced: list[int] = []

    def endless() -> Iterator[int]:
        n = 0
        while True:
            produced.append(n)
            yield n
            n += 1

    before = threading.active_count()
    stream = prefetched(endless(), depth=2)
    assert [next(stream) for _ in range(5)] == [0, 1, 2, 3, 4]
    stream.close()
    assert threading.active_count() == before
    assert len(produced) <= 5 + 2 + 2  # what was taken, what the queue held, one in flight
