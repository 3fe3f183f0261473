"""Bad input: every line lands in exactly one tally, nothing crashes, nothing leaks."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import orjson
import pytest
from collect_helpers import all_text, collect
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.core.progress import Tracker
from pipeline.core.runner import Runner, RunOptions
from pipeline.core.sources import SourceSpec
from pipeline.stages.collect import STAGE

SESSION = "5a1b2c3d-0000-4000-8000-000000000001"


def _user(uuid: str, text: str, parent: str | None = None, session: str = SESSION) -> bytes:
    return orjson.dumps({
        "type": "user", "uuid": uuid, "parentUuid": parent, "sessionId": session,
        "timestamp": "2026-01-01T00:00:00.000Z", "cwd": "/work/project",
        "message": {"role": "user", "content": text},
    })


def _assistant(uuid: str, parent: str, msg_id: str, block: dict, session: str = SESSION) -> bytes:  # type: ignore[type-arg]
    return orjson.dumps({
        "type": "assistant", "uuid": uuid, "parentUuid": parent, "sessionId": session,
        "timestamp": "2026-01-01T00:00:01.000Z",
        "message": {"id": msg_id, "role": "assistant", "model": "claude-x", "content": [block]},
    })


def _result(uuid: str, parent: str, tool_use_id: str, text: str, is_error: bool = False) -> bytes:
    return orjson.dumps({
        "type": "user", "uuid": uuid, "parentUuid": parent, "sessionId": SESSION,
        "timestamp": "2026-01-01T00:00:02.000Z",
        "message": {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": tool_use_id, "content": text, "is_error": is_error}]},
    })


def test_bad_input_corpus_is_fully_accounted(tmp_path: Path) -> None:
    src = tmp_path / "src" / "proj"
    src.mkdir(parents=True)
    big = b'{"type":"user","pad":"' + b"x" * (5 * 1024 * 1024) + b'"}'
    lines = [
        _user("u1", "fix the bug"),                                           # 1 mapped
        b"",                                                                   # 2 blank
        _assistant("a1", "u1", "m1", {"type": "tool_use", "id": "t1", "name": "Bash",
                                      "input": {"command": "ls /nope"}}),      # 3 mapped
        _result("r1", "a1", "t1", "ls: /nope: No such file or directory", True),  # 4 mapped
        _result("r2", "a1", "t-orphan", "nobody called me"),                   # 5 mapped + set aside
        b'{"type":"user","uuid":"n1","sessionId":"' + SESSION.encode() + b'","message":{"role":"user","content":"a\x00b"}}',  # 6 NUL repaired
        b'{"type":"user","text":"caf\xe9"}',                                   # 7 invalid utf-8
        big,                                                                   # 8 oversized
        b'[1, 2, 3]',                                                          # 9 not an object
        b"garbage {{{",                                                        # 10 malformed
        b'{"type":"queue-operation","operation":"enqueue","sessionId":"' + SESSION.encode() + b'"}',  # 11 counted
        b'{"type":"mystery","uuid":"q1"}',                                     # 12 unknown type
        _user("u1", "fix the bug"),                                            # 13 exact duplicate
        _user("u1", "something else"),                                         # 14 conflicting duplicate
        b'{"type":"user","uuid":"x9","message":{"role":"user","content":"hi"}}',  # 15 no session id
        b'{"type":"assistant","uuid":"a2","sessionId":"' + SESSION.encode() + b'","message":{"id":"m2","content":[{"type":"text","text":"torn',  # 16 torn
    ]
    (src / "s1.jsonl").write_bytes(b"\n".join(lines))  # no final newline
    (src / "empty.jsonl").write_bytes(b"")
    bom = "5a1b2c3d-0000-4000-8000-0000000000b0"
    (src / "bom.jsonl").write_bytes(b"\xef\xbb\xbf" + _user("b1", "saved by an editor", session=bom) + b"\n")
    lake = collect(tmp_path / "lake", [("claude-code", tmp_path / "src")])
    r = lake.receipt
    assert r.records_in == 17
    assert r.records_out == 6
    assert r.quarantined == {
        "conflicting_duplicate": 1, "invalid_utf8": 1, "malformed_json": 2, "missing_session_id": 1,
        "not_an_object": 1, "oversized_line": 1, "unknown_entry_type": 1,
    }
    assert r.filtered == {"blank_line": 1, "counted:queue-operation": 1, "exact_duplicate": 1}
    assert r.stats["set_aside"] == {"unpaired_tool_result": 1}
    assert r.stats["repairs"]["nul_bytes_stripped"] == 1
    assert r.stats["repairs"]["utf8_bom_stripped"] == 1
    assert r.stats["files"]["empty"] == 1
    calls = lake.tables["tool_calls"].to_pylist()
    assert [(c["tool_use_id"], c["is_error"], c["error_kind"]) for c in calls] == [("t1", True, "file_not_found")]
    quarantine = lake.tables["collect_quarantine"].to_pylist()
    oversized = [q for q in quarantine if q["reason"] == "oversized_line"]
    assert oversized[0]["line_no"] == 8 and "bytes" in oversized[0]["detail"]
    assert all(len(q["detail"] or "") < 400 for q in quarantine)
    messages = {m["message_id"]: m for m in lake.tables["messages"].to_pylist()}
    assert messages["n1"]["text"] == "ab"
    assert messages["u1"]["text"] == "fix the bug"  # the first copy is kept


_VALID = [
    _user("v1", "hello"),
    _assistant("v2", "v1", "mv", {"type": "text", "text": "hi"}),
    _assistant("v3", "v2", "mv", {"type": "tool_use", "id": "tv", "name": "Read", "input": {"p": 1}}),
    _result("v4", "v3", "tv", "ok"),
    b'{"type":"last-prompt","sessionId":"' + SESSION.encode() + b'"}',
    b'{"type":"system","subtype":"compact_boundary","uuid":"v5","sessionId":"' + SESSION.encode() + b'"}',
]
_INVALID = [b"", b"   ", b"{", b"[]", b'"str"', b"\xff\xfe", b"null", b'{"type":"weird"}', b"\x00\x00",
            b'{"type":"user","uuid":"v1","sessionId":"other"}']


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    files=st.lists(
        st.lists(st.sampled_from(_VALID + _INVALID), max_size=12), min_size=1, max_size=3
    ),
    final_newline=st.booleans(),
)
def test_count_conservation_property(tmp_path_factory, files: list[list[bytes]], final_newline: bool) -> None:  # type: ignore[no-untyped-def]
    base = tmp_path_factory.mktemp("prop")
    src = base / "src"
    src.mkdir()
    expected = 0
    for index, lines in enumerate(files):
        data = b"\n".join(lines) + (b"\n" if final_newline and lines else b"")
        (src / f"f{index}.jsonl").write_bytes(data)
        expected += data.count(b"\n") + (1 if data and not data.endswith(b"\n") else 0)
    lake = collect(base / "lake", [("claude-code", src)], workers=1)
    r = lake.receipt
    assert r.records_in == expected
    assert r.records_in == r.records_out + sum(r.quarantined.values()) + sum(r.filtered.values())
    line_reasons = [q["reason"] for q in lake.tables["collect_quarantine"].to_pylist()
                    if q["reason"] not in r.stats["set_aside"]]
    assert len(line_reasons) == sum(r.quarantined.values())


def test_planted_secrets_never_reach_the_lake(tmp_path: Path) -> None:
    secrets = {
        "aws": "AKIAQWERTYUIOPASDFGH",
        "github": "ghp_" + "A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8",
        "anthropic": "sk-ant-api03-" + "Zx9" * 30,
    }
    home = str(Path.home())
    src = tmp_path / "src" / "proj"
    src.mkdir(parents=True)
    lines = [
        orjson.dumps({"type": "user", "uuid": "p1", "parentUuid": None, "sessionId": SESSION,
                      "cwd": f"{home}/code/app", "message": {"role": "user",
                      "content": f"deploy with key {secrets['aws']} please"}}),
        _assistant("p2", "p1", "mm", {"type": "tool_use", "id": "ts", "name": "Bash",
                                      "input": {"command": f"export GH={secrets['github']} && git push"}}),
        _result("p3", "p2", "ts", f"token {secrets['anthropic']} rejected"),
        b'{"broken json with ' + secrets["github"].encode() + b" and " + home.encode(),
    ]
    (src / "leak.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    codex = tmp_path / "codex"
    codex.mkdir()
    rollout = [
        {"timestamp": "t0", "type": "session_meta", "payload": {"id": "cx-1", "cwd": f"{home}/code"}},
        {"timestamp": "t1", "type": "event_msg", "payload": {"type": "user_message",
                                                              "message": f"use {secrets['aws']}"}},
        {"timestamp": "t2", "type": "response_item", "payload": {
            "type": "function_call", "name": "exec_command", "call_id": "c1",
            "arguments": json.dumps({"cmd": f"curl -H 'x: {secrets['anthropic']}'"})}},
        {"timestamp": "t3", "type": "response_item", "payload": {
            "type": "function_call_output", "call_id": "c1", "output": f"Exit code: 1\n{secrets['github']}"}},
    ]
    (codex / "rollout.jsonl").write_bytes(b"\n".join(orjson.dumps(x) for x in rollout))
    lake = collect(tmp_path / "lake", [("claude-code", tmp_path / "src"), ("codex", codex)])
    text = all_text(lake.tables)
    for value in secrets.values():
        assert value not in text
    assert home not in text
    for path in lake.root.rglob("*.parquet"):
        data = path.read_bytes()
        for value in secrets.values():
            assert value.encode() not in data
    assert lake.tables["tool_calls"].num_rows == 2
    assert sum(lake.receipt.stats["redactions"].values()) >= 6
    assert all(home not in repr(v) for v in lake.receipt.stats.values())


def test_record_reused_across_files_is_named_in_quarantine(tmp_path: Path) -> None:
    """A resumed session copies lines (uuids and all) into a new file: an identical copy
    is an exact duplicate; a changed one is quarantined naming the record and the first copy."""
    project = tmp_path / "logs" / "proj"
    project.mkdir(parents=True)

    def line(uuid: str, text: str) -> bytes:
        record = {"type": "user", "uuid": uuid, "parentUuid": None, "sessionId": "s-1",
                  "timestamp": "2026-01-01T00:00:00Z", "message": {"role": "user", "content": text}}
        return json.dumps(record).encode() + b"\n"

    (project / "a.jsonl").write_bytes(line("u-1", "first") + line("u-2", "second"))
    (project / "b.jsonl").write_bytes(line("u-1", "first") + line("u-2", "edited"))
    out = collect(tmp_path / "lake", [("claude-code", tmp_path / "logs")])
    lines = out.receipt.stats["lines"]
    assert lines["exact_duplicate"] == 1
    assert lines["quarantined:conflicting_duplicate"] == 1
    rows = out.tables["collect_quarantine"].to_pylist()
    assert [(r["line_no"], r["record_id"], r["reason"]) for r in rows] == [(2, "s-1:u-2", "conflicting_duplicate")]
    assert rows[0]["source_file"].endswith("proj/b.jsonl")
    assert rows[0]["detail"].endswith("proj/a.jsonl:2 kept")


def _user_line(uuid: str, text: str, kind: str = "user") -> bytes:
    record = {"type": kind, "uuid": uuid, "parentUuid": None, "sessionId": "s-1",
              "timestamp": "2026-01-01T00:00:00Z", "message": {"role": "user", "content": text}}
    return json.dumps(record).encode() + b"\n"


def test_an_invalid_copy_never_hides_a_valid_one(tmp_path: Path) -> None:
    """An invalid record reusing a valid record's id, before it in the file: the valid one
    is kept, and the quarantine row names the copy kept (not "first copy kept")."""
    project = tmp_path / "logs" / "proj"
    project.mkdir(parents=True)
    (project / "a.jsonl").write_bytes(_user_line("u-1", "garbled", kind="usr") + _user_line("u-1", "hello"))
    out = collect(tmp_path / "lake", [("claude-code", tmp_path / "logs")])
    assert [m["text"] for m in out.tables["messages"].to_pylist()] == ["hello"]
    rows = out.tables["collect_quarantine"].to_pylist()
    assert [(r["line_no"], r["reason"]) for r in rows] == [(1, "conflicting_duplicate")]
    assert rows[0]["detail"].endswith("proj/a.jsonl:2 kept")
    lines = out.receipt.stats["lines"]
    assert out.receipt.records_in == 2 and lines["mapped"] == 1 and lines["quarantined:conflicting_duplicate"] == 1


def test_a_valid_record_then_an_invalid_copy_keeps_the_valid_one(tmp_path: Path) -> None:
    project = tmp_path / "logs" / "proj"
    project.mkdir(parents=True)
    (project / "a.jsonl").write_bytes(_user_line("u-1", "hello") + _user_line("u-1", "garbled", kind="usr"))
    out = collect(tmp_path / "lake", [("claude-code", tmp_path / "logs")])
    assert [m["text"] for m in out.tables["messages"].to_pylist()] == ["hello"]
    rows = out.tables["collect_quarantine"].to_pylist()
    assert [(r["line_no"], r["reason"]) for r in rows] == [(2, "conflicting_duplicate")]
    assert "the copy on line 1 kept" in rows[0]["detail"]


@pytest.mark.parametrize("fmt", ["claude-code", "codex"])
@pytest.mark.parametrize("wrong_first", [True, False])
def test_one_file_given_as_two_kinds_keeps_its_right_parse(tmp_path: Path, fmt: str, wrong_first: bool) -> None:
    """Its wrong-kind parse sets every line aside; it must not win the deduplication and
    take the right parse with it (a Codex rollout given as both was 190 records in, 0 out)."""
    from pipeline.synth import synthesize

    synthesize(tmp_path / "logs", sessions=1, seed=5, fmt=fmt)
    [session] = sorted((tmp_path / "logs").rglob("*.jsonl"))
    wrong = "codex" if fmt == "claude-code" else "claude-code"
    right = collect(tmp_path / "right", [(fmt, session)])
    sources = [(wrong, session), (fmt, session)] if wrong_first else [(fmt, session), (wrong, session)]
    both = collect(tmp_path / "both", sources)
    assert right.receipt.records_out > 0
    assert both.receipt.records_out == right.receipt.records_out
    for table in ("messages", "tool_calls", "prompts"):
        assert both.tables[table].num_rows == right.tables[table].num_rows, table
    assert both.receipt.records_in == 2 * right.receipt.records_in


def _result_line(uuid: str, parent: str, tool_use_id: str, out: str) -> bytes:
    record = {"type": "user", "uuid": uuid, "parentUuid": parent, "sessionId": "s-1",
              "timestamp": "2026-01-01T00:00:01Z",
              "message": {"role": "user", "content": [{"type": "tool_result", "tool_use_id": tool_use_id, "content": out}]}}
    return json.dumps(record).encode() + b"\n"


def _call_line(uuid: str, parent: str, tool_use_id: str) -> bytes:
    record = {"type": "assistant", "uuid": uuid, "parentUuid": parent, "sessionId": "s-1",
              "timestamp": "2026-01-01T00:00:00Z",
              "message": {"id": "msg_1", "role": "assistant", "model": "m", "content": [
                  {"type": "tool_use", "id": tool_use_id, "name": "Bash", "input": {"command": "ls"}}]}}
    return json.dumps(record).encode() + b"\n"


def test_every_extra_tool_result_gets_its_own_row(tmp_path: Path) -> None:
    """Two results for a call that never came: two unpaired rows (it was one). Two results
    for a call that came: the first pairs, the second is named a duplicate of it."""
    project = tmp_path / "logs" / "proj"
    project.mkdir(parents=True)
    (project / "a.jsonl").write_bytes(
        _user_line("u-1", "hi")
        + _result_line("u-2", "u-1", "toolu_gone", "out")
        + _result_line("u-3", "u-2", "toolu_gone", "out again")
        + _call_line("a-1", "u-3", "toolu_here")
        + _result_line("u-4", "a-1", "toolu_here", "first")
        + _result_line("u-5", "u-4", "toolu_here", "second")
    )
    out = collect(tmp_path / "lake", [("claude-code", tmp_path / "logs")])
    rows = sorted((r["line_no"], r["reason"], r["record_id"]) for r in out.tables["collect_quarantine"].to_pylist())
    assert rows == [(2, "unpaired_tool_result", "toolu_gone"), (3, "unpaired_tool_result", "toolu_gone"),
                    (6, "duplicate_tool_result", "toolu_here")]
    detail = next(r["detail"] for r in out.tables["collect_quarantine"].to_pylist() if r["line_no"] == 6)
    assert detail == "another result for this call; the one on line 5 kept"
    [call] = out.tables["tool_calls"].to_pylist()
    assert call["has_result"] and call["result_text"] == "first"


class _Recording(Tracker):
    def __init__(self) -> None:
        self.meters: list[tuple[str, int, list[int]]] = []

    @contextmanager
    def meter(self, total_bytes: int, description: str) -> Iterator[Callable[[int], None]]:
        advanced: list[int] = []
        self.meters.append((description, total_bytes, advanced))
        yield advanced.append


@pytest.mark.parametrize("workers", [1, 2])
def test_the_collect_bar_counts_bytes(tmp_path: Path, workers: int) -> None:
    """The bar is over the bytes left to parse (so it can show a rate and an ETA), and
    every parsed file advances it by its size; a later run counts only new files."""
    from pipeline.synth import synthesize

    synthesize(tmp_path / "logs", sessions=6, seed=2, fmt="claude-code")
    files = list((tmp_path / "logs").rglob("*.jsonl"))  # the logs (sidecars are read with their log)
    tracker = _Recording()
    options = RunOptions(root=tmp_path / "lake", sources=[SourceSpec("claude-code", tmp_path / "logs")],
                         workers=workers, tracker=tracker)
    assert Runner([STAGE], options).run(["collect"]).ok
    [(description, total, advanced)] = tracker.meters
    assert description == "collect" and total == sum(p.stat().st_size for p in files) == sum(advanced)
    assert len(advanced) >= 1
    tracker.meters.clear()
    synthesize(tmp_path / "more", sessions=1, seed=9, fmt="claude-code")
    added = sorted((tmp_path / "more").rglob("*.jsonl"))
    for path in added:
        path.rename(tmp_path / "logs" / f"added-{path.name}")
    assert Runner([STAGE], options).run(["collect"]).ok
    [(_, total, advanced)] = tracker.meters  # only the new file is left to parse
    assert total == sum(advanced) == sum((tmp_path / "logs" / f"added-{p.name}").stat().st_size for p in added)
