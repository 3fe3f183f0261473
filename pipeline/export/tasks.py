"""Task assembly: one human prompt and all the agent's work until the next one.

A task spans the messages of its session from its prompt's message (``seq_start``) up to
the next prompt's message. Subagent sessions attach, whole, to the task whose tool call
spawned them (subagents.spawn_tool_use_id -> tool_calls.prompt_id), transitively for
nested agents. Prompts whose message cannot be found, or whose session is unknown, have
no provenance and are set aside rather than guessed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from pipeline.core.imports import LazyModule
from pipeline.export.common import Quarantine

if TYPE_CHECKING:
    import polars as pl
else:
    pl = LazyModule("polars")

_END = 1 << 62


@dataclass
class Tasks:
    tasks: pl.DataFrame  # schemas.datasets.TaskRow columns
    messages: pl.DataFrame  # main-session messages with a task_id (null before 1st prompt)
    calls: pl.DataFrame  # every tool call with task_id (null if unattached) and is_main


def _subagent_tasks(subagents: pl.DataFrame, calls: pl.DataFrame, main: set[str]) -> dict[str, str]:
    """subagent session_id -> task_id, resolving nested agents through their parents."""
    call_task = {
        (s, t): task
        for s, t, task in calls.filter(pl.col("task_id").is_not_null())
        .select("session_id", "tool_use_id", "task_id")
        .iter_rows()
    }
    links = subagents.select("session_id", "parent_session_id", "spawn_tool_use_id").sort(
        "session_id", "parent_session_id"
    )
    resolved: dict[str, str] = {}
    pending = list(links.iter_rows())
    for _ in range(16):  # depth bound: nesting deeper than this is left unattached
        remaining = []
        for session_id, parent, spawn in pending:
            if session_id in main:
                continue
            # A spawn call inside a subagent session belongs to that agent's task.
            task = (call_task.get((parent, spawn)) if spawn else None) or resolved.get(parent)
            if task is not None:
                resolved.setdefault(session_id, task)
            else:
                remaining.append((session_id, parent, spawn))
        if len(remaining) == len(pending):
            break
        pending = remaining
    return resolved


def assemble(
    sessions: pl.DataFrame,
    messages: pl.DataFrame,
    prompts: pl.DataFrame,
    tool_calls: pl.DataFrame,
    subagents: pl.DataFrame,
    quarantine: Quarantine | None = None,
) -> Tasks:
    main_sessions = sessions.filter(~pl.col("is_subagent"))
    main_ids = set(main_sessions["session_id"].to_list())
    msg_seq = (
        messages.group_by("session_id", "message_id")
        .agg(pl.col("seq").min())
        .rename({"seq": "seq_start"})
    )
    last_seq = messages.group_by("session_id").agg((pl.col("seq").max() + 1).alias("last_seq"))
    candidates = (
        prompts.join(
            main_sessions.select("session_id", "source_kind", "cwd", pl.col("source_file").alias("s_file")),
            on="session_id",
            how="left",
        )
        .join(msg_seq, on=["session_id", "message_id"], how="left")
        .join(last_seq, on="session_id", how="left")
        .with_columns(in_main=pl.col("session_id").is_in(list(main_ids)))
    )
    subagent_ids = set(sessions.filter(pl.col("is_subagent"))["session_id"].to_list())
    # Prompts of subagent sessions are spawn prompts: part of the parent task, not tasks.
    candidates = candidates.filter(~pl.col("session_id").is_in(list(subagent_ids)))
    bad = candidates.filter(~pl.col("in_main") | pl.col("seq_start").is_null())
    if quarantine is not None:
        for row in bad.sort("session_id", "prompt_number").iter_rows(named=True):
            detail = "session not in sessions" if not row["in_main"] else "prompt message not in messages"
            quarantine.add("missing_provenance", row["prompt_id"], row["session_id"], detail,
                           row["source_file"])
    good = candidates.filter(pl.col("in_main") & pl.col("seq_start").is_not_null()).sort(
        "session_id", "seq_start", "prompt_number"
    )
    good = good.with_columns(
        seq_end=pl.col("seq_start").shift(-1).over("session_id").fill_null(pl.col("last_seq"))
    )
    tasks = good.select(
        pl.col("prompt_id").alias("task_id"),
        "session_id",
        "prompt_number",
        pl.col("message_id").alias("prompt_message_id"),
        pl.col("text").alias("prompt_text"),
        pl.col("seq_start").cast(pl.Int64),
        pl.col("seq_end").cast(pl.Int64),
        pl.col("source_kind").fill_null("unknown"),
        pl.coalesce("s_file", "source_file").alias("source_file"),
        "cwd",
    )
    bounds = tasks.select("session_id", "task_id", "seq_start").sort("seq_start")
    main_msgs = (
        messages.filter(pl.col("session_id").is_in(list(main_ids)))
        .sort("seq")
        .join_asof(bounds, left_on="seq", right_on="seq_start", by="session_id", strategy="backward",
                   check_sortedness=False)
        .drop("seq_start")
        .sort("session_id", "seq")
    )
    calls = tool_calls.join(
        main_msgs.select("session_id", "message_id", pl.col("task_id").alias("seq_task")).unique(
            ["session_id", "message_id"], keep="first"
        ),
        on=["session_id", "message_id"],
        how="left",
    )
    known = set(tasks["task_id"].to_list())
    calls = calls.with_columns(
        is_main=pl.col("session_id").is_in(list(main_ids)),
        task_id=pl.when(pl.col("prompt_id").is_in(list(known)))
        .then(pl.col("prompt_id"))
        .otherwise(pl.col("seq_task")),
    ).drop("seq_task")
    sub_task = _subagent_tasks(subagents, calls, main_ids)
    if sub_task:
        mapping = pl.DataFrame(
            {"session_id": list(sub_task), "sub_task": list(sub_task.values())},
            schema={"session_id": pl.String, "sub_task": pl.String},
        )
        calls = (
            calls.join(mapping, on="session_id", how="left")
            .with_columns(
                task_id=pl.when(pl.col("is_main")).then("task_id").otherwise(pl.col("sub_task"))
            )
            .drop("sub_task")
        )
        per_task = (
            mapping.group_by("sub_task")
            .agg(pl.col("session_id").sort().alias("subagent_session_ids"))
            .rename({"sub_task": "task_id"})
        )
        tasks = tasks.join(per_task, on="task_id", how="left")
    else:
        calls = calls.with_columns(
            task_id=pl.when(pl.col("is_main")).then("task_id").otherwise(pl.lit(None, pl.String))
        )
        tasks = tasks.with_columns(subagent_session_ids=pl.lit(None, pl.List(pl.String)))
    tasks = tasks.with_columns(
        pl.col("subagent_session_ids").fill_null(pl.lit([], pl.List(pl.String)))
    ).sort("session_id", "prompt_number")
    calls = calls.sort("session_id", "turn_index", "turn_subindex", "tool_use_id")
    return Tasks(tasks=tasks, messages=main_msgs, calls=calls)
