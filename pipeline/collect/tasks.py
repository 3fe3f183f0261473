"""What the collect stage hands its parse workers: plain frozen dataclasses.

Kept out of the compiled modules (see ``pipeline.collect.native``): a mypyc class is
pickled attribute by attribute, which a frozen dataclass refuses, and these cross the
process boundary with every batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pipeline.core.hashing import CacheMac


@dataclass(frozen=True)
class CollectSettings:
    """The config values a worker needs."""

    fold_home: bool
    max_line_bytes: int
    max_input_bytes: int
    max_result_bytes: int
    max_content_bytes: int


@dataclass(frozen=True)
class ShardTask:
    kind: str
    path: str
    display_path: str
    key: str  # the shard's cache key for the digests below
    digest: str  # what the runner digested the file as (the worker checks what it reads)
    shard_dir: str
    meta_path: str | None  # Claude subagent sidecar, read with the file
    settings: CollectSettings
    stage_version: str
    cache_mac: CacheMac = field(repr=False, compare=False)
