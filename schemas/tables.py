"""Row models -> fixed Arrow schemas, plus the sort keys that make each table canonical.

The pydantic models are the documented contract (their JSON Schemas are checked in under
``schemas/json``); the Arrow schema derived from them is what the lake writes. Rows are
built column-wise for speed, so models are not instantiated per row on hot paths.
"""

from __future__ import annotations

import functools
import re
import types
import typing
from dataclasses import dataclass

import pyarrow as pa
from pydantic import BaseModel


@dataclass(frozen=True)
class TableSpec:
    name: str
    model: type[BaseModel]
    sort_keys: tuple[str, ...]
    # A training dataset a run publishes: the run summary lists its row count, and drift
    # compares it as a dataset rather than as a table.
    dataset: bool = False

    @property
    def schema(self) -> pa.Schema:
        return arrow_schema(self.model)


@dataclass(frozen=True)
class ArtifactSpec:
    """A named directory of files a stage produces beside its tables (a LoRA adapter and
    its config, a loss-curve PNG): stored and signed by a tree digest over its files,
    published into ``exports/<run>/<name>/``."""

    name: str
    description: str
    # A stage may leave it out (a training run with nothing to train makes no adapter).
    optional: bool = False
    # A model others load (an adapter): its export gets an OpenSSF model-signing
    # signature beside it (``<name>.sig``, ``<name>.pub.pem``; pipeline.core.openssf).
    model: bool = False

    def __post_init__(self) -> None:
        check_name("artifact", self.name)


# A name that becomes one path segment (an artifact's export folder, a checkpoint file):
# no separators, no "..", no leading dot.
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


def check_name(kind: str, name: str) -> str:
    if not SAFE_NAME.fullmatch(name) or ".." in name:
        raise ValueError(f"{kind} name {name!r} is not one safe path segment ({SAFE_NAME.pattern})")
    return name


_SCALARS: dict[type, pa.DataType] = {
    str: pa.large_string(),
    int: pa.int64(),
    float: pa.float64(),
    bool: pa.bool_(),
}


def _arrow_type(annotation: object) -> tuple[pa.DataType, bool]:
    """Map an annotation to (arrow type, nullable)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) != 1:
            raise TypeError(f"unsupported union {annotation!r}")
        inner, _ = _arrow_type(args[0])
        return inner, True
    if origin is list:
        (item,) = typing.get_args(annotation)
        inner, _ = _arrow_type(item)
        return pa.large_list(inner), False
    if isinstance(annotation, type) and annotation in _SCALARS:
        return _SCALARS[annotation], False
    raise TypeError(f"unsupported annotation {annotation!r}")


@functools.cache
def arrow_schema(model: type[BaseModel]) -> pa.Schema:
    """Cached: it is asked for per batch, and deriving it walks the type hints."""
    fields = []
    hints = typing.get_type_hints(model)
    for name in model.model_fields:
        arrow_type, nullable = _arrow_type(hints[name])
        fields.append(pa.field(name, arrow_type, nullable=nullable))
    return pa.schema(fields)


def empty_table(spec: TableSpec) -> pa.Table:
    return spec.schema.empty_table()


def from_columns(spec: TableSpec, columns: dict[str, list[object]]) -> pa.Table:
    schema = spec.schema
    return pa.table({f.name: pa.array(columns[f.name], type=f.type) for f in schema}, schema=schema)


def from_rows(spec: TableSpec, rows: list[dict[str, object]]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=spec.schema)
