"""Tool-calling metrics over generated text: the measures the eval stage will report.

A generation is parsed the way Qwen-family templates write calls,
``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``. The measures:

- a call that does not parse (bad JSON, no name, an unclosed tag) is a parse failure;
- a call is schema-valid when its tool exists and its arguments validate (jsonschema)
  against the tool's parameters;
- an empty-argument emission is a call missing an argument its schema requires (the
  symptom the reference fine-tune's gate counted);
- a loop is the same call (name and canonical arguments) three times in a row;
- in-argument repetition is one line repeated more than three times inside a string
  argument;
- text after a closed call is anything but whitespace after the last ``</tool_call>``.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

OPEN, CLOSE = "<tool_call>", "</tool_call>"
CALL = re.compile(re.escape(OPEN) + r"(.*?)" + re.escape(CLOSE), re.DOTALL)
LOOP_REPEATS = 3
LINE_REPEATS = 3


@dataclass(frozen=True)
class Call:
    name: str
    arguments: dict[str, Any]

    @property
    def key(self) -> tuple[str, str]:
        """Name and canonical arguments: what "the same call" means."""
        return self.name, json.dumps(self.arguments, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


@dataclass
class Generation:
    text: str
    calls: list[Call] = field(default_factory=list)
    parse_failures: int = 0
    text_after_call: bool = False
    truncated: bool = False  # cut at the token budget, not ended by the model

    @property
    def answered_in_text(self) -> bool:
        """A text answer: something said, no call attempted, and ended by the model (a
        reply cut at the budget, inside its thinking say, is no answer)."""
        return bool(self.text.strip()) and not self.calls and not self.parse_failures and not self.truncated


def parse(text: str, truncated: bool = False) -> Generation:
    generation = Generation(text, truncated=truncated)
    for match in CALL.finditer(text):
        try:
            payload = json.loads(match.group(1))
        except ValueError:
            generation.parse_failures += 1
            continue
        name = payload.get("name") if isinstance(payload, dict) else None
        arguments = payload.get("arguments", {}) if isinstance(payload, dict) else None
        if isinstance(arguments, str):  # some models emit the arguments as a JSON string
            try:
                arguments = json.loads(arguments)
            except ValueError:
                arguments = None
        if not isinstance(name, str) or not name or not isinstance(arguments, dict):
            generation.parse_failures += 1
            continue
        generation.calls.append(Call(name, arguments))
    closed = text.count(CLOSE)
    generation.parse_failures += max(0, text.count(OPEN) - closed)  # an unclosed call
    if closed:
        generation.text_after_call = bool(text[text.rindex(CLOSE) + len(CLOSE):].strip())
    return generation


def _parameters(schemas: Mapping[str, Mapping[str, Any]], name: str) -> Mapping[str, Any] | None:
    schema = schemas.get(name)
    if schema is None:
        return None
    function = schema.get("function", schema)
    parameters = function.get("parameters") if isinstance(function, Mapping) else None
    return parameters if isinstance(parameters, Mapping) else {"type": "object"}


def schema_valid(call: Call, schemas: Mapping[str, Mapping[str, Any]]) -> bool:
    """``schemas``: tool name -> OpenAI function schema (or its ``function`` part)."""
    import jsonschema

    parameters = _parameters(schemas, call.name)
    if parameters is None:
        return False
    try:
        jsonschema.validate(call.arguments, dict(parameters))
    except jsonschema.ValidationError:
        return False
    except jsonschema.SchemaError:
        return False
    return True


def empty_arguments(call: Call, schemas: Mapping[str, Mapping[str, Any]]) -> bool:
    """A required argument missing, or given empty."""
    parameters = _parameters(schemas, call.name)
    required = parameters.get("required", []) if parameters is not None else []
    return any(call.arguments.get(name) in (None, "", [], {}) for name in required if isinstance(name, str))


def loops(calls: Sequence[Call], repeats: int = LOOP_REPEATS) -> bool:
    """The same call ``repeats`` times in a row."""
    run = 1
    for previous, current in zip(calls, calls[1:], strict=False):
        run = run + 1 if current.key == previous.key else 1
        if run >= repeats:
            return True
    return False


def repeats_a_line(call: Call, limit: int = LINE_REPEATS) -> bool:
    """A line repeated more than ``limit`` times inside one string argument."""
    def strings(value: Any) -> list[str]:
        if isinstance(value, str):
            return [value]
        if isinstance(value, Mapping):
            return [s for v in value.values() for s in strings(v)]
        if isinstance(value, list):
            return [s for v in value for s in strings(v)]
        return []

    for text in strings(call.arguments):
        counts = Counter(line.strip() for line in text.splitlines() if line.strip())
        if counts and max(counts.values()) > limit:
            return True
    return False


@dataclass
class SingleTurn:
    """Rates over a set of generations that were expected to call a tool."""

    generations: int = 0
    attempted: int = 0
    parsed: int = 0
    schema_valid: int = 0
    empty_argument_calls: int = 0

    def add(self, generation: Generation, schemas: Mapping[str, Mapping[str, Any]]) -> None:
        self.generations += 1
        if generation.calls or generation.parse_failures:
            self.attempted += 1
            self.parsed += not generation.parse_failures
        self.schema_valid += sum(schema_valid(c, schemas) for c in generation.calls)
        self.empty_argument_calls += sum(empty_arguments(c, schemas) for c in generation.calls)

    def rates(self) -> dict[str, float | int]:
        calls = max(1, self.parsed)
        return {
            "parse_rate": round(self.parsed / self.attempted, 6) if self.attempted else 0.0,
            "schema_valid_rate": round(self.schema_valid / calls, 6) if self.parsed else 0.0,
            "empty_argument_calls": self.empty_argument_calls,
        }
