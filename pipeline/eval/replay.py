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
  used up), until it answers in text, repeats a call three times in a row, or reaches
  the step cap. The last two are loops.

A prompt longer than the model's budget is no point (counted); a rollout whose context
outgrows it ends there, neither answered nor looped.
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


Generate = Callable[[Sequence[Mapping[str, Any]], list[dict[str, Any]] | None], str]


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
    generations: list[Generation] = field(default_factory=list)
    calls: list[Call] = field(default_factory=list)
    results_fed: int = 0
    answered: bool = False
    looped: bool = False
    context_exhausted: bool = False

    @property
    def steps(self) -> int:
        return len(self.generations)


@dataclass
class Replay:
    points: list[Point]
    points_too_long: int
    rollout: Rollout | None  # None: not even the first prompt fits


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
            text = generate(messages[:index], tools)
        except PromptTooLong:
            too_long += 1
            continue
        points.append(Point(index, after, _recorded_call(message), _recorded_answer(message), parse(text)))
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


def rollout(messages: Sequence[Mapping[str, Any]], tools: list[dict[str, Any]] | None, generate: Generate,
            step_cap: int, loop_repeats: int = 3) -> Rollout | None:
    first_user = next((i for i, m in enumerate(messages) if m.get("role") == "user"), None)
    if first_user is None:
        return None
    context = [dict(m) for m in messages[:first_user + 1]]
    results = [m.get("content") for m in messages[first_user + 1:] if m.get("role") == "tool"]
    run = Rollout()
    while run.steps < step_cap:
        try:
            text = generate(context, tools)
        except PromptTooLong:
            if not run.generations:
                return None
            run.context_exhausted = True
            return run
        generation = parse(text)
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
           step_cap: int) -> Replay:
    points, too_long = replay_points(messages, tools, generate)
    return Replay(points, too_long, rollout(messages, tools, generate, step_cap))
