"""SDPO hint-distillation rows: a teacher that saw a hint, a student that did not, the
same recovery tokens aligned position for position.

An error site is a tool result whose call carries the structural ``is_error`` flag
(collect's ``tool_calls``, never a string match on the text), followed by the agent's
next assistant turn before any human message: the recovery. The student is the trace up
to and including the recovery. The teacher is the same context with a hint for the
error's kind inserted after the tool results (as a user or system message), rendered
with the generation prompt, followed by the student's recovery ids. The teacher is then
rendered again with the recovery message, and its recovery tokens must equal the
student's exactly: anything less is a template-drift bug, and the row is refused.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pipeline.collate.masks import IGNORE, Refused, Renderer, mask_conversation

ERROR_KINDS = ("command_not_found", "file_not_found", "permission_denied", "syntax_error",
               "connection_error", "tool_error")
DEFAULT_HINTS: dict[str, str] = {
    "command_not_found": "That command does not exist here. Check what is installed (or how the project "
                         "runs its tools) instead of calling it again.",
    "file_not_found": "That path does not exist. List the folder or search for the file before reading "
                      "or editing it.",
    "permission_denied": "Permission was denied. Do not repeat the same action: check the permissions or "
                         "work somewhere you may write.",
    "syntax_error": "The code or command has a syntax error. Read the line and column the error names and "
                    "fix the syntax before running it again.",
    "connection_error": "The connection failed. Check the host, the port and whether the service is up "
                        "before retrying.",
    "tool_error": "The tool call failed. Read the error message and change the approach rather than "
                  "repeating the same call.",
}
# Tool output that looks like a failure without the structural flag: counted (so the
# yield shows how many a string match would have taken), never used.
STRING_ONLY_MARKERS = ("error:", "traceback (most recent call last)", "<tool_use_error>", "command not found",
                       "no such file or directory", "permission denied")


@dataclass(frozen=True)
class Site:
    failing: int  # index of the failing tool result
    recovery: int  # index of the assistant turn that answers it
    error_kind: str


@dataclass
class Yield:
    sites: list[Site]
    empty_recoveries: int
    string_only: int


def find_sites(messages: Sequence[Mapping[str, Any]], errors: Mapping[str, str], strip_thinking: bool) -> Yield:
    """``errors``: tool call id -> error kind, for the calls flagged ``is_error``. One
    site per recovery turn (several failing results before one answer are one site,
    named by the first)."""
    sites: list[Site] = []
    empty = string_only = 0
    answered: set[int] = set()
    for index, message in enumerate(messages):
        if message.get("role") != "tool":
            continue
        kind = errors.get(str(message.get("tool_call_id")))
        if kind is None:
            text = str(message.get("content") or "").lower()
            string_only += any(marker in text for marker in STRING_ONLY_MARKERS)
            continue
        recovery = next((j for j in range(index + 1, len(messages)) if messages[j].get("role") != "tool"), None)
        if recovery is None or messages[recovery].get("role") != "assistant" or recovery in answered:
            continue  # the trace ends, or a human spoke first: no recovery of the agent's own
        answered.add(recovery)
        if _empty(messages[recovery], strip_thinking):
            empty += 1
            continue
        sites.append(Site(index, recovery, kind if kind in ERROR_KINDS else "tool_error"))
    return Yield(sites, empty, string_only)


def _empty(message: Mapping[str, Any], strip_thinking: bool) -> bool:
    content = message.get("content")
    visible = content.rsplit("</think>", 1)[-1] if isinstance(content, str) else ""
    if visible.strip() or message.get("tool_calls"):
        return False
    return strip_thinking or not str(message.get("reasoning_content") or "").strip()


def strip_thinking_from(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The assistant messages without their thinking (others untouched: a user may write
    ``</think>`` in a question)."""
    out = []
    for message in messages:
        if message.get("role") != "assistant":
            out.append(dict(message))
            continue
        kept = {k: v for k, v in message.items() if k != "reasoning_content"}
        if isinstance(kept.get("content"), str) and "</think>" in kept["content"]:
            kept["content"] = kept["content"].rsplit("</think>", 1)[-1].lstrip()
        out.append(kept)
    return out


def sdpo_row(renderer: Renderer, messages: Sequence[Mapping[str, Any]], tools: list[dict[str, Any]] | None,
             site: Site, hint: str, hint_role: Literal["user", "system"], max_length: int) -> dict[str, Any]:
    student = list(messages[: site.recovery + 1])
    masked = mask_conversation(renderer, student, tools, train_from=site.recovery)
    teacher = [*messages[: site.recovery], {"role": hint_role, "content": hint}, messages[site.recovery]]
    teacher_masked = mask_conversation(renderer, teacher, tools, train_from=site.recovery + 1)
    # The teacher's context is the student's, then the hint: a template that re-renders
    # history once another message follows (stock Qwen3 drops old thinking) fails here.
    context = renderer.text(messages[: site.recovery], tools, False)
    context_ids, _ = renderer.encode(context)
    shared = len(context_ids)
    if masked.input_ids[:shared] != context_ids or teacher_masked.input_ids[:shared] != context_ids:
        raise Refused("sdpo_context_differs", "the teacher's context is not the student's followed by the hint")
    student_idx = [k for k, label in enumerate(masked.labels) if label != IGNORE]
    teacher_idx = [k for k, label in enumerate(teacher_masked.labels) if label != IGNORE]
    recovery = [masked.input_ids[k] for k in student_idx]
    if [teacher_masked.input_ids[k] for k in teacher_idx] != recovery:
        raise Refused("sdpo_misaligned", f"teacher and student recovery ids differ ({len(teacher_idx)} vs "
                                         f"{len(student_idx)} tokens)")
    if max(len(masked.input_ids), teacher_idx[-1] + 1) > max_length:
        raise Refused("too_long", f"the site's trace exceeds {max_length} tokens")
    return {
        "student_input_ids": masked.input_ids,
        "teacher_input_ids": teacher_masked.input_ids[: teacher_idx[-1] + 1],
        "sdpo_loss_mask": [int(label != IGNORE) for label in masked.labels],
        "student_response_idx": student_idx,
        "teacher_response_idx": teacher_idx,
        "error_kind": site.error_kind,
        "hint": hint,
    }
