"""Tasks as conversations in the OpenAI/TRL shape.

A task's conversation is its prompt (collect's cleaned prompt text, wrappers stripped),
then the agent's assistant messages with ``tool_calls[].function{name, arguments}``
(arguments a JSON object) each followed by ``tool`` messages carrying the results, with
thinking as ``reasoning_content``. Only the active branch is followed: an edited or
retried child that was abandoned, and everything under it, is left out (unless it is the
task's own prompt, which makes the whole task the abandoned side of a branch).
Earlier tasks of the session are not included: their turns were scored separately and
must not ride along as training context.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from pipeline.export.tools import call_category, parse_args


@dataclass
class Conversation:
    task_id: str
    session_id: str
    source_kind: str
    messages: list[dict[str, Any]]
    tool_names: list[str]  # distinct, in first-use order
    calls: list[tuple[str, dict[str, Any]]]  # (name, args) in order
    copied_context: bool = False
    truncated_args: bool = False
    final_answer: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def n_tool_calls(self) -> int:
        return len(self.calls)

    @property
    def n_assistant_turns(self) -> int:
        return sum(1 for m in self.messages if m["role"] == "assistant")

    def prompt_messages(self) -> list[dict[str, Any]]:
        return self.messages[:1]

    def completion_messages(self) -> list[dict[str, Any]]:
        return self.messages[1:]


COPIED_CONTEXT_PREFIXES = (
    "This session is being continued from a previous conversation",
    "Please continue the conversation from where we left",
)


def is_copied_context(text: str | None) -> bool:
    return bool(text) and text.lstrip().startswith(COPIED_CONTEXT_PREFIXES)  # type: ignore[union-attr]


def _inactive_children(branches: pl.DataFrame | None) -> set[tuple[str, str]]:
    if branches is None or branches.height == 0:
        return set()
    dead = branches.filter(~pl.col("is_active") & pl.col("kind").is_in(["edit", "retry"]))
    return set(dead.select("session_id", "child_message_id").iter_rows())


def build_conversations(
    tasks: pl.DataFrame,
    messages: pl.DataFrame,
    calls: pl.DataFrame,
    task_ids: set[str] | None = None,
    branches: pl.DataFrame | None = None,
    keep_thinking: bool = True,
) -> dict[str, Conversation]:
    """task_id -> Conversation for the wanted tasks (all when ``task_ids`` is None)."""
    if task_ids is not None:
        tasks = tasks.filter(pl.col("task_id").is_in(list(task_ids)))
    wanted = set(tasks["task_id"].to_list())
    by_message: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    main_calls = calls.filter(pl.col("is_main") & pl.col("task_id").is_in(list(wanted)))
    for call in main_calls.sort("session_id", "turn_index", "turn_subindex", "tool_use_id").iter_rows(named=True):
        by_message[(call["session_id"], call["message_id"])].append(call)
    dead = _inactive_children(branches)
    msgs = messages.filter(pl.col("task_id").is_in(list(wanted))).sort("session_id", "seq")
    rows_by_task: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in msgs.iter_rows(named=True):
        rows_by_task[row["task_id"]].append(row)
    out: dict[str, Conversation] = {}
    for task in tasks.sort("session_id", "prompt_number").iter_rows(named=True):
        conv = Conversation(
            task_id=task["task_id"],
            session_id=task["session_id"],
            source_kind=task["source_kind"],
            messages=[{"role": "user", "content": task["prompt_text"]}],
            tool_names=[],
            calls=[],
            copied_context=is_copied_context(task["prompt_text"]),
        )
        _fill(conv, task, rows_by_task.get(task["task_id"], []), by_message, dead, keep_thinking)
        out[task["task_id"]] = conv
    return out


def _fill(
    conv: Conversation,
    task: dict[str, Any],
    rows: list[dict[str, Any]],
    by_message: dict[tuple[str, str], list[dict[str, Any]]],
    dead: set[tuple[str, str]],
    keep_thinking: bool,
) -> None:
    excluded: set[str] = set()
    session_id = task["session_id"]
    for row in rows:
        message_id = row["message_id"]
        if row["seq"] <= task["seq_start"]:
            continue
        if (session_id, message_id) in dead or (row["parent_id"] in excluded):
            excluded.add(message_id)
            continue
        if row["is_compact_summary"] or is_copied_context(row["text"]):
            conv.copied_context = True
            continue
        if row["role"] != "assistant" or row["is_sidechain"]:
            continue
        _add_assistant(conv, row, by_message.get((session_id, message_id), []), keep_thinking)
    last = conv.messages[-1]
    if last["role"] == "assistant" and not last.get("tool_calls"):
        conv.final_answer = last.get("content") or ""


def _add_assistant(
    conv: Conversation, row: dict[str, Any], calls: list[dict[str, Any]], keep_thinking: bool
) -> None:
    text = row["text"] or ""
    thinking = row["thinking"] or ""
    if not text.strip() and not thinking.strip() and not calls:
        return
    tool_calls = []
    for call in calls:
        args = parse_args(call["input_json"])
        if call["input_truncated_bytes"]:
            conv.truncated_args = True
        tool_calls.append(
            {"id": call["tool_use_id"], "type": "function",
             "function": {"name": call["name"], "arguments": args}}
        )
        conv.calls.append((call["name"], args))
        if call["name"] not in conv.tool_names:
            conv.tool_names.append(call["name"])
    prev = conv.messages[-1]
    if prev["role"] == "assistant" and not prev.get("tool_calls"):
        # One API turn split over several rows (reasoning item, then text, then calls).
        message = prev
        if text:
            message["content"] = f"{message['content']}\n\n{text}" if message["content"] else text
    else:
        message = {"role": "assistant", "content": text}
        conv.messages.append(message)
    if keep_thinking and thinking.strip():
        old = message.get("reasoning_content")
        message["reasoning_content"] = f"{old}\n\n{thinking}" if old else thinking
    if tool_calls:
        message["tool_calls"] = tool_calls
        for call in calls:
            conv.messages.append(
                {"role": "tool", "tool_call_id": call["tool_use_id"], "name": call["name"],
                 "content": call["result_text"] or ""}
            )


def strip_tools(conv: Conversation, skip: set[str]) -> int:
    """Remove calls to skip-listed tools and their results; returns how many were removed."""
    if not skip or not any(name in skip for name, _ in conv.calls):
        return 0
    removed_ids: set[str] = set()
    kept: list[dict[str, Any]] = []
    for message in conv.messages:
        if message["role"] == "tool" and message["tool_call_id"] in removed_ids:
            continue
        if message.get("tool_calls"):
            calls = [c for c in message["tool_calls"] if c["function"]["name"] not in skip]
            removed_ids |= {c["id"] for c in message["tool_calls"]} - {c["id"] for c in calls}
            message = {k: v for k, v in message.items() if k != "tool_calls"}
            if calls:
                message["tool_calls"] = calls
            elif not (message.get("content") or "").strip():
                continue  # nothing left but (maybe) thinking about the skipped call
        kept.append(message)
    conv.messages = kept
    before = len(conv.calls)
    conv.calls = [(n, a) for n, a in conv.calls if n not in skip]
    conv.tool_names = [n for n in conv.tool_names if n not in skip]
    return before - len(conv.calls)


def dominant_category(conv: Conversation) -> str:
    """The row's most used call category (ties by name); "text" for tool-free rows."""
    counts: dict[str, int] = defaultdict(int)
    for name, args in conv.calls:
        counts[call_category(name, args)] += 1
    if not counts:
        return "text"
    return min(counts, key=lambda c: (-counts[c], c))


def conversation_text(messages: list[dict[str, Any]]) -> str:
    """Everything a row says, as one string: for secret scans, token checks and dedupe."""
    parts: list[str] = []
    for message in messages:
        for key in ("content", "reasoning_content"):
            value = message.get(key)
            if isinstance(value, str) and value:
                parts.append(value)
        for call in message.get("tool_calls") or []:
            parts.append(call["function"]["name"])
            parts.append(_flatten(call["function"]["arguments"]))
    return "\n".join(parts)


def _flatten(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        return "\n".join(f"{k}\n{_flatten(v)}" for k, v in sorted(value.items()))
    if isinstance(value, list):
        return "\n".join(_flatten(v) for v in value)
    return str(value)
