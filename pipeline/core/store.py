"""The lake's one home for file layout and atomic, deterministic Parquet I/O.

Layout under ``root``::

    data/objects/<aa>/<xxh3>-<sha>.parquet  tables, by logical digest and file bytes
    data/artifacts/<aa>/<tree digest>/ artifacts (folders of files), by tree digest
    data/cache/                        per-source-file shards and the stat cache
    data/lake.duckdb                   views over the latest run, for ad-hoc users
    data/.lock                         held by the one run writing to this root
    data/failed-exports/<run_id>/      exports that failed their firewall (never published)
    receipts/<run_id>/                 signed stage receipts, the signed run statement,
                                       summary.{json,md} rendered from it
    receipts/cache/<cache_key>.json    run-cache index: key -> receipt envelope
    receipts/trusted-keys.pem          public keys whose signatures this root accepts
    exports/<run_id>/                  datasets for external clients
    exports/.by-key/<cache_key>/       each export built once, hard-linked into runs

An object's bytes are a function of its rows alone (fixed writer settings, no run- or
stage-specific metadata), so one logical digest always names one file content.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from queue import Empty, Full, Queue
from typing import Any, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.core.errors import TracelakeError
from pipeline.core.hashing import FileDigests, TableHasher, blake3_file, file_digests
from schemas.receipt import InputRef, ObjectRef

# Fixed writer settings: changing any of them changes file bytes (not logical digests).
PARQUET_COMPRESSION = "zstd"
PARQUET_COMPRESSION_LEVEL = 3
PARQUET_ROW_GROUP_SIZE = 64 * 1024
# A row group also ends once its strings (and fixed-width list values: token ids) pass
# this many bytes: a group is what a writer holds in memory (three times over, while
# encoding), and 64K rows of transcript text can be hundreds of MB. Both limits are
# properties of the rows, never of batching.
PARQUET_ROW_GROUP_BYTES = 16 << 20


@dataclass(frozen=True)
class LakeLayout:
    root: Path

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def objects(self) -> Path:
        return self.data / "objects"

    @property
    def cache(self) -> Path:
        return self.data / "cache"

    @property
    def receipts(self) -> Path:
        return self.root / "receipts"

    @property
    def receipt_cache(self) -> Path:
        return self.receipts / "cache"

    @property
    def exports(self) -> Path:
        return self.root / "exports"

    @property
    def duckdb_file(self) -> Path:
        return self.data / "lake.duckdb"

    @property
    def history_cache(self) -> Path:
        """Every kept run's verified receipt rows (``pipeline.core.history``)."""
        return self.cache / "history.json"

    @property
    def lock_file(self) -> Path:
        return self.data / ".lock"

    @property
    def trusted_keys(self) -> Path:
        return self.receipts / "trusted-keys.pem"

    @property
    def failed_exports(self) -> Path:
        return self.data / "failed-exports"

    def run_dir(self, run_id: str) -> Path:
        return self.receipts / run_id

    def export_dir(self, run_id: str) -> Path:
        return self.exports / run_id

    def keyed_exports(self, cache_key: str) -> Path:
        return self.exports / ".by-key" / cache_key

    def object_path(self, digest: str, sha256: str) -> Path:
        """Named by the table's logical digest and the file's own sha256 (its first 16
        hex digits): a name is never reused for other bytes, so a file that does not
        hash to its name is damage, never "another valid copy"."""
        return self.objects / digest[:2] / f"{digest}-{sha256[:16]}.parquet"

    @property
    def artifacts(self) -> Path:
        return self.data / "artifacts"

    def artifact_path(self, digest: str) -> Path:
        """An artifact folder, named by its tree digest (``pipeline.core.trees``)."""
        return self.artifacts / digest[:2] / digest

    def relative(self, path: Path) -> str:
        return path.resolve().relative_to(self.root.resolve()).as_posix()


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


@contextlib.contextmanager
def atomic_path(target: Path, mode: int | None = None, durable: bool = True) -> Iterator[Path]:
    """Yield a temp path beside ``target``; rename it into place only on success.

    A crash (even ``kill -9``) leaves at most a ``.tmp-*`` file, never a partial target.
    ``durable=False`` skips the fsync, for caches whose readers treat a damaged entry as
    missing (thousands of fsyncs would dominate a run).
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".tmp-{target.name}-", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        _publish(tmp, target, mode, durable)
    finally:
        if tmp.exists():
            tmp.unlink()


def _publish(tmp: Path, target: Path, mode: int | None = None, durable: bool = True) -> None:
    if durable:
        with tmp.open("rb") as handle:
            os.fsync(handle.fileno())
    # mkstemp creates 0600; published files follow the umask unless a mode is asked for.
    tmp.chmod(mode if mode is not None else 0o666 & ~_UMASK)
    os.replace(tmp, target)


def atomic_write_bytes(target: Path, data: bytes, mode: int | None = None) -> None:
    with atomic_path(target, mode) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(target: Path, text: str) -> None:
    atomic_write_bytes(target, text.encode("utf-8"))


def canonicalize(table: pa.Table, schema: pa.Schema, sort_keys: Sequence[str]) -> pa.Table:
    """Fixed schema, no dictionaries, stable order on ``sort_keys``.

    Chunking is left alone: the digest and the Parquet writer do not depend on it.
    """
    table = table.select(schema.names).cast(schema)
    if sort_keys and table.num_rows > 1:
        # Sort the (small) key columns only; skip the costly take of wide text columns
        # when the stage already produced canonical order.
        keys = table.select(list(sort_keys))
        if not _in_order(keys, sort_keys):
            table = table.take(pc.sort_indices(keys, sort_keys=[(key, "ascending") for key in sort_keys]))
    return table


@dataclass
class TableStream:
    """A table that arrives batch by batch, already in canonical order, so that a stage
    never has to hold it whole: the runner hashes and writes it as it streams past and
    checks the order on the way (``TableOrderError`` if a stage got it wrong)."""

    schema: pa.Schema
    batches: Iterable[pa.Table | pa.RecordBatch]
    rows: int


def materialize(table: pa.Table | TableStream) -> pa.Table:
    """A stream gathered whole (for checks that compare tables, not for the run)."""
    if isinstance(table, pa.Table):
        return table
    parts = [pa.Table.from_batches([b]) if isinstance(b, pa.RecordBatch) else b for b in table.batches]
    if not parts:
        return table.schema.empty_table()
    return pa.concat_tables([p.select(table.schema.names).cast(table.schema) for p in parts])


class TableOrderError(TracelakeError):
    pass


class _GroupWriter:
    """Parquet with fixed settings, in row groups cut where the rows alone decide (at
    ``PARQUET_ROW_GROUP_SIZE`` rows or ``PARQUET_ROW_GROUP_BYTES`` of strings and of
    fixed-width list values), each one
    contiguous chunk: page and row-group boundaries then do not depend on how the table
    was chunked or streamed, so neither do the file bytes. No key-value metadata at
    all: no ``ARROW:schema`` (its bytes vary with the writer's version), and nothing of
    the run or stage that wrote it (one digest must always name one content)."""

    def __init__(self, path: Path, schema: pa.Schema, sort_keys: Sequence[str] = ()) -> None:
        self.schema = schema.remove_metadata()
        self.sort_keys = list(sort_keys)
        self.hasher = TableHasher(self.schema)
        self.pending: list[pa.Table] = []
        self.pending_bytes: list[np.ndarray] = []
        self.pending_rows = 0
        self.last_keys: pa.Table | None = None
        self.strings = [
            f.name for f in self.schema
            if pa.types.is_string(f.type) or pa.types.is_large_string(f.type)
            or pa.types.is_binary(f.type) or pa.types.is_large_binary(f.type)
        ]
        # Lists of fixed-width values (token ids, masks) weigh by their values too: a
        # collated table's rows are all list, and would otherwise make one group.
        self.lists = {
            f.name: f.type.value_type.bit_width // 8 for f in self.schema
            if (pa.types.is_list(f.type) or pa.types.is_large_list(f.type))
            and pa.types.is_primitive(f.type.value_type) and f.type.value_type.bit_width >= 8
        }
        self.writer = pq.ParquetWriter(
            path,
            self.schema,
            compression=PARQUET_COMPRESSION,
            compression_level=PARQUET_COMPRESSION_LEVEL,
            use_dictionary=True,
            write_statistics=True,
            store_schema=False,
        )

    def add(self, data: pa.Table | pa.RecordBatch) -> None:
        prepared = self.prepare(data)
        if prepared is not None:
            self.push(prepared)

    def prepare(self, data: pa.Table | pa.RecordBatch) -> pa.Table | None:
        """Conform a batch to the schema and hash it (the digest does not depend on
        where batches or row groups end); None for an empty batch. Safe to run in
        another thread than ``push``, in the same order."""
        if isinstance(data, pa.RecordBatch):
            data = pa.Table.from_batches([data])
        if data.num_rows == 0:
            return None
        data = data.select(self.schema.names).cast(self.schema)
        self.hasher.update(data)
        return data

    def push(self, data: pa.Table) -> None:
        """Buffer a prepared batch and write every row group it completes."""
        self.pending.append(data)
        self.pending_bytes.append(self._row_bytes(data))
        self.pending_rows += data.num_rows
        while (rows := self._next_group()) is not None:
            self._flush(rows)

    def _row_bytes(self, data: pa.Table) -> np.ndarray:
        sizes = np.zeros(data.num_rows, dtype=np.int64)
        for name in self.strings:
            lengths = pc.fill_null(pc.binary_length(data.column(name)), 0)
            sizes += lengths.to_numpy().astype(np.int64)
        for name, width in self.lists.items():
            lengths = pc.fill_null(pc.list_value_length(data.column(name)), 0)
            sizes += lengths.to_numpy().astype(np.int64) * width
        return sizes

    def _next_group(self) -> int | None:
        """Rows in the next complete group, or None while the pending rows may still
        grow into it."""
        if not self.pending_rows:
            return None
        window = np.concatenate(self.pending_bytes)[:PARQUET_ROW_GROUP_SIZE]
        over = np.flatnonzero(np.cumsum(window) >= PARQUET_ROW_GROUP_BYTES)
        if over.size:
            return int(over[0]) + 1
        return PARQUET_ROW_GROUP_SIZE if self.pending_rows >= PARQUET_ROW_GROUP_SIZE else None

    def _flush(self, rows: int) -> None:
        table = pa.concat_tables(self.pending)
        sizes = np.concatenate(self.pending_bytes)
        group, rest = table.slice(0, rows).combine_chunks(), table.slice(rows)
        self.pending = [rest] if rest.num_rows else []
        self.pending_bytes = [sizes[rows:]] if rest.num_rows else []
        self.pending_rows = rest.num_rows
        if self.sort_keys:
            self._check_order(group)
        self.writer.write_table(group, row_group_size=PARQUET_ROW_GROUP_SIZE)

    def _check_order(self, group: pa.Table) -> None:
        keys = group.select(self.sort_keys)
        if self.last_keys is not None:
            keys = pa.concat_tables([self.last_keys, keys])
        if keys.num_rows > 1 and not _in_order(keys, self.sort_keys):
            raise TableOrderError(f"rows are not in canonical order on {self.sort_keys}")
        self.last_keys = keys.slice(keys.num_rows - 1)

    def close(self) -> tuple[str, int]:
        """Flush the tail, seal the file, return (logical digest, rows)."""
        if self.pending_rows or self.hasher.rows == 0:
            if self.pending_rows:
                self._flush(self.pending_rows)
            else:
                self.writer.write_table(self.schema.empty_table(), row_group_size=PARQUET_ROW_GROUP_SIZE)
        self.writer.close()
        return self.hasher.hexdigest(), self.hasher.rows


def _in_order(keys: pa.Table, sort_keys: Sequence[str]) -> bool:
    order = pc.sort_indices(keys, sort_keys=[(key, "ascending") for key in sort_keys])
    return bool(np.array_equal(order.to_numpy(zero_copy_only=False), np.arange(keys.num_rows)))


def write_parquet(table: pa.Table, path: Path) -> None:
    with atomic_path(path) as tmp:
        writer = _GroupWriter(tmp, table.schema)
        writer.add(table)
        writer.close()


def put_table(layout: LakeLayout, name: str, table: pa.Table) -> ObjectRef:
    """Store ``table`` (already canonical) as a content-addressed object."""
    return put_stream(layout, name, table.schema, (), TableStream(table.schema, [table], table.num_rows))


_T = TypeVar("_T")
_DONE = object()


def prefetched(items: Iterable[_T], depth: int = 2) -> Iterator[_T]:
    """``items``, produced up to ``depth`` ahead in a thread of their own.

    A stream's batches come out of queries and gathers (and are conformed and hashed)
    while the writer encodes the previous ones; both sides mostly release the GIL, so
    they overlap instead of taking turns (the biggest collect table is otherwise one
    thread's work). An error
    in the producer is raised here; a consumer that stops early stops the producer.
    """
    queue: Queue[Any] = Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        queue.put((item, None), timeout=0.1)
                        break
                    except Full:
                        continue
                if stop.is_set():
                    return
            queue.put((_DONE, None))
        except BaseException as error:  # handed to the consumer, which re-raises it
            queue.put((_DONE, error))

    producer = threading.Thread(target=produce, name="tracelake-prefetch", daemon=True)
    producer.start()
    try:
        while True:
            item, error = queue.get()
            if item is _DONE:
                if error is not None:
                    raise error
                return
            yield item
    finally:
        stop.set()
        while producer.is_alive():  # unblock a producer waiting on a full queue
            with contextlib.suppress(Empty):
                queue.get(timeout=0.1)
        producer.join()


def put_stream(
    layout: LakeLayout,
    name: str,
    schema: pa.Schema,
    sort_keys: Sequence[str],
    stream: TableStream,
) -> ObjectRef:
    """Store a streamed table: written to a temporary file while it is hashed, then
    published under its digest (see ``_publish_object``)."""
    layout.objects.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".tmp-stream-{name}-", dir=layout.objects)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        writer = _GroupWriter(tmp, schema, sort_keys)
        # Batches are produced, conformed and hashed in one thread while the previous
        # ones are cut into row groups and encoded in this one.
        prepared = (table for batch in stream.batches if (table := writer.prepare(batch)) is not None)
        for table in prefetched(prepared):
            writer.push(table)
        digest, rows = writer.close()
        if rows != stream.rows:
            raise TracelakeError(f"table {name} streamed {rows} rows, announced {stream.rows}")
        path, digests = _publish_object(layout, tmp, digest)
    finally:
        if tmp.exists():
            tmp.unlink()
    return ObjectRef(
        name=name, xxh3_128=digest, sha256=digests.sha256, blake3=digests.blake3, rows=rows,
        path=layout.relative(path),
    )


def _publish_object(layout: LakeLayout, tmp: Path, digest: str) -> tuple[Path, FileDigests]:
    """Move ``tmp`` into place under its name (logical digest + sha256 of its bytes),
    unless a file with exactly these bytes is already there.

    Files are a function of their rows, so the same table written again normally finds
    its file in place. Any other content under that name is damage (a flipped byte, a
    forged footer or statistics that readers would trust) and our copy replaces it: a
    run repairs the lake, never records the digests of bytes it did not write.
    """
    ours = file_digests(tmp)
    path = layout.object_path(digest, ours.sha256)
    if path.is_file() and not path.is_symlink() and blake3_file(path) == ours.blake3:
        return path, ours
    path.parent.mkdir(parents=True, exist_ok=True)
    _publish(tmp, path)
    return path, ours


def read_object(layout: LakeLayout, ref: ObjectRef) -> pa.Table:
    return pq.read_table(layout.root / ref.path)


def object_problem(layout: LakeLayout, ref: ObjectRef) -> str | None:
    """Why the object's file is not the one ``ref`` names (None when it is): missing,
    or its BLAKE3 differs. The check a run makes before it reuses an object."""
    path = layout.root / ref.path
    if path.is_symlink() or not path.is_file():
        return f"object {ref.path} is missing or not a regular file"
    if blake3_file(path) != ref.blake3:
        return f"object {ref.path} does not match its recorded BLAKE3"
    return None


def lake_inputs(layout: LakeLayout, refs: Sequence[InputRef]) -> dict[str, ObjectRef] | None:
    """InputRefs name objects by digest; the object path follows from the digest."""
    objects = {}
    for ref in refs:
        if ":" in ref.name:  # source:<kind>, external:<name>: not lake objects
            continue
        if ref.sha256 is None:
            return None
        path = layout.object_path(ref.xxh3_128, ref.sha256)
        if not path.is_file():
            return None
        objects[ref.name] = ObjectRef(
            name=ref.name, xxh3_128=ref.xxh3_128, sha256=ref.sha256 or "", blake3="", rows=ref.rows or 0,
            path=layout.relative(path),
        )
    return objects
