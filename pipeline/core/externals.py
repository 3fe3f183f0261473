"""External inputs: the model, tokenizer or chat template a stage reads from outside the lake.

Each is resolved to a path (the CLI's ``--external name=PATH``, else the config field
the stage names), digested as a tree (``pipeline.core.trees``) through a MAC'd stat
cache of its own (a multi-GB model folder is re-read only when a file's size, times or
inode change) and becomes the input ``external:<name>``: its tree digest is in the
cache key and the receipt, its path only in the receipt (moving a model re-runs
nothing). The stage reaches it only through ``StageContext.external``, which re-checks
the digest.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from pydantic import BaseModel

from pipeline.core.errors import TracelakeError
from pipeline.core.hashing import CacheMac
from pipeline.core.sources import StatCache, display_path
from pipeline.core.stage import Stage
from pipeline.core.store import LakeLayout
from pipeline.core.trees import TreeError, manifest, tree_digest, tree_xxh3
from schemas.receipt import InputRef

PREFIX = "external:"


def stat_cache(layout: LakeLayout, mac: CacheMac) -> StatCache:
    return StatCache(layout.cache / "stat-cache-externals.json", mac)


def key_config(stage: Stage, config: BaseModel) -> dict[str, object]:
    """The config as cache keys and receipts hold it: without the external inputs'
    path fields (their digests stand for them)."""
    return config.model_dump(mode="json", exclude={e.field for e in stage.externals})


def resolve(
    layout: LakeLayout, mac: CacheMac, stage: Stage, config: BaseModel, overrides: Mapping[str, Path]
) -> list[InputRef]:
    refs = []
    for external in stage.externals:
        given = overrides.get(external.name) or getattr(config, external.field, None)
        if not given and external.default is not None:
            try:
                given = external.default(layout, mac)
            except Exception as exc:  # a default that cannot be made fails this stage only
                raise TracelakeError(f"{stage.name}: cannot make the default {external.kind} "
                                     f"{external.name!r}: {type(exc).__name__}: {exc}") from None
        if not given:
            raise TracelakeError(
                f"{stage.name} needs its {external.kind} {external.name!r}: set "
                f"{stage.name}.{external.field} in the config or pass --external {external.name}=PATH"
            )
        try:
            path = Path(str(given)).expanduser().resolve()
            files = manifest(path, stat_cache(layout, mac))
        except (TreeError, OSError, RuntimeError) as exc:  # RuntimeError: a link loop, ~nosuchuser
            raise TracelakeError(f"{stage.name}: external {external.kind} {external.name!r}: {exc}") from None
        if not files:
            raise TracelakeError(f"{stage.name}: external {external.kind} {external.name!r} at {path} is empty")
        refs.append(
            InputRef(
                name=PREFIX + external.name, xxh3_128=tree_xxh3(files), sha256=tree_digest(files),
                rows=len(files), location=display_path(path, fold_home=True),
            )
        )
    return refs


def recheck(layout: LakeLayout, mac: CacheMac | None, ref: InputRef) -> Path:
    """The path of ``ref`` if it still holds the tree ``ref`` names; with ``mac`` None
    (deep verify) every byte is hashed and the lake's stat cache is left alone."""
    if ref.location is None:
        raise TracelakeError(f"{ref.name} records no location")
    try:
        path = Path(ref.location).expanduser()
        files = manifest(path, stat_cache(layout, mac) if mac is not None else None)
    except (TreeError, OSError, RuntimeError) as exc:
        raise TracelakeError(f"{ref.name}: {exc}") from None
    if tree_digest(files) != ref.sha256:
        raise TracelakeError(f"{ref.name} at {ref.location} changed after it was digested for the cache key")
    return path


def external_refs(inputs: list[InputRef]) -> dict[str, InputRef]:
    return {ref.name.removeprefix(PREFIX): ref for ref in inputs if ref.name.startswith(PREFIX)}
