"""Replaying recorded conversations against a model: the multi-turn eval.

The gate the reference fine-tune passed counted empty-argument calls on single prompts;
what broke in use was the loop after a tool result: the model called and called again
and never answered. So a recorded conversation is replayed two ways, with any
``Generate`` function (the real model in the eval stage, scripted text in the tests):

- **points**: at every recorded assistant step that follows a user message or a tool
  result, the model continues the recorded history (recorded tool results included)
  once. Against what the recorded agent did there: a call where it called (parse and
  schema rates), a text answer where it answered after a tool result, no call where
  it made none.
- **a rollout**: from the first user message the model runs on its own; each call it
  makes is answered with the next recorded tool result, in order (what the
  environment returned at that point of the recorded turn; a fixed note once they are
  used up), until it answers in text, repeats a call three times in a row, or is still
  calling when it reaches the step cap (the recorded turn's own steps plus a margin,
  so a faithful long turn is no loop) or outgrows the prompt budget. All but the
  first are loops.

A reply cut at the token budget is neither an answer nor a call. A point whose prompt
is longer than the budget is not asked (counted); neither is a rollout whose first
prompt is.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from pipeline.eval.metrics import CALL, Call, Generation, loops, parse

NO_RECORDED_RESULT = "(no recorded result: the recorded turn made no further call)"


class PromptTooLong(Exception):
    """The rendered prompt does not fit the generator's budget."""


@dataclass(frozen=True)
class Reply:
    text: str
    truncated: bool  # the token budget ended it, not the model


# A model: the history and the tools in, its next message out (plain text: a reply the
# model ended itself).
Generate = Callable[[Sequence[Mapping[str, Any]], list[dict[str, Any]] | None], "str | Reply"]


def _ask(generate: Generate, messages: Sequence[Mapping[str, Any]], tools: list[dict[str, Any]] | None
         ) -> Generation:
    reply = generate(messages, tools)
    if isinstance(reply, Reply):
        return parse(reply.text, reply.truncated)
    return parse(reply)


@dataclass(frozen=True)
class Point:
    """One recorded assistant step, continued by the model from the recorded history."""

    index: int  # of the recorded assistant message
    after: Literal["user", "tool"]
    recorded_called: bool
    recorded_answered: bool  # recorded text and no call
    generation: Generation


@dataclass
class Rollout:
    cap: int
    generations: list[Generation] = field(default_factory=list)
    calls: list[Call] = field(default_factory=list)
    results_fed: int = 0
    answered: bool = False
    looped: bool = False
    context_exhausted: bool = False
    first_is_point: bool = False  # its first prompt is a replay point's too (same reply)

    @property
    def steps(self) -> int:
        return len(self.generations)


@dataclass
class Replay:
    points: list[Point]
    points_too_long: int
    rollout: Rollout | None  # None: no user message to start from

    @property
    def prompts_too_long(self) -> int:
        rollout_unasked = self.rollout is not None and not self.rollout.generations
        return self.points_too_long + rollout_unasked


def _recorded_call(message: Mapping[str, Any]) -> bool:
    return bool(message.get("tool_calls"))


def _recorded_answer(message: Mapping[str, Any]) -> bool:
    content = message.get("content")
    return not _recorded_call(message) and isinstance(content, str) and bool(content.strip())


def replay_points(messages: Sequence[Mapping[str, Any]], tools: list[dict[str, Any]] | None,
                  generate: Generate) -> tuple[list[Point], int]:
    points, too_long = [], 0
    for index, message in enumerate(messages):
        if index == 0 or message.get("role") != "assistant":
            continue
        after = messages[index - 1].get("role")
        if after not in ("user", "tool"):
            continue
        try:
            generation = _ask(generate, messages[:index], tools)
        except PromptTooLong:
            too_long += 1
            continue
        points.append(Point(index, after, _recorded_call(message), _recorded_answer(message), generation))
    return points, too_long


def assistant_message(generation: Generation, step: int) -> dict[str, Any]:
    """The model's step as a message the template renders back: its text without the
    call blocks, and its calls."""
    text = CALL.sub("", generation.text).strip()
    calls = [{"id": f"call_{step}_{n}", "type": "function",
              "function": {"name": call.name, "arguments": call.arguments}}
             for n, call in enumerate(generation.calls)]
    message: dict[str, Any] = {"role": "assistant", "content": text}
    if calls:
        message["tool_calls"] = calls
    return message


def recorded_steps(messages: Sequence[Mapping[str, Any]]) -> int:
    """The assistant steps of the recorded turn after the first user message."""
    first_user = next((i for i, m in enumerate(messages) if m.get("role") == "user"), len(messages))
    return sum(m.get("role") == "assistant" for m in messages[first_user + 1:])


def rollout(messages: Sequence[Mapping[str, Any]], tools: list[dict[str, Any]] | None, generate: Generate,
            step_margin: int, loop_repeats: int = 3) -> Rollout | None:
    first_user = next((i for i, m in enumerate(messages) if m.get("role") == "user"), None)
    if first_user is None:
        return None
    context = [dict(m) for m in messages[:first_user + 1]]
    results = [m.get("content") for m in messages[first_user + 1:] if m.get("role") == "tool"]
    run = Rollout(cap=recorded_steps(messages) + step_margin)
    while run.steps < run.cap:
        try:
            generation = _ask(generate, context, tools)
        except PromptTooLong:  # still calling when the context ran out: no answer in sight
            run.context_exhausted = True
            run.looped = bool(run.generations)
            return run
        run.generations.append(generation)
        if not generation.calls:  # an answer, or nothing usable: the turn ends either way
            run.answered = generation.answered_in_text
            return run
        run.calls.extend(generation.calls)
        if loops(run.calls, loop_repeats):
            run.looped = True
            return run
        step = run.steps
        context.append(assistant_message(generation, step))
        for n, call in enumerate(generation.calls):
            result = results[run.results_fed] if run.results_fed < len(results) else NO_RECORDED_RESULT
            run.results_fed += 1
            content = result if isinstance(result, str) else json.dumps(result, ensure_ascii=False)
            context.append({"role": "tool", "name": call.name, "tool_call_id": f"call_{step}_{n}",
                            "content": content})
    run.looped = True  # the step cap reached while still calling
    return run


def replay(messages: Sequence[Mapping[str, Any]], tools: list[dict[str, Any]] | None, generate: Generate,
           step_margin: int) -> Replay:
    points, too_long = replay_points(messages, tools, generate)
    run = rollout(messages, tools, generate, step_margin)
    if run is not None:
        first_user = next(i for i, m in enumerate(messages) if m.get("role") == "user")
        run.first_is_point = any(p.index == first_user + 1 for p in points)
    return Replay(points, too_long, run)
