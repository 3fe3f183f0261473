"""Tasks as conversations in the OpenAI/TRL shape, built once (by score) for every export.

A task's conversation is its prompt (collect's cleaned prompt text, wrappers stripped),
then the agent's assistant messages with ``tool_calls[].function{name, arguments}``
(arguments a JSON object) each followed by ``tool`` messages carrying the results, with
thinking as ``reasoning_content``. Only the active branch is followed: an edited or
retried child that was abandoned, and everything under it, is left out (unless it is the
task's own prompt, which makes the whole task the abandoned side of a branch).
Earlier tasks of the session are not included: their turns were scored separately and
must not ride along as training context.

Score stores each conversation as two canonical JSON strings (``prompt``: the prompt
message, ``completion``: everything after it) plus the row features every export filters
on. Exports only re-derive features for rows they change (skip-listed tools removed,
thinking dropped): :func:`features` is the one definition both paths use.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from pipeline.core.imports import LazyModule
from pipeline.export.tools import (
    call_category,
    call_stats,
    key_args,
    missing_required,
    parse_args,
)

if TYPE_CHECKING:
    import polars as pl
else:
    pl = LazyModule("polars")

COPIED_CONTEXT_PREFIXES = (
    "This session is being continued from a previous conversation",
    "Please continue the conversation from where we left",
)


def is_copied_context(text: str | None) -> bool:
    return bool(text) and text.lstrip().startswith(COPIED_CONTEXT_PREFIXES)  # type: ignore[union-attr]


def dumps_bytes(obj: Any) -> bytes:
    return orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)


def join_messages(prompt_json: str, completion_json: str) -> str:
    """The JSON of prompt + completion from their two JSON arrays, without re-encoding.

    Equal to ``dumps(prompt + completion)``: both halves are compact sorted-key arrays.
    """
    if completion_json == "[]":
        return prompt_json
    if prompt_json == "[]":
        return completion_json
    return f"{prompt_json[:-1]},{completion_json[1:]}"


@dataclass
class Built:
    """One task's conversation as the builder saw it (before any export transform)."""

    task_id: str
    messages: list[dict[str, Any]]
    copied_context: bool
    truncated_args: bool
    call_ids: list[int] = field(default_factory=list)  # rows of the calls frame, in order


def _inactive_children(branches: pl.DataFrame | None) -> set[tuple[str, str]]:
    if branches is None or branches.height == 0:
        return set()
    dead = branches.filter(~pl.col("is_active") & pl.col("kind").is_in(["edit", "retry"]))
    return set(dead.select("session_id", "child_message_id").iter_rows())


def build_conversations(
    tasks: pl.DataFrame,
    messages: pl.DataFrame,
    calls: pl.DataFrame,
    branches: pl.DataFrame | None = None,
    parsed_args: list[dict[str, Any]] | None = None,
) -> list[Built]:
    """Every task's conversation, in (session_id, prompt_number) order.

    ``calls`` must carry ``task_id`` and ``is_main`` (tasks.assemble) in its
    canonical order; ``parsed_args`` (aligned with ``calls``) saves a second parse.
    Column lists rather than per-row dicts: this runs over every message of the lake.
    """
    args_all = parsed_args if parsed_args is not None else [parse_args(s) for s in calls["input_json"].to_list()]
    c_session, c_message = calls["session_id"].to_list(), calls["message_id"].to_list()
    c_main, c_task = calls["is_main"].to_list(), calls["task_id"].to_list()
    c_id, c_name = calls["tool_use_id"].to_list(), calls["name"].to_list()
    c_trunc, c_result = calls["input_truncated_bytes"].to_list(), calls["result_text"].to_list()
    by_message: dict[tuple[str, str], list[int]] = defaultdict(list)
    for i in range(len(c_id)):
        if c_main[i] and c_task[i] is not None:
            by_message[(c_session[i], c_message[i])].append(i)

    msgs = messages.filter(pl.col("task_id").is_not_null()).sort("session_id", "seq")
    m_task, m_id = msgs["task_id"].to_list(), msgs["message_id"].to_list()
    m_seq, m_parent = msgs["seq"].to_list(), msgs["parent_id"].to_list()
    m_role, m_side = msgs["role"].to_list(), msgs["is_sidechain"].to_list()
    m_text, m_think = msgs["text"].to_list(), msgs["thinking"].to_list()
    m_compact, m_session = msgs["is_compact_summary"].to_list(), msgs["session_id"].to_list()
    spans: dict[str, tuple[int, int]] = {}
    start = 0
    for i in range(1, len(m_task) + 1):
        if i == len(m_task) or m_task[i] != m_task[start]:
            spans.setdefault(m_task[start], (start, i))
            start = i

    dead = _inactive_children(branches)
    out: list[Built] = []
    ordered = tasks.sort("session_id", "prompt_number")
    for task_id, session_id, prompt_text, seq_start in ordered.select(
        "task_id", "session_id", "prompt_text", "seq_start"
    ).iter_rows():
        built = Built(task_id, [{"role": "user", "content": prompt_text}],
                      is_copied_context(prompt_text), False)
        lo, hi = spans.get(task_id, (0, 0))
        excluded: set[str] = set()
        for j in range(lo, hi):
            message_id = m_id[j]
            if m_seq[j] <= seq_start:
                continue
            if (session_id, message_id) in dead or m_parent[j] in excluded:
                excluded.add(message_id)
                continue
            if m_compact[j] or is_copied_context(m_text[j]):
                built.copied_context = True
                continue
            if m_role[j] != "assistant" or m_side[j]:
                continue
            idx = by_message.get((m_session[j], message_id), ())
            calls_here = [(c_id[k], c_name[k], args_all[k], c_result[k]) for k in idx]
            if any(c_trunc[k] for k in idx):
                built.truncated_args = True
            built.call_ids.extend(idx)
            _add_assistant(built.messages, m_text[j] or "", m_think[j] or "", calls_here)
        out.append(built)
    return out


def _add_assistant(
    messages: list[dict[str, Any]], text: str, thinking: str,
    calls: list[tuple[str, str, dict[str, Any], str | None]],
) -> None:
    if not text.strip() and not thinking.strip() and not calls:
        return
    prev = messages[-1]
    if prev["role"] == "assistant" and not prev.get("tool_calls"):
        # One API turn split over several rows (reasoning item, then text, then calls).
        message = prev
        if text:
            message["content"] = f"{message['content']}\n\n{text}" if message["content"] else text
    else:
        message = {"role": "assistant", "content": text}
        messages.append(message)
    if thinking.strip():
        old = message.get("reasoning_content")
        message["reasoning_content"] = f"{old}\n\n{thinking}" if old else thinking
    if calls:
        message["tool_calls"] = [
            {"id": cid, "type": "function", "function": {"name": name, "arguments": args}}
            for cid, name, args, _ in calls
        ]
        for cid, name, _, result in calls:
            messages.append({"role": "tool", "tool_call_id": cid, "name": name, "content": result or ""})


# --- export transforms (each only ever removes content) ---------------------------------


def drop_thinking(messages: list[dict[str, Any]]) -> bool:
    """Remove reasoning_content in place; True when anything was removed."""
    changed = False
    for message in messages:
        if message.pop("reasoning_content", None) is not None:
            changed = True
    return changed


# What the turns around a skip-listed call talk about, per tool: "I'll add these to the
# todo list", "Exiting plan mode". Such a turn left behind without its call teaches the
# model to talk about a tool it never calls. A tool not listed here is known by its name.
_SUBJECTS: dict[str, str] = {
    "TodoWrite": r"\bto-?dos?\b|\bto-?do (?:list|items?)\b",
    "TodoRead": r"\bto-?dos?\b|\bto-?do (?:list|items?)\b",
    "ExitPlanMode": r"\bplan mode\b",
    "EnterPlanMode": r"\bplan mode\b",
    "update_plan": r"\bplan (?:steps?|items?)\b|\bupdated? the plan\b",
    "TaskCreate": r"\btask list\b|\btask #?\d+\b",
    "TaskUpdate": r"\btask list\b|\btask #?\d+\b",
    "TaskList": r"\btask list\b|\btask #?\d+\b",
    "TaskGet": r"\btask list\b|\btask #?\d+\b",
}


def talks_about(messages: list[dict[str, Any]], tools: set[str]) -> bool:
    """Whether an assistant turn's text or reasoning mentions one of ``tools`` or what
    it does (``_SUBJECTS``)."""
    if not tools:
        return False
    pattern = re.compile("|".join(sorted({_SUBJECTS.get(t, rf"\b{re.escape(t)}\b") for t in tools}
                                         | {rf"\b{re.escape(t)}\b" for t in tools})), re.IGNORECASE)
    return any(
        isinstance(text, str) and pattern.search(text)
        for m in messages if m["role"] == "assistant"
        for text in (m.get("content"), m.get("reasoning_content"))
    )


def strip_tools(messages: list[dict[str, Any]], skip: set[str]) -> tuple[list[dict[str, Any]], int, set[str]]:
    """Messages without calls to skip-listed tools and their results; (messages, calls
    removed, the tools they were calls to)."""
    removed_ids: set[str] = set()
    removed_tools: set[str] = set()
    kept: list[dict[str, Any]] = []
    for message in messages:
        if message["role"] == "tool" and message["tool_call_id"] in removed_ids:
            continue
        if message.get("tool_calls"):
            calls = [c for c in message["tool_calls"] if c["function"]["name"] not in skip]
            removed_ids |= {c["id"] for c in message["tool_calls"]} - {c["id"] for c in calls}
            removed_tools |= {c["function"]["name"] for c in message["tool_calls"]} & skip
            message = {k: v for k, v in message.items() if k != "tool_calls"}
            if calls:
                message["tool_calls"] = calls
            elif not (message.get("content") or "").strip():
                continue  # nothing left but (maybe) thinking about the skipped call
        kept.append(message)
    return kept, len(removed_ids), removed_tools


def calls_of(messages: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    return [(c["function"]["name"], c["function"]["arguments"])
            for m in messages for c in (m.get("tool_calls") or [])]


# --- features ---------------------------------------------------------------------------


@dataclass
class CallFacts:
    """What the row features need from each call, computed once per call."""

    name: list[str]
    chars: list[int]  # longest string argument value
    repeated: list[int]  # most repeats of one line inside an argument value
    category: list[str]  # tool, or shell tool + first command token
    missing: list[bool]  # a required argument absent or empty
    steps: list[dict[str, Any]]  # RAG step: tool + key arguments
    touched: list[list[str]]  # files the call wrote

    @classmethod
    def of(cls, kinds: list[str], names: list[str], args: list[dict[str, Any]],
           required: dict[tuple[str, str], list[str]]) -> CallFacts:
        facts = cls([], [], [], [], [], [], [])
        memo: dict[tuple[str, str, int], tuple[Any, ...]] = {}  # shared parsed args: once each
        for kind, name, a in zip(kinds, names, args, strict=True):
            key = (kind, name, id(a))
            found = memo.get(key)
            if found is None:
                chars, repeated, touched = call_stats(name, a)
                found = memo[key] = (chars, repeated, call_category(name, a),
                                     missing_required(a, required.get((kind, name), [])),
                                     {"tool": name, "args": key_args(name, a)}, touched)
            facts.name.append(name)
            facts.chars.append(found[0])
            facts.repeated.append(found[1])
            facts.category.append(found[2])
            facts.missing.append(found[3])
            facts.steps.append(found[4])
            facts.touched.append(found[5])
        return facts


def features(messages: list[dict[str, Any]], source_kind: str,
             required: dict[tuple[str, str], list[str]]) -> dict[str, Any]:
    """Row features of a conversation an export changed (its calls re-derived)."""
    calls = calls_of(messages)
    facts = CallFacts.of([source_kind] * len(calls), [n for n, _ in calls], [a for _, a in calls], required)
    return features_of(messages, facts, range(len(calls)))


def features_of(messages: list[dict[str, Any]], facts: CallFacts, ids: Iterable[int]) -> dict[str, Any]:
    """Row features the exports filter, cap and describe on (see ConversationRow)."""
    ids = list(ids)
    names: list[str] = []
    counts: dict[str, int] = defaultdict(int)
    for k in ids:
        if facts.name[k] not in names:
            names.append(facts.name[k])
        counts[facts.category[k]] += 1
    last = messages[-1]
    final = (last.get("content") or "") if last["role"] == "assistant" and not last.get("tool_calls") else ""
    touched: list[str] = []
    for k in ids:
        for path in facts.touched[k]:
            if path not in touched:
                touched.append(path)
    return {
        "tool_names": names,
        "n_tool_calls": len(ids),
        "n_assistant_turns": sum(1 for m in messages if m["role"] == "assistant"),
        "has_thinking": any("reasoning_content" in m for m in messages),
        "final_answer": final,
        "max_arg_chars": max((facts.chars[k] for k in ids), default=0),
        "max_repeated_line": max((facts.repeated[k] for k in ids), default=0),
        "empty_args_tool": next((facts.name[k] for k in ids if facts.missing[k]), None),
        # The row's most used call category (ties by name); "text" for tool-free rows.
        "cap_category": min(counts, key=lambda c: (-counts[c], c)) if counts else "text",
        "steps": [facts.steps[k] for k in ids],
        "files_touched": touched,
    }


def conversation_text(messages: list[dict[str, Any]]) -> str:
    """Everything a row says, as one string: what dedupe compares."""
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
