"""Digests that survive library upgrades.

Library hashes (polars ``hash_rows``, DuckDB ``hash()``) change between releases, and
Parquet file bytes embed the writer's version. Identity here is therefore defined on
bytes we encode ourselves: canonical JSON for configs and keys, and a columnar
encoding of Arrow data for tables (independent of chunking, slice offsets, validity
buffers and dictionary encoding).
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

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


def sha256_file(path: Path) -> str:
    hasher = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(_CHUNK):
            hasher.update(block)
    return hasher.hexdigest()


_WHOLE_FILE = 64 << 20


def xxh3_128_file(path: Path) -> str:
    """One read for files up to 64 MiB (3x faster than chunking), chunks beyond."""
    with path.open("rb") as handle:
        if path.stat().st_size <= _WHOLE_FILE:
            return xxhash.xxh3_128_hexdigest(handle.read())
        hasher = xxhash.xxh3_128()
        while block := handle.read(_CHUNK):
            hasher.update(block)
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


def _feed_column(chunks: list[pa.Array], typ: pa.DataType, hasher: Any) -> None:
    """Feed one column in an encoding defined here, not by Arrow's memory layout.

    Each section (validity, lengths, values) is the concatenation over chunks, so the
    digest does not depend on how the column is chunked or sliced.
    """
    if pa.types.is_dictionary(typ):
        _feed_column([c.dictionary_decode() for c in chunks], typ.value_type, hasher)
        return
    hasher.update(struct.pack("<q", sum(len(c) for c in chunks)))
    if pa.types.is_null(typ):
        hasher.update(b"null")
        return
    hasher.update(b"V")
    for chunk in chunks:
        hasher.update(_valid_mask(chunk).astype("uint8").tobytes())
    if (
        pa.types.is_string(typ)
        or pa.types.is_large_string(typ)
        or pa.types.is_binary(typ)
        or pa.types.is_large_binary(typ)
    ):
        as_binary = [c.cast(pa.large_binary()) for c in chunks]
        hasher.update(b"S")
        for chunk in as_binary:
            hasher.update(_lengths(chunk, pc.binary_length(chunk)))
        for chunk in as_binary:
            # Bytes under a null slot are undefined in Arrow: empty them before feeding.
            clean = pc.fill_null(chunk, b"") if chunk.null_count else chunk
            for payload in _binary_payload(clean):
                hasher.update(payload)
        return
    if pa.types.is_boolean(typ):
        hasher.update(b"B")
        for chunk in chunks:
            hasher.update(_fixed_width(chunk, "uint8", pa.uint8()))
        return
    if pa.types.is_integer(typ) or pa.types.is_timestamp(typ) or pa.types.is_date(typ):
        hasher.update(b"I")
        for chunk in chunks:
            hasher.update(_fixed_width(chunk, "<i8", pa.int64()))
        return
    if pa.types.is_floating(typ):
        hasher.update(b"F")
        for chunk in chunks:
            hasher.update(_fixed_width(chunk, "<f8", pa.float64()))
        return
    if pa.types.is_list(typ) or pa.types.is_large_list(typ):
        hasher.update(b"L")
        for chunk in chunks:
            hasher.update(_lengths(chunk, pc.list_value_length(chunk)))
        _feed_column([pc.list_flatten(c) for c in chunks], typ.value_type, hasher)
        return
    if pa.types.is_struct(typ):
        hasher.update(b"T")
        for index in range(typ.num_fields):
            hasher.update(typ.field(index).name.encode())
            fields = [pc.struct_field(c, [index]) for c in chunks]
            _feed_column(fields, typ.field(index).type, hasher)
        return
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


def table_digest(table: pa.Table) -> str:
    """xxh3-128 over schema names and types plus each column's canonical encoding.

    Row order matters: callers sort on stable keys first (see ``store.canonicalize``).
    """
    hasher = xxhash.xxh3_128()
    hasher.update(b"tracelake-table-v2")
    hasher.update(struct.pack("<q", table.num_rows))
    for field in table.schema:
        hasher.update(canonical_json([field.name, type_name(field.type)]))
        column = table.column(field.name)
        _feed_column([c for c in column.chunks if len(c)], field.type, hasher)
    return hasher.hexdigest()


def mapping_digest(mapping: Mapping[str, str]) -> str:
    return digest_json(dict(sorted(mapping.items())))
