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


def xxh3_128_file(path: Path) -> str:
    hasher = xxhash.xxh3_128()
    with path.open("rb") as handle:
        while block := handle.read(_CHUNK):
            hasher.update(block)
    return hasher.hexdigest()


# --- logical table digest -------------------------------------------------------------


def _feed_validity(arr: pa.Array, hasher: Any) -> None:
    if arr.null_count:
        valid = pc.is_valid(arr).to_numpy(zero_copy_only=False)
        hasher.update(b"V")
        hasher.update(valid.astype("uint8").tobytes())
    else:
        hasher.update(b"N")


def _feed_array(arr: pa.Array, hasher: Any) -> None:
    """Feed one array in an encoding defined here, not by Arrow's memory layout."""
    typ = arr.type
    hasher.update(struct.pack("<q", len(arr)))
    if pa.types.is_dictionary(typ):
        _feed_array(arr.dictionary_decode(), hasher)
        return
    if pa.types.is_null(typ):
        hasher.update(b"null")
        return
    _feed_validity(arr, hasher)
    if pa.types.is_string(typ) or pa.types.is_large_string(typ) or pa.types.is_binary(typ) or (
        pa.types.is_large_binary(typ)
    ):
        as_binary = arr.cast(pa.large_binary())
        lengths = pc.fill_null(pc.binary_length(as_binary), -1).cast(pa.int64())
        hasher.update(b"S")
        hasher.update(lengths.to_numpy(zero_copy_only=False).astype("<i8").tobytes())
        for chunk_value in _binary_payload(as_binary):
            hasher.update(chunk_value)
        return
    if pa.types.is_boolean(typ):
        hasher.update(b"B")
        values = pc.fill_null(arr, False).to_numpy(zero_copy_only=False)
        hasher.update(values.astype("uint8").tobytes())
        return
    if pa.types.is_integer(typ) or pa.types.is_timestamp(typ) or pa.types.is_date(typ):
        hasher.update(b"I")
        values = pc.fill_null(arr.cast(pa.int64()), 0).to_numpy(zero_copy_only=False)
        hasher.update(values.astype("<i8").tobytes())
        return
    if pa.types.is_floating(typ):
        hasher.update(b"F")
        values = pc.fill_null(arr.cast(pa.float64()), 0.0).to_numpy(zero_copy_only=False)
        hasher.update(values.astype("<f8").tobytes())
        return
    if pa.types.is_list(typ) or pa.types.is_large_list(typ):
        hasher.update(b"L")
        lengths = pc.fill_null(pc.list_value_length(arr), -1).cast(pa.int64())
        hasher.update(lengths.to_numpy(zero_copy_only=False).astype("<i8").tobytes())
        _feed_array(pc.list_flatten(arr), hasher)
        return
    if pa.types.is_struct(typ):
        hasher.update(b"T")
        for index in range(typ.num_fields):
            hasher.update(typ.field(index).name.encode())
            _feed_array(pc.struct_field(arr, [index]), hasher)
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
    hasher.update(b"tracelake-table-v1")
    hasher.update(struct.pack("<q", table.num_rows))
    for field in table.schema:
        hasher.update(canonical_json([field.name, type_name(field.type)]))
        column = table.column(field.name)
        arr = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
        _feed_array(arr, hasher)
    return hasher.hexdigest()


def mapping_digest(mapping: Mapping[str, str]) -> str:
    return digest_json(dict(sorted(mapping.items())))
