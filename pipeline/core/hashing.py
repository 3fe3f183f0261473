"""Digests that survive library upgrades.

Library hashes (polars ``hash_rows``, DuckDB ``hash()``) change between releases, and
Parquet file bytes embed the writer's version. Identity here is therefore defined on
bytes we encode ourselves: canonical JSON for configs and keys, and a columnar
encoding of Arrow data for tables (independent of chunking, slice offsets, validity
buffers and dictionary encoding).
"""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import math
import mmap
import struct
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import blake3
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import xxhash

from pipeline.core.errors import HashingError

_CHUNK = 1 << 20


def _refuse(value: object) -> object:
    raise HashingError(f"cannot hash {type(value).__name__} canonically: {value!r:.80}")


def _check_floats(obj: Any) -> None:
    if isinstance(obj, float) and not math.isfinite(obj):
        raise HashingError(f"non-finite float {obj!r} has no canonical form")
    if isinstance(obj, dict):
        for key, value in obj.items():
            if not isinstance(key, str):
                raise HashingError(f"non-string key {key!r} has no canonical form")
            _check_floats(value)
    elif isinstance(obj, (list, tuple)):
        for value in obj:
            _check_floats(value)


def canonical_json(obj: Any) -> bytes:
    """Sorted keys, no whitespace, UTF-8; refuses anything JSON cannot carry exactly."""
    _check_floats(obj)
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False,
        default=_refuse,
    ).encode("utf-8")


def xxh3_128_hex(data: bytes) -> str:
    return xxhash.xxh3_128_hexdigest(data)


def digest_json(obj: Any) -> str:
    """xxh3-128 of the canonical JSON of ``obj``."""
    return xxh3_128_hex(canonical_json(obj))


def digest_parts(parts: Iterable[str]) -> str:
    """Digest of an ordered sequence of strings, unambiguous about boundaries."""
    return digest_json(list(parts))


_BUFFERS = threading.local()


def _hash_file(path: Path, hasher: Any) -> None:
    """Feed a file through one reused buffer per thread: reading each file into a fresh
    bytes object costs a page fault per 4 KiB (0.65 s of a 0.8 s cold source scan at
    500 MB)."""
    buffer = getattr(_BUFFERS, "buffer", None)
    if buffer is None:
        buffer = _BUFFERS.buffer = bytearray(_CHUNK)
    view = memoryview(buffer)
    with path.open("rb", buffering=0) as handle:
        while size := handle.readinto(buffer):
            hasher.update(view[:size])


def sha256_file(path: Path) -> str:
    hasher = hashlib.sha256()
    _hash_file(path, hasher)
    return hasher.hexdigest()


class HashingReader(io.RawIOBase):
    """A raw file reader that feeds every byte it hands out to ``hasher``: wrapped in a
    ``BufferedReader`` and read to the end, the digest is of exactly the bytes the
    caller parsed (a file appended to meanwhile yields a digest of what was read, not of
    what the file became). Hashing happens once per buffer refill, not per line."""

    def __init__(self, path: Path, hasher: Any) -> None:
        super().__init__()
        self._raw = path.open("rb", buffering=0)
        self._hasher = hasher
        self.size = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        count = self._raw.readinto(buffer)
        if count:
            with memoryview(buffer) as view:
                self._hasher.update(view[:count])
            self.size += count
        return count or 0

    def close(self) -> None:
        self._raw.close()
        super().close()


@dataclass(frozen=True)
class FileDigests:
    """What a receipt claims about a file's bytes: sha256 (what in-toto and third-party
    tools check) and BLAKE3 (what a run checks before reusing the file: as strong, and
    several times faster on two cores)."""

    size: int
    sha256: str
    blake3: str


class _Both:
    """Feeds one read of a file to both hashers."""

    def __init__(self) -> None:
        self.sha256 = hashlib.sha256()
        self.blake3 = blake3.blake3()
        self.size = 0

    def update(self, data: memoryview) -> None:
        self.sha256.update(data)
        self.blake3.update(data)
        self.size += len(data)


def file_digests(path: Path) -> FileDigests:
    both = _Both()
    _hash_file(path, both)
    return FileDigests(both.size, both.sha256.hexdigest(), both.blake3.hexdigest())


def blake3_file(path: Path) -> str:
    """BLAKE3 of a file, memory-mapped and spread over every core (a 244 MB export in
    0.05 s); an empty file cannot be mapped everywhere, so it is read. Not for code that
    may run in a forked child (see ``CacheMac``)."""
    hasher = blake3.blake3(max_threads=blake3.blake3.AUTO)
    if path.stat().st_size:
        hasher.update_mmap(path)
    return hasher.hexdigest()


class CacheMac:
    """Authenticates the lake's derived caches (shard containers, the stat cache, compiled
    screens): what a cache holds flows into signed outputs, so an entry someone else
    wrote must never be read as ours. The key is derived from the signing key, so only
    its holder can make a tag; a tag that fails makes the entry a miss."""

    CONTEXT = "tracelake 2026-12 derived-cache authentication v1"
    SIZE = 32
    # Always one thread: tags are made in forked collect workers, where BLAKE3's thread
    # pool (inherited from the parent without its threads) would wait forever.

    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise ValueError("a cache MAC key is 32 bytes")
        self._key = key

    def __repr__(self) -> str:
        return "CacheMac(<key>)"

    def __reduce__(self) -> tuple[Any, ...]:  # crosses into spawned workers
        return (CacheMac, (self._key,))

    @classmethod
    def derive(cls, secret: bytes) -> CacheMac:
        return cls(blake3.blake3(secret, derive_key_context=cls.CONTEXT).digest())

    def hasher(self) -> Any:
        """A keyed BLAKE3 to feed incrementally; ``.digest()`` is the tag."""
        return blake3.blake3(key=self._key)

    def tag(self, data: bytes | memoryview) -> bytes:
        return bytes(blake3.blake3(data, key=self._key).digest())

    def tag_file(self, path: Path, length: int) -> bytes:
        """Tag of the first ``length`` bytes of ``path`` (memory-mapped)."""
        hasher = blake3.blake3(key=self._key)
        if length > 0:
            with path.open("rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
                view = memoryview(mapped)
                try:
                    hasher.update(view[:length])
                finally:
                    view.release()
        return bytes(hasher.digest())

    @staticmethod
    def same(a: bytes, b: bytes) -> bool:
        return hmac.compare_digest(a, b)


def xxh3_128_file(path: Path) -> str:
    hasher = xxhash.xxh3_128()
    _hash_file(path, hasher)
    return hasher.hexdigest()


# --- logical table digest -------------------------------------------------------------


def _valid_mask(arr: pa.Array) -> np.ndarray:
    if arr.null_count == 0:
        return np.ones(len(arr), dtype=bool)
    return np.asarray(pc.is_valid(arr).to_numpy(zero_copy_only=False), dtype=bool)


def _fixed_width(arr: pa.Array, numpy_type: str, arrow_type: pa.DataType) -> bytes:
    """Values with nulls written as zero, so only the validity section tells them apart."""
    typed = arr.cast(arrow_type)
    if arr.null_count:
        typed = pc.fill_null(typed, 0)  # in Arrow: numpy would turn int64 into float64
    return bytes(typed.to_numpy(zero_copy_only=False).astype(numpy_type).tobytes())


def _lengths(arr: pa.Array, lengths: pa.Array) -> bytes:
    """Per-row lengths, -1 for nulls."""
    typed = lengths.cast(pa.int64())
    if arr.null_count:
        typed = pc.fill_null(typed, -1)
    return bytes(typed.to_numpy(zero_copy_only=False).astype("<i8").tobytes())


class _ColumnHasher:
    """One column's canonical encoding, fed chunk by chunk.

    Every section (validity, lengths, values, children) has its own running hasher, so
    a section's bytes are the concatenation over all chunks fed: the digest does not
    depend on how the column is chunked, sliced or split into batches, and a table can
    be hashed while it streams past without ever being whole in memory.
    """

    def __init__(self, typ: pa.DataType) -> None:
        if pa.types.is_dictionary(typ):
            typ = typ.value_type
        self.type = typ
        self.rows = 0
        self.tag = _tag(typ)
        self.validity = xxhash.xxh3_128()
        self.lengths = xxhash.xxh3_128()
        self.values = xxhash.xxh3_128()
        self.children: list[tuple[str, _ColumnHasher]] = []
        if pa.types.is_list(typ) or pa.types.is_large_list(typ):
            self.children = [("", _ColumnHasher(typ.value_type))]
        elif pa.types.is_struct(typ):
            self.children = [(typ.field(i).name, _ColumnHasher(typ.field(i).type)) for i in range(typ.num_fields)]

    def feed(self, chunk: pa.Array) -> None:
        if len(chunk) == 0:
            return
        if pa.types.is_dictionary(chunk.type):
            chunk = chunk.dictionary_decode()
        self.rows += len(chunk)
        if self.tag == b"null":
            return
        self.validity.update(_valid_mask(chunk).astype("uint8").tobytes())
        if self.tag == b"S":
            binary = chunk.cast(pa.large_binary())
            self.lengths.update(_lengths(binary, pc.binary_length(binary)))
            # Bytes under a null slot are undefined in Arrow: empty them before feeding.
            clean = pc.fill_null(binary, b"") if binary.null_count else binary
            for payload in _binary_payload(clean):
                self.values.update(payload)
        elif self.tag == b"B":
            self.values.update(_fixed_width(chunk, "uint8", pa.uint8()))
        elif self.tag == b"I":
            self.values.update(_fixed_width(chunk, "<i8", pa.int64()))
        elif self.tag == b"F":
            self.values.update(_fixed_width(chunk, "<f8", pa.float64()))
        elif self.tag == b"L":
            self.lengths.update(_lengths(chunk, pc.list_value_length(chunk)))
            self.children[0][1].feed(pc.list_flatten(chunk))
        elif self.tag == b"T":
            for index, (_, child) in enumerate(self.children):
                child.feed(pc.struct_field(chunk, [index]))

    def digest(self) -> bytes:
        out = xxhash.xxh3_128()
        out.update(struct.pack("<q", self.rows))
        out.update(self.tag)
        if self.tag != b"null":
            for section in (self.validity, self.lengths, self.values):
                out.update(section.digest())
            for name, child in self.children:
                out.update(canonical_json(name))
                out.update(child.digest())
        return out.digest()


def _tag(typ: pa.DataType) -> bytes:
    if pa.types.is_null(typ):
        return b"null"
    if (
        pa.types.is_string(typ)
        or pa.types.is_large_string(typ)
        or pa.types.is_binary(typ)
        or pa.types.is_large_binary(typ)
    ):
        return b"S"
    if pa.types.is_boolean(typ):
        return b"B"
    if pa.types.is_integer(typ) or pa.types.is_timestamp(typ) or pa.types.is_date(typ):
        return b"I"
    if pa.types.is_floating(typ):
        return b"F"
    if pa.types.is_list(typ) or pa.types.is_large_list(typ):
        return b"L"
    if pa.types.is_struct(typ):
        return b"T"
    raise HashingError(f"no canonical encoding for Arrow type {typ}")


def _binary_payload(arr: pa.Array) -> Iterable[memoryview]:
    """The concatenated value bytes of a large_binary array, slice offsets removed."""
    if len(arr) == 0:
        return
    offsets_buf = arr.buffers()[1]
    data_buf = arr.buffers()[2]
    if offsets_buf is None or data_buf is None:
        return
    offsets = np.frombuffer(offsets_buf, dtype="<i8")[arr.offset : arr.offset + len(arr) + 1]
    start, end = int(offsets[0]), int(offsets[-1])
    yield memoryview(data_buf)[start:end]


def type_name(typ: pa.DataType) -> str:
    """A layout-free type name: string and large_string (etc.) are the same logical type."""
    if pa.types.is_dictionary(typ):
        return type_name(typ.value_type)
    if pa.types.is_string(typ) or pa.types.is_large_string(typ):
        return "utf8"
    if pa.types.is_binary(typ) or pa.types.is_large_binary(typ):
        return "binary"
    if pa.types.is_list(typ) or pa.types.is_large_list(typ):
        return f"list<{type_name(typ.value_type)}>"
    if pa.types.is_struct(typ):
        inner = ",".join(f"{f.name}:{type_name(f.type)}" for f in typ)
        return f"struct<{inner}>"
    return str(typ)


class TableHasher:
    """xxh3-128 over schema names and types plus each column's canonical encoding,
    fed batch by batch (see ``_ColumnHasher``). Row order matters: callers sort on
    stable keys first (see ``store.canonicalize``)."""

    VERSION = b"tracelake-table-v3"

    def __init__(self, schema: pa.Schema) -> None:
        self.schema = schema
        self.rows = 0
        self.columns = [_ColumnHasher(field.type) for field in schema]

    def update(self, data: pa.Table | pa.RecordBatch) -> None:
        self.rows += data.num_rows
        for index, hasher in enumerate(self.columns):
            column = data.column(index)
            for chunk in column.chunks if isinstance(column, pa.ChunkedArray) else [column]:
                hasher.feed(chunk)

    def hexdigest(self) -> str:
        out = xxhash.xxh3_128()
        out.update(self.VERSION)
        out.update(struct.pack("<q", self.rows))
        for field, hasher in zip(self.schema, self.columns, strict=True):
            out.update(canonical_json([field.name, type_name(field.type)]))
            out.update(hasher.digest())
        return out.hexdigest()


def table_digest(table: pa.Table) -> str:
    hasher = TableHasher(table.schema)
    hasher.update(table)
    return hasher.hexdigest()


def mapping_digest(mapping: Mapping[str, str]) -> str:
    return digest_json(dict(sorted(mapping.items())))
