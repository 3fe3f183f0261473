"""The multi-turn replay and its scorecard, driven by scripted models whose right
answers are known: one that answers after a tool result, one that loops, one that
never stops calling, one that calls where the recorded agent did not."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.eval.replay import NO_RECORDED_RESULT, PromptTooLong, Reply, replay, rollout
from pipeline.eval.scorecard import (
    METRIC_NAMES,
    Tally,
    gate_failures,
    markdown,
    schemas_of,
    scorecard,
)

TOOLS = [{"type": "function", "function": {"name": "Bash", "parameters": {
    "type": "object", "properties": {"command": {"type": "string"}}, "required": ["command"]}}}]


def call(command: str, name: str = "Bash") -> str:
    return f'<tool_call>\n{json.dumps({"name": name, "arguments": {"command": command}})}\n</tool_call>'


def recorded(*steps: str) -> list[dict[str, Any]]:
    """A recorded task: the user asks, the agent runs ``steps`` (each answered by the
    tool with ``out:<command>``), then answers."""
    messages: list[dict[str, Any]] = [{"role": "user", "content": "fix the build"}]
    for n, command in enumerate(steps):
        messages.append({"role": "assistant", "content": "", "tool_calls": [
            {"id": f"t{n}", "type": "function", "function": {"name": "Bash", "arguments": {"command": command}}}]})
        messages.append({"role": "tool", "name": "Bash", "tool_call_id": f"t{n}", "content": f"out:{command}"})
    messages.append({"role": "assistant", "content": "Fixed: the import was missing."})
    return messages


Model = Any


def good_agent(messages: Sequence[Mapping[str, Any]], tools: Any) -> str:
    """Calls make, then answers once it has seen a tool result."""
    if messages[-1]["role"] == "tool":
        return "The build passes now."
    return call("make")


def looping_agent(messages: Sequence[Mapping[str, Any]], tools: Any) -> str:
    return call("make")


def restless_agent(messages: Sequence[Mapping[str, Any]], tools: Any) -> str:
    """Never answers, never repeats itself: only the step cap stops it."""
    return call(f"ls {len(messages)}")


def test_a_good_agent_answers_after_the_tool_result() -> None:
    done = replay(recorded("make"), TOOLS, good_agent, step_margin=4)
    assert [(p.index, p.after, p.recorded_called) for p in done.points] == [(1, "user", True), (3, "tool", False)]
    run = done.rollout
    assert run is not None and run.answered and not run.looped and run.steps == 2 and run.results_fed == 1


def test_the_rollout_feeds_recorded_results_in_order_then_a_note() -> None:
    seen: list[str] = []

    def agent(messages: Sequence[Mapping[str, Any]], tools: Any) -> str:
        if messages[-1]["role"] == "tool":
            seen.append(messages[-1]["content"])
        return call(f"step {len(seen)}") if len(seen) < 3 else "done"

    run = rollout(recorded("make", "make test"), TOOLS, agent, step_margin=8)
    assert seen == ["out:make", "out:make test", NO_RECORDED_RESULT]
    assert run is not None and run.answered and run.results_fed == 3


def test_three_identical_calls_are_a_loop_and_so_is_the_step_cap() -> None:
    looped = replay(recorded("make"), TOOLS, looping_agent, step_margin=10).rollout
    assert looped is not None and looped.looped and looped.steps == 3 and not looped.answered
    capped = replay(recorded("make"), TOOLS, restless_agent, step_margin=3).rollout  # 2 recorded steps + 3
    assert capped is not None and capped.looped and capped.steps == 5 and len({c.key for c in capped.calls}) == 5


def test_the_cap_follows_the_recorded_turn_so_a_faithful_long_turn_is_no_loop() -> None:
    steps = [f"step {n}" for n in range(8)]

    def faithful(messages: Sequence[Mapping[str, Any]], tools: Any) -> str:
        done = sum(m["role"] == "tool" for m in messages)
        return call(steps[done]) if done < len(steps) else "All eight steps done."

    run = replay(recorded(*steps), TOOLS, faithful, step_margin=1).rollout
    assert run is not None and run.answered and not run.looped and run.steps == 9 and run.cap == 10


def test_a_prompt_that_does_not_fit_is_counted_not_asked() -> None:
    def short_memory(messages: Sequence[Mapping[str, Any]], tools: Any) -> str:
        if len(messages) > 2:
            raise PromptTooLong("too long")
        return call("make")

    done = replay(recorded("make", "make test"), TOOLS, short_memory, step_margin=6)
    assert [p.index for p in done.points] == [1] and done.points_too_long == 2 and done.prompts_too_long == 2
    run = done.rollout
    assert run is not None and run.context_exhausted and run.steps == 1
    assert run.looped and not run.answered  # still calling when the context ran out: no answer in sight


def test_a_reply_cut_at_the_budget_is_no_answer() -> None:
    def rambling(messages: Sequence[Mapping[str, Any]], tools: Any) -> Reply:
        if messages[-1]["role"] == "tool":
            return Reply("<think>Let me consider the build output carefully and", truncated=True)
        return Reply(call("make"), truncated=False)

    rows = {r["metric"]: r for r in scorecard(tally(good_agent), tally(rambling), {"text_answer_rate": 0.0})}
    assert rows["text_answer_rate"]["adapter"] == 0.0 and rows["rollout_answer_rate"]["adapter"] == 0.0
    assert rows["truncated_rate"]["adapter"] > 0 and rows["truncated_rate"]["base"] == 0.0
    assert rows["text_answer_rate"]["passed"] is False


def test_the_withdrawn_fine_tune_fails_even_when_its_context_runs_out_first() -> None:
    """A model that keeps calling until the prompt budget is full never reaches the step
    cap; it must still count as a loop, and a gate that cannot be judged must fail."""
    def budget(agent: Model) -> Model:
        def limited(messages: Sequence[Mapping[str, Any]], tools: Any) -> Any:
            if len(messages) > 4:
                raise PromptTooLong("budget")
            return agent(messages, tools)

        return limited

    rows = scorecard(tally(budget(good_agent)), tally(budget(restless_agent)),
                     {"loop_rate": 0.0, "text_answer_rate": 0.0})
    by = {r["metric"]: r for r in rows}
    assert by["loop_rate"]["adapter"] == 1.0 and by["loop_rate"]["passed"] is False
    failures = gate_failures(rows, adapter=True)
    assert any("loop_rate" in f and "fails" in f for f in failures)


def test_a_gate_with_nothing_to_count_fails_when_there_is_an_adapter() -> None:
    def chatty(messages: Sequence[Mapping[str, Any]], tools: Any) -> str:
        return "I would run make."

    rows = scorecard(tally(chatty), tally(chatty), {"call_parse_rate": 0.0})
    (failure,) = gate_failures(rows, adapter=True)
    assert "call_parse_rate: not judged" in failure
    assert gate_failures(scorecard(tally(chatty), None, {"call_parse_rate": 0.0}), adapter=False) == []


def test_a_rollout_reply_that_is_also_a_point_is_counted_once() -> None:
    def sloppy_once(messages: Sequence[Mapping[str, Any]], tools: Any) -> str:
        return call("echo hi\n" * 5) if messages[-1]["role"] == "user" else "done"

    result = tally(sloppy_once, 1)
    assert result.counts["argument_repetition_rate"] == [1, 1]  # one prompt, one reply, one count


def tally(agent: Model, conversations: int = 3) -> Tally:
    result = Tally()
    for n in range(conversations):
        result.add(replay(recorded(*(f"step{n}-{i}" for i in range(n + 1))), TOOLS, agent, step_margin=4),
                   schemas_of(TOOLS))
    return result


def test_the_scorecard_measures_the_symptom_and_the_gate_catches_it() -> None:
    """The reference fine-tune's failure: it kept calling after tool results. Its
    single-turn calls are fine (parse, schema), so only the multi-turn measures and
    their gates see it."""
    base, tuned = tally(good_agent), tally(looping_agent)
    rows = {r["metric"]: r for r in scorecard(base, tuned, {"text_answer_rate": 0.0, "loop_rate": 0.0})}
    assert list(rows) == list(METRIC_NAMES)
    assert rows["call_parse_rate"]["adapter"] == 1.0 and rows["schema_valid_rate"]["adapter"] == 1.0
    assert rows["empty_argument_rate"]["adapter"] == 0.0
    assert rows["text_answer_rate"]["base"] == 1.0 and rows["text_answer_rate"]["adapter"] == 0.0
    assert rows["loop_rate"]["base"] == 0.0 and rows["loop_rate"]["adapter"] == 1.0
    assert rows["rollout_answer_rate"]["delta"] == -1.0
    assert rows["unrecorded_call_rate"]["adapter"] == 1.0  # called where the recorded agent answered
    assert rows["text_answer_rate"]["passed"] is False and rows["loop_rate"]["passed"] is False
    failures = gate_failures(list(rows.values()), adapter=True)
    assert len(failures) == 2 and "loop_rate" in failures[1]
    assert gate_failures(scorecard(base, tally(good_agent), {"loop_rate": 0.0}), adapter=True) == []


def test_a_gate_allows_its_tolerance_and_a_rate_over_nothing_is_not_judged() -> None:
    base, tuned = tally(good_agent, 4), tally(good_agent, 4)
    tuned.counts["text_answer_rate"] = [3, 4]  # 0.75 against 1.0
    strict = {r["metric"]: r for r in scorecard(base, tuned, {"text_answer_rate": 0.0})}
    loose = {r["metric"]: r for r in scorecard(base, tuned, {"text_answer_rate": 0.25})}
    assert strict["text_answer_rate"]["passed"] is False and loose["text_answer_rate"]["passed"] is True
    def chatty(messages: Sequence[Mapping[str, Any]], tools: Any) -> str:
        return "I would run make."  # never calls: no call to parse

    nothing = {r["metric"]: r for r in scorecard(tally(chatty), tally(chatty), {"call_parse_rate": 0.0})}
    assert nothing["call_parse_rate"]["base_n"] == 0
    assert nothing["call_parse_rate"]["base"] is None and nothing["call_parse_rate"]["passed"] is None
    assert nothing["call_rate"]["base"] == 0.0  # asked, and it did not call: a rate of 0, not nothing
    alone = {r["metric"]: r for r in scorecard(base, None, {"loop_rate": 0.0})}
    assert alone["loop_rate"]["adapter"] is None and alone["loop_rate"]["passed"] is None


def test_in_argument_repetition_and_text_after_a_call_are_counted() -> None:
    def sloppy(messages: Sequence[Mapping[str, Any]], tools: Any) -> str:
        if messages[-1]["role"] == "tool":
            return "ok"
        return call("echo hi\n" * 5) + "\nand then I will"

    rows = {r["metric"]: r for r in scorecard(tally(sloppy, 1), None, {})}
    assert rows["argument_repetition_rate"]["base"] == 1.0 and rows["text_after_call_rate"]["base"] == 1.0


def test_the_markdown_report_lists_every_measure_in_a_table_that_fits() -> None:
    rows = scorecard(tally(good_agent), tally(looping_agent), {"loop_rate": 0.0})
    text = markdown(rows, {"adapter": "sha256 abc"})
    table = [line for line in text.splitlines() if line.startswith("|")]
    assert len(table) == 2 + len(METRIC_NAMES) and max(map(len, table)) <= 80
    assert "FAIL: adapter <= base" in text


@settings(max_examples=40, deadline=None)
@given(st.lists(st.sampled_from(["call", "answer", "again", "junk"]), min_size=1, max_size=12),
       st.integers(1, 6))
def test_a_rollout_always_ends_one_way_within_its_cap(script: list[str], margin: int) -> None:
    """Whatever the model says, a rollout stops within the cap, ends answered, looped,
    or neither (a reply with no usable call), and every call before the last step was
    answered."""
    steps = iter(script * 20)

    def scripted(messages: Sequence[Mapping[str, Any]], tools: Any) -> str:
        move = next(steps)
        return {"call": call(f"c{len(messages)}"), "answer": "done", "again": call("same"),
                "junk": "<tool_call>{oops"}[move]

    run = replay(recorded("make"), TOOLS, scripted, step_margin=margin).rollout
    assert run is not None and 1 <= run.steps <= run.cap == 2 + margin
    assert not (run.answered and run.looped)
    assert len(run.calls) - len(run.generations[-1].calls) <= run.results_fed <= len(run.calls)
    ended_by_call = bool(run.generations[-1].calls)
    assert run.looped == ended_by_call


def test_unknown_gate_metrics_are_refused() -> None:
    from pydantic import ValidationError

    from pipeline.stages.eval import EvalConfig

    with pytest.raises(ValidationError, match="unknown metric 'loop'"):
        EvalConfig.model_validate({"gates": {"loop": 0.0}})
    for bad in (-0.1, float("nan"), float("inf")):
        with pytest.raises(ValidationError, match="finite amount >= 0"):
            EvalConfig.model_validate({"gates": {"loop_rate": bad}})
    with pytest.raises(ValidationError, match="held-out split"):
        EvalConfig.model_validate({"split": "train"})
    merged = EvalConfig.model_validate({"gates": {"call_parse_rate": 0.1}, "gates_off": ["loop_rate"]})
    assert merged.active_gates() == {"call_parse_rate": 0.1, "text_answer_rate": 0.0}  # defaults kept unless off
