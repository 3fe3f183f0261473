"""Type chaos: real record shapes with any field swapped for any JSON value.

Logs from unseen agent versions put unexpected types anywhere (a number where an id
was, a list for a string, null for an object). The parsers must never raise on them:
each line is mapped, counted or quarantined, and the tallies add up.
"""

from __future__ import annotations

import copy
import json
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.collect.shard import CollectSettings, Shard, parse_into

SETTINGS = CollectSettings(fold_home=True, max_line_bytes=4 << 20, max_input_bytes=64,
                           max_result_bytes=64, max_content_bytes=128)
SESSION = "5a1b2c3d-0000-4000-8000-00000000000f"

CLAUDE_TEMPLATES: list[dict[str, Any]] = [
    {"type": "user", "uuid": "u1", "parentUuid": None, "sessionId": SESSION, "timestamp": "2026-01-01T00:00:00Z",
     "cwd": "/home/ann/p", "gitBranch": "main", "version": "2.1.0", "isMeta": False, "isSidechain": False,
     "message": {"role": "user", "content": "fix /home/ann/p/a.py"}},
    {"type": "assistant", "uuid": "a1", "parentUuid": "u1", "sessionId": SESSION, "timestamp": "2026-01-01T00:00:01Z",
     "message": {"id": "m1", "role": "assistant", "model": "claude-x", "content": [
         {"type": "thinking", "thinking": "hmm"}, {"type": "text", "text": "ok"},
         {"type": "tool_use", "id": "t1", "name": "Task", "input": {"prompt": "look", "path": "/home/ann"}}]}},
    {"type": "user", "uuid": "r1", "parentUuid": "a1", "sessionId": SESSION, "timestamp": "2026-01-01T00:00:02Z",
     "toolUseResult": {"agentId": "ag1"}, "message": {"role": "user", "content": [
         {"type": "tool_result", "tool_use_id": "t1", "is_error": True, "content": [
             {"type": "text", "text": "command not found"}, {"type": "image", "source": {"data": "QUJD" * 80}}]}]}},
    {"type": "system", "subtype": "api_error", "uuid": "e1", "parentUuid": "r1", "sessionId": SESSION,
     "content": "overloaded", "error": {"status": 529}, "retryAttempt": 1, "level": "error"},
    {"type": "summary", "summary": "a title", "leafUuid": "a1"},
    {"type": "ai-title", "aiTitle": "t", "sessionId": SESSION},
    {"type": "custom-title", "customTitle": "t2", "sessionId": SESSION},
]
CODEX_TEMPLATES: list[dict[str, Any]] = [
    {"type": "session_meta", "timestamp": "2026-01-01T00:00:00Z", "payload": {
        "id": "th-1", "timestamp": "2026-01-01T00:00:00Z", "cwd": "/home/ann/p", "cli_version": "0.130.0",
        "git": {"branch": "main"}, "source": {"subagent": {"thread_spawn": {"parent_thread_id": "th-0"}}}}},
    {"type": "turn_context", "payload": {"model": "gpt-x", "cwd": "/home/ann/p"}},
    {"type": "event_msg", "timestamp": "2026-01-01T00:00:01Z", "payload": {"type": "user_message", "message": "go"}},
    {"type": "response_item", "payload": {"type": "message", "role": "user", "content": [
        {"type": "input_text", "text": "go"}]}},
    {"type": "response_item", "payload": {"type": "reasoning", "summary": [{"type": "summary_text", "text": "x"}],
                                          "encrypted_content": "zz"}},
    {"type": "response_item", "payload": {"type": "function_call", "name": "shell", "call_id": "c1",
                                          "arguments": "{\"cmd\": [\"ls\"]}"}},
    {"type": "response_item", "payload": {"type": "custom_tool_call", "name": "apply_patch", "call_id": "c2",
                                          "input": "*** Begin Patch"}},
    {"type": "response_item", "payload": {"type": "local_shell_call", "call_id": "c3", "action": {"command": ["ls"]}}},
    {"type": "response_item", "payload": {"type": "function_call_output", "call_id": "c1",
                                          "output": "{\"output\": \"bash: x: command not found\", \"metadata\": {\"exit_code\": 127}}"}},
    {"type": "response_item", "payload": {"type": "custom_tool_call_output", "call_id": "c2", "output": "done"}},
    {"type": "compacted", "payload": {"message": "summary"}},
]

_LEAVES = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(min_value=2**64, max_value=2**70), st.floats(allow_nan=False),
    st.text(max_size=12), st.sampled_from(["", "/home/ann", "sk-" + "a1" * 12, "\u212aey=" + "Zq9" * 6]),
)
_CHAOS = st.recursive(_LEAVES, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)), max_leaves=6)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path into a template (dict keys and list indexes)."""
    out = [prefix] if prefix else []
    if isinstance(value, dict):
        for key, inner in value.items():
            out.extend(_paths(inner, (*prefix, key)))
    elif isinstance(value, list):
        for index, inner in enumerate(value):
            out.extend(_paths(inner, (*prefix, index)))
    return out


@st.composite
def _mutated(draw: st.DrawFn, templates: list[dict[str, Any]]) -> bytes:
    record = copy.deepcopy(draw(st.sampled_from(templates)))
    for _ in range(draw(st.integers(1, 3))):
        paths = _paths(record)
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        target = record
        for step in path[:-1]:
            target = target[step]
        if draw(st.booleans()) and isinstance(target, dict):
            del target[path[-1]]
        else:
            target[path[-1]] = draw(_CHAOS)
    try:
        return orjson.dumps(record)
    except TypeError:  # an int beyond 64 bits: written the way a stdlib writer would
        return json.dumps(record).encode()


def _parse(tmp: Path, kind: str, lines: list[bytes]) -> None:
    path = tmp / ("agent-x.jsonl" if kind == "claude-code" else "rollout.jsonl")
    path.write_bytes(b"\n".join(lines) + b"\n")
    shard = Shard(kind, path.name, SETTINGS)
    parse_into(shard, path, {"toolUseId": "t1"} if kind == "claude-code" else None)
    tables = shard.tables()  # the Arrow conversion must take whatever the parser kept
    tallied = sum(shard.lines.values())
    assert tallied == len(lines), (shard.lines, len(lines))
    assert all(table.num_rows >= 0 for table in tables.values())
    assert Counter(shard.lines)  # every line landed somewhere


_FUZZ = settings(max_examples=150, deadline=None,
                 suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@_FUZZ
@given(lines=st.lists(st.one_of(_mutated(CLAUDE_TEMPLATES), st.sampled_from(
    [orjson.dumps(t) for t in CLAUDE_TEMPLATES])), min_size=1, max_size=8))
def test_claude_records_of_any_shape_never_crash_the_parser(tmp_path_factory: Any, lines: list[bytes]) -> None:
    _parse(tmp_path_factory.mktemp("cc"), "claude-code", lines)


@_FUZZ
@given(lines=st.lists(st.one_of(_mutated(CODEX_TEMPLATES), st.sampled_from(
    [orjson.dumps(t) for t in CODEX_TEMPLATES])), min_size=1, max_size=8))
def test_codex_records_of_any_shape_never_crash_the_parser(tmp_path_factory: Any, lines: list[bytes]) -> None:
    _parse(tmp_path_factory.mktemp("cx"), "codex", lines)


def _nested(depth: int, leaf: Any = "x") -> Any:
    value = leaf
    for _ in range(depth):
        value = [value]
    return value


def test_deeply_nested_records_are_quarantined_and_the_rest_of_the_file_kept(tmp_path: Path) -> None:
    """Nesting deeper than orjson writes (255) is quarantined as nesting_too_deep wherever
    it sits: the line itself, a message's content, an API error body, a Codex call's
    arguments. Shallower nesting (with a home path, so redaction walks it) is mapped."""
    user = CLAUDE_TEMPLATES[0]

    def record(uuid: str, content: Any) -> bytes:  # the stdlib writes deeper than orjson
        return json.dumps({**user, "uuid": uuid, "message": {"role": "user", "content": content}}).encode()

    api_error = {**CLAUDE_TEMPLATES[3], "uuid": "e9", "error": _nested(256, {"k": "v"})}
    claude = [
        b"[" * 5000 + b"]" * 5000,                                    # orjson and the stdlib both give up
        record("d1", [{"type": "text", "text": "hi", "extra": _nested(600)}]),
        json.dumps(api_error).encode(),
        record("ok1", [{"type": "text", "text": "/home/ann/x", "extra": _nested(200, "/home/ann/y")}]),
        record("ok2", "after the deep ones"),
    ]
    path = tmp_path / "s.jsonl"
    path.write_bytes(b"\n".join(claude) + b"\n")
    shard = Shard("claude-code", path.name, SETTINGS)
    parse_into(shard, path, None)
    tables = shard.tables()
    reasons = [(row["line_no"], row["reason"]) for row in tables["quarantine"].to_pylist()]
    assert reasons == [(1, "nesting_too_deep"), (2, "nesting_too_deep"), (3, "nesting_too_deep")]
    assert sum(shard.lines.values()) == len(claude) and shard.lines["mapped"] == 2
    messages = tables["messages"].to_pylist()
    assert [m["message_id"] for m in messages] == ["ok1", "ok2"]
    assert "/home/ann" not in str(messages[0]["content_json"])  # the walk went 200 levels down

    args = json.dumps(_nested(300))
    codex = [orjson.dumps(CODEX_TEMPLATES[0]), orjson.dumps({"type": "response_item", "payload": {
        "type": "function_call", "name": "shell", "call_id": "c9", "arguments": args}}),
             orjson.dumps(CODEX_TEMPLATES[5])]
    path = tmp_path / "rollout.jsonl"
    path.write_bytes(b"\n".join(codex) + b"\n")
    shard = Shard("codex", path.name, SETTINGS)
    parse_into(shard, path, None)
    tables = shard.tables()
    assert [(r["line_no"], r["reason"]) for r in tables["quarantine"].to_pylist()] == [(2, "nesting_too_deep")]
    assert [c["tool_use_id"] for c in tables["tool_calls"].to_pylist()] == ["c1"]
    assert sum(shard.lines.values()) == len(codex)
