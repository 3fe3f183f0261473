"""The pipeline's stages in topological order, imported only when a run needs them.

Importing every stage costs ~0.3 s (the exports pull in polars and their own helpers),
a fifth of a small `tracelake run collect`. So each stage is listed here by module and
upstream stages, and ``load_stages`` imports just the closure of its targets; a test
holds this table to the stages' own declared inputs.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from pipeline.core.errors import TracelakeError

if TYPE_CHECKING:
    from pipeline.core.stage import Stage

# name -> (module holding STAGE, stages whose outputs it reads)
REGISTRY: dict[str, tuple[str, tuple[str, ...]]] = {
    "collect": ("pipeline.stages.collect", ()),
    "score": ("pipeline.stages.score", ("collect",)),
    "export-sft": ("pipeline.stages.export_sft", ("collect", "score")),
    "export-rag": ("pipeline.stages.export_rag", ("collect", "score")),
    "export-preference": ("pipeline.stages.export_preference", ("collect", "score")),
    "collate": ("pipeline.stages.collate", ("collect", "export-sft", "export-preference")),
    "train": ("pipeline.stages.train", ("score", "export-sft", "export-preference", "collate")),
    "eval": ("pipeline.stages.eval", ("export-sft", "train")),
}
STAGE_NAMES: tuple[str, ...] = tuple(REGISTRY)


def load_stages(targets: Sequence[str] | None = None) -> list[Stage]:
    """The stages ``targets`` need (themselves and everything upstream), in order; every
    stage when ``targets`` is empty or None."""
    needed = set(STAGE_NAMES)
    if targets:
        unknown = [t for t in targets if t not in REGISTRY]
        if unknown:
            raise TracelakeError(f"unknown stage {unknown[0]!r}; known: {', '.join(STAGE_NAMES)}")
        needed = set()
        pending = list(targets)
        while pending:
            name = pending.pop()
            if name not in needed:
                needed.add(name)
                pending.extend(REGISTRY[name][1])
    stages: list[Stage] = []
    for name in STAGE_NAMES:
        if name in needed:
            stage = importlib.import_module(REGISTRY[name][0]).STAGE
            if stage.name != name:
                raise TracelakeError(f"{REGISTRY[name][0]} holds stage {stage.name!r}, registered as {name!r}")
            stages.append(stage)
    return stages


def __getattr__(name: str) -> Any:
    """``STAGES``: every stage (imports them all)."""
    if name == "STAGES":
        return load_stages()
    raise AttributeError(name)
