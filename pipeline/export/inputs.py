"""What every export stage reads: scored tasks re-attached to their messages and calls."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import polars as pl

from pipeline.core.stage import StageContext
from pipeline.export.common import Quarantine, frame
from pipeline.export.conversation import Conversation, build_conversations
from pipeline.export.tasks import Tasks, attach
from pipeline.export.tools import derive_schemas, parse_args

EXPORT_INPUTS = ("scores", "tasks", "sessions", "messages", "tool_calls", "branches")


@dataclass
class ExportInputs:
    scores: pl.DataFrame  # sorted by session_id, prompt_number
    attached: Tasks
    schemas: dict[tuple[str, str], dict[str, Any]]
    branches: pl.DataFrame | None

    def conversations(self, task_ids: set[str], keep_thinking: bool) -> dict[str, Conversation]:
        return build_conversations(self.attached.tasks, self.attached.messages, self.attached.calls,
                                   task_ids, self.branches, keep_thinking)

    def tools_for(self, source_kind: str, names: list[str]) -> list[dict[str, Any]]:
        return [self.schemas[(source_kind, n)]["schema"] for n in sorted(set(names))
                if (source_kind, n) in self.schemas]


def load_inputs(ctx: StageContext) -> ExportInputs:
    tasks = frame(ctx, "tasks")
    attached = attach(tasks, frame(ctx, "messages"), frame(ctx, "tool_calls"))
    kinds = frame(ctx, "sessions").select("session_id", "source_kind")
    calls = attached.calls.join(kinds, on="session_id", how="left").with_columns(
        pl.col("source_kind").fill_null("unknown")
    )
    attached.calls = calls
    schemas = derive_schemas(
        zip(calls["source_kind"].to_list(), calls["name"].to_list(),
            [parse_args(s) for s in calls["input_json"].to_list()], strict=True)
    )
    scores = frame(ctx, "scores").sort("session_id", "prompt_number", "task_id")
    branches = frame(ctx, "branches") if "branches" in ctx.inputs else None
    return ExportInputs(scores=scores, attached=attached, schemas=schemas, branches=branches)


def split_known(inputs: ExportInputs, candidates: list[str], quarantine: Quarantine) -> list[str]:
    """Scored tasks missing from the tasks table have no provenance: set them aside."""
    known = set(inputs.attached.tasks["task_id"].to_list())
    for task_id in candidates:
        if task_id not in known:
            quarantine.add("missing_provenance", task_id, None, "scored task not in tasks")
    return [t for t in candidates if t in known]
