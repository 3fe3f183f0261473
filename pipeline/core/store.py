"""The lake's one home for file layout and atomic, deterministic Parquet I/O.

Layout under ``root``::

    data/objects/<aa>/<xxh3>.parquet   content-addressed tables
    data/cache/                        per-source-file shards and the stat cache
    data/lake.duckdb                   views over the latest run, for ad-hoc users
    receipts/<run_id>/                 signed receipts, run.json, summary.{json,md}
    receipts/cache/<cache_key>.json    run-cache index: key -> receipt envelope
    exports/<run_id>/                  datasets for external clients
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.core.hashing import sha256_file, table_digest
from schemas.receipt import ObjectRef

# Fixed writer settings: changing any of them changes file bytes (not logical digests).
PARQUET_COMPRESSION = "zstd"
PARQUET_COMPRESSION_LEVEL = 3
PARQUET_ROW_GROUP_SIZE = 64 * 1024


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

    def run_dir(self, run_id: str) -> Path:
        return self.receipts / run_id

    def object_path(self, digest: str) -> Path:
        return self.objects / digest[:2] / f"{digest}.parquet"

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
        if durable:
            with tmp.open("rb") as handle:
                os.fsync(handle.fileno())
        # mkstemp creates 0600; published files follow the umask unless a mode is asked for.
        tmp.chmod(mode if mode is not None else 0o666 & ~_UMASK)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


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
        order = pc.sort_indices(keys, sort_keys=[(key, "ascending") for key in sort_keys])
        in_order = np.array_equal(
            order.to_numpy(zero_copy_only=False), np.arange(table.num_rows)
        )
        if not in_order:
            table = table.take(order)
    return table


def write_parquet(table: pa.Table, path: Path, metadata: dict[str, str] | None = None) -> None:
    """Write with fixed settings; the only key-value metadata is what the caller passes
    (no ``ARROW:schema``, whose bytes vary with the writer's version)."""
    table = table.replace_schema_metadata(None)
    with atomic_path(path) as tmp:
        with pq.ParquetWriter(
            tmp,
            table.schema,
            compression=PARQUET_COMPRESSION,
            compression_level=PARQUET_COMPRESSION_LEVEL,
            use_dictionary=True,
            write_statistics=True,
            store_schema=False,
        ) as writer:
            # One contiguous chunk per row group: page boundaries follow chunk boundaries,
            # so this keeps file bytes independent of how the table happens to be chunked.
            for start in range(0, max(table.num_rows, 1), PARQUET_ROW_GROUP_SIZE):
                group = table.slice(start, PARQUET_ROW_GROUP_SIZE).combine_chunks()
                writer.write_table(group, row_group_size=PARQUET_ROW_GROUP_SIZE)
            if metadata:
                writer.add_key_value_metadata(dict(sorted(metadata.items())))


def put_table(
    layout: LakeLayout, name: str, table: pa.Table, metadata: dict[str, str] | None = None
) -> ObjectRef:
    """Store ``table`` (already canonical) as a content-addressed object.

    An object whose logical digest already exists is not rewritten, so re-runs never
    touch finished files.
    """
    digest = table_digest(table)
    path = layout.object_path(digest)
    if not path.exists():
        write_parquet(table, path, metadata)
    return ObjectRef(
        name=name,
        xxh3_128=digest,
        sha256=sha256_file(path),
        rows=table.num_rows,
        path=layout.relative(path),
    )


def read_object(layout: LakeLayout, ref: ObjectRef) -> pa.Table:
    return pq.read_table(layout.root / ref.path)


def object_intact(layout: LakeLayout, ref: ObjectRef, deep: bool = False) -> bool:
    """Cheap check (exists) by default; ``deep`` re-hashes the file bytes."""
    path = layout.root / ref.path
    if not path.is_file():
        return False
    return not deep or sha256_file(path) == ref.sha256
