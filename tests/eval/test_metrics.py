"""Tool-calling metrics on scripted generations whose right answers are known."""

from __future__ import annotations

from pipeline.eval.metrics import (
    Call,
    SingleTurn,
    empty_arguments,
    loops,
    parse,
    repeats_a_line,
    schema_valid,
)

SCHEMAS = {"Read": {"type": "function", "function": {"name": "Read", "parameters": {
    "type": "object", "properties": {"file_path": {"type": "string"}, "limit": {"type": "integer"}},
    "required": ["file_path"]}}}}


def test_calls_parse_and_failures_are_counted() -> None:
    good = parse('Let me look.\n<tool_call>\n{"name": "Read", "arguments": {"file_path": "a.py"}}\n</tool_call>')
    assert good.calls == [Call("Read", {"file_path": "a.py"})] and good.parse_failures == 0
    assert not good.text_after_call and not good.answered_in_text
    as_string = parse('<tool_call>{"name": "Read", "arguments": "{\\"file_path\\": \\"b\\"}"}</tool_call>')
    assert as_string.calls == [Call("Read", {"file_path": "b"})]
    broken = parse('<tool_call>{"name": "Read", "arguments": {"file_path": }</tool_call>')
    unclosed = parse('<tool_call>{"name": "Read", "arguments": {}}')
    nameless = parse('<tool_call>{"arguments": {}}</tool_call>')
    assert (broken.parse_failures, unclosed.parse_failures, nameless.parse_failures) == (1, 1, 1)
    after = parse('<tool_call>{"name": "Read", "arguments": {"file_path": "a"}}</tool_call>\nDone!')
    assert after.text_after_call
    assert parse("The answer is 4.").answered_in_text


def test_schema_validity_and_empty_arguments() -> None:
    assert schema_valid(Call("Read", {"file_path": "a.py", "limit": 5}), SCHEMAS)
    assert not schema_valid(Call("Read", {"file_path": 3}), SCHEMAS)  # wrong type
    assert not schema_valid(Call("Write", {"file_path": "a"}), SCHEMAS)  # no such tool
    assert empty_arguments(Call("Read", {}), SCHEMAS) and empty_arguments(Call("Read", {"file_path": ""}), SCHEMAS)
    assert not empty_arguments(Call("Read", {"file_path": "a"}), SCHEMAS)


def test_loops_and_repeated_lines() -> None:
    same = Call("Read", {"file_path": "a", "limit": 1})
    reordered = Call("Read", {"limit": 1, "file_path": "a"})  # canonical arguments: the same call
    other = Call("Read", {"file_path": "b"})
    assert loops([same, reordered, same]) and not loops([same, other, same, other])
    assert not loops([same, same])
    assert repeats_a_line(Call("Write", {"content": "x = 1\n" * 4})) and not repeats_a_line(
        Call("Write", {"content": "x = 1\n" * 3}))


def test_single_turn_rates() -> None:
    rates = SingleTurn()
    for text in ('<tool_call>{"name": "Read", "arguments": {"file_path": "a"}}</tool_call>',
                 '<tool_call>{"name": "Read", "arguments": {}}</tool_call>',
                 '<tool_call>{"name": "Read", "arguments": {</tool_call>',
                 "I cannot call a tool for that."):
        rates.add(parse(text), SCHEMAS)
    assert rates.rates() == {"parse_rate": round(2 / 3, 6), "schema_valid_rate": 0.5, "empty_argument_calls": 1}
