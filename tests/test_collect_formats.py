"""Per-format parsing on real sessions (teich's Claude Code 2.1.77 and Codex 0.130.0
files) and on synthetic corpora whose manifest is exact ground truth."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import orjson
import polars as pl
import pytest
from collect_helpers import collect

from pipeline.collect.shard import CollectSettings, Shard, meta_path_for, parse_into
from pipeline.synth import synthesize

SETTINGS = CollectSettings(fold_home=True, max_line_bytes=4 << 20, max_input_bytes=16384,
                           max_result_bytes=16384, max_content_bytes=65536)


@pytest.fixture(scope="module")
def teich_lake(teich_examples: Path, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    base = tmp_path_factory.mktemp("teich")
    (base / "cc").mkdir()
    (base / "cx").mkdir()
    shutil.copy(teich_examples / "example_claude_code.jsonl", base / "cc")
    shutil.copy(teich_examples / "example_codex_session.jsonl", base / "cx")
    return collect(base / "lake", [("claude-code", base / "cc"), ("codex", base / "cx")])


def _frame(lake, name: str, kind: str) -> pl.DataFrame:  # type: ignore[no-untyped-def]
    frame = pl.from_arrow(lake.tables[name])
    sessions = pl.from_arrow(lake.tables["sessions"]).filter(pl.col("source_kind") == kind)
    return frame.join(sessions.select("session_id"), on="session_id", how="semi")  # type: ignore[union-attr]


def test_teich_line_accounting(teich_lake) -> None:  # type: ignore[no-untyped-def]
    r = teich_lake.receipt
    assert r.records_in == 35 + 95  # both sample files end without a newline
    assert r.records_out == 32 + 53
    assert r.quarantined == {}
    assert r.filtered["counted:queue-operation"] == 2
    assert r.filtered["counted:last-prompt"] == 1
    assert r.filtered["counted:event_msg:token_count"] == 28
    assert r.stats["repairs"] == {"missing_final_newline": 2}


def test_teich_claude_merges_split_messages(teich_lake) -> None:  # type: ignore[no-untyped-def]
    messages = _frame(teich_lake, "messages", "claude-code")
    # 32 conversation records; 5 API messages span 2-3 records each -> 26 messages.
    assert messages.height == 26
    assert messages.group_by("role").len().sort("role").rows() == [("assistant", 12), ("tool", 13), ("user", 1)]
    assert messages["seq"].to_list() == list(range(26))
    # msg ...mnKda9: tool_use, (its result), tool_use -> one message with two calls.
    calls = _frame(teich_lake, "tool_calls", "claude-code")
    per_message = calls.group_by("message_id").len().filter(pl.col("len") == 2)
    assert sorted(m[-6:] for m in per_message["message_id"].to_list()) == ["mnKda9", "qCqQSL"]
    merged = messages.filter(pl.col("message_id").str.ends_with("H9CNbE")).row(0, named=True)
    assert merged["role"] == "assistant" and merged["model"] == "claude-opus-4-6"


def test_teich_claude_tool_calls_and_prompts(teich_lake) -> None:  # type: ignore[no-untyped-def]
    calls = _frame(teich_lake, "tool_calls", "claude-code")
    assert calls.height == 13
    assert calls["has_result"].all()
    assert calls["is_error"].sum() == 2  # the two structural is_error: true results
    assert set(calls.filter(pl.col("is_error"))["error_kind"].to_list()) == {"tool_error"}
    assert calls.filter(~pl.col("is_error"))["error_kind"].null_count() == 11
    # Bash: 1 failed ("Exit code 1" lead), 10 finished (toolUseResult stdout/stderr, not
    # interrupted); ToolSearch and WebFetch have no exit code. Counted by hand from the file.
    by_code = calls.group_by("name", "exit_code").len().sort("name", "exit_code", nulls_last=True).rows()
    assert by_code == [("Bash", 0, 10), ("Bash", 1, 1), ("ToolSearch", None, 1), ("WebFetch", None, 1)]
    prompts = _frame(teich_lake, "prompts", "claude-code")
    assert prompts.height == 1
    assert prompts["text"][0].startswith("Download a random dataset from Hugging Face")
    assert calls["prompt_id"].unique().to_list() == prompts["prompt_id"].to_list()
    session = pl.from_arrow(teich_lake.tables["sessions"]).filter(pl.col("source_kind") == "claude-code")
    row = session.row(0, named=True)  # type: ignore[union-attr]
    assert (row["n_messages"], row["n_tool_calls"], row["n_prompts"]) == (26, 13, 1)
    assert row["agent_version"] == "2.1.77" and not row["is_subagent"]


def test_teich_codex(teich_lake) -> None:  # type: ignore[no-untyped-def]
    calls = _frame(teich_lake, "tool_calls", "codex")
    assert calls.height == 18  # 17 function_call + 1 custom_tool_call (apply_patch)
    assert calls["has_result"].all()
    assert calls.group_by("exit_code").len().sort("exit_code", nulls_last=True).rows() == [(0, 11), (None, 7)]
    # "Process running with session ID" outputs: outcome not known yet.
    assert calls["is_error"].null_count() == 7
    assert calls.filter(pl.col("name") == "apply_patch")["input_json"][0].startswith('{"input":"*** Begin Patch')
    parallel = calls.group_by("message_id").len().filter(pl.col("len") == 3)
    assert parallel.height == 2  # two batches of three parallel exec_command calls
    prompts = _frame(teich_lake, "prompts", "codex")
    assert prompts["text"].to_list() == ["make me a dashboard for rss, youtube, and newsletters all in one place"]
    messages = _frame(teich_lake, "messages", "codex")
    assert messages.height == 35
    # the developer message and <environment_context> are context, not prompts
    assert messages.filter(pl.col("is_meta"))["role"].sort().to_list() == ["system", "user"]
    assert messages.filter(pl.col("thinking").is_not_null()).height == 3
    session = pl.from_arrow(teich_lake.tables["sessions"]).filter(pl.col("source_kind") == "codex").row(0, named=True)  # type: ignore[union-attr]
    assert session["session_id"] == "019e1fee-81dd-7201-9fa9-8896944f0911"
    assert session["agent_version"] == "0.130.0"


def _per_file(root: Path, kind: str) -> tuple[dict[str, pl.DataFrame], Counter[str]]:
    """Each file parsed on its own: the manifest's counting convention."""
    frames: dict[str, list[pl.DataFrame]] = {}
    lines: Counter[str] = Counter()
    for path in sorted(root.rglob("*.jsonl")):
        meta = meta_path_for(path)
        shard = Shard(kind, path.as_posix(), SETTINGS)
        parse_into(shard, path, orjson.loads(meta.read_bytes()) if meta else None)
        for name, table in shard.tables().items():
            frame = pl.from_arrow(table).with_columns(source_file=pl.lit(path.as_posix()))  # type: ignore[union-attr]
            frames.setdefault(name, []).append(frame)
        lines.update(shard.lines)
    return {k: pl.concat(v) for k, v in frames.items()}, lines


@pytest.mark.parametrize("kind", ["claude-code", "codex"])
def test_synth_per_file_figures_match_manifest(tmp_path: Path, kind: str) -> None:
    manifest = synthesize(tmp_path / "corpus", 40, 11, kind)
    frames, lines = _per_file(tmp_path / "corpus", kind)
    calls = frames["tool_calls"]
    assert sum(lines.values()) == manifest.lines
    assert frames["prompts"].height == manifest.prompts
    assert calls.height == manifest.tool_calls
    assert int(calls["has_result"].sum()) == manifest.tool_results
    assert int((~calls["has_result"]).sum()) == manifest.unpaired_tool_calls
    assert int(calls["is_error"].sum()) == manifest.tool_errors
    kinds = Counter(calls.filter(pl.col("is_error"))["error_kind"].to_list())
    for kind_name in ("command_not_found", "file_not_found", "permission_denied", "syntax_error",
                      "connection_error"):
        assert kinds[kind_name] == manifest.tool_errors_by_kind.get(kind_name, 0), kind_name
    quarantined = Counter(frames["quarantine"]["reason"].to_list())
    assert dict(quarantined) == manifest.malformed_lines
    if kind == "claude-code":
        points = frames["branches"].unique(["source_file", "session_id", "parent_message_id"])
        assert dict(Counter(points["kind"].to_list())) == manifest.branches
        assert int(frames["messages"]["is_compact_summary"].sum()) == manifest.compact_summaries
        assert int(frames["sessions"]["is_subagent"].sum()) == manifest.subagent_files


def test_synth_claude_merged_corpus(tmp_path: Path) -> None:
    manifest = synthesize(tmp_path / "corpus", 40, 5, "claude-code")
    lake = collect(tmp_path / "lake", [("claude-code", tmp_path / "corpus")], workers=2)
    r = lake.receipt
    assert r.records_in == manifest.lines
    assert r.filtered.get("exact_duplicate", 0) == manifest.exact_duplicate_lines
    subagents = pl.from_arrow(lake.tables["subagents"])
    assert subagents.height == manifest.subagent_files
    assert subagents["spawn_tool_use_id"].null_count() == 0
    sessions = pl.from_arrow(lake.tables["sessions"])
    subs = sessions.filter(pl.col("is_subagent"))  # type: ignore[union-attr]
    assert subs["session_id"].str.contains("/agent-").all()
    assert subs["parent_session_id"].null_count() == 0
    calls = pl.from_arrow(lake.tables["tool_calls"])
    spawned = calls.filter(pl.col("tool_use_id").is_in(subagents["spawn_tool_use_id"].to_list()))  # type: ignore[union-attr]
    assert set(spawned["name"].to_list()) <= {"Task", "Agent"}
    # subagent work is attributed to the human prompt that spawned it
    sub_calls = calls.join(subs.select("session_id"), on="session_id", how="semi")  # type: ignore[union-attr]
    assert sub_calls["prompt_id"].null_count() == 0
    # positional prompt identity: repeated short prompts are all kept
    prompts = pl.from_arrow(lake.tables["prompts"])
    assert prompts["prompt_id"].n_unique() == prompts.height  # type: ignore[union-attr]
    for row in sessions.iter_rows(named=True):  # type: ignore[union-attr]
        assert row["n_prompts"] == prompts.filter(pl.col("session_id") == row["session_id"]).height  # type: ignore[union-attr]


@pytest.mark.parametrize("layout", ["a file per session", "a file per record"])
def test_claude_code_log_records_golden(claude_code_log_messages: Path, tmp_path: Path, layout: str) -> None:
    """claude-code-log's 59 real records. The figures below were counted by hand from the
    files (not from tracelake): 15 sessions; 18 tool_use blocks; 26 tool_result blocks, of
    which 2 are byte-identical copies of another file's record (AskUserQuestion's and
    Edit's "result" and "result_error" files hold the same line) and 6 answer a call that
    no record of their session holds (the other *_error files); 2 of the 18 calls failed
    (AskUserQuestion: no such tool; Edit: file not read yet); the Bash call succeeded with
    empty output. The counts hold whether a session's records share one file or each
    sit in a file of its own (a call and its result then pair across files)."""
    # As Claude Code lays them out: one file per session, records in time order (the
    # files are one record each, cut from sessions); records without a session alone.
    by_session: dict[str, list[tuple[str, str]]] = {}
    for path in sorted(claude_code_log_messages.rglob("*.jsonl")):
        for line in path.read_text().splitlines():
            record = orjson.loads(line)
            key = record.get("sessionId") or path.stem
            by_session.setdefault(key, []).append((str(record.get("timestamp") or ""), line))
    src = tmp_path / "src" / "-home-dev-project"
    src.mkdir(parents=True)
    for key, records in by_session.items():
        ordered = [line for _, line in sorted(records, key=lambda r: r[0])]
        if layout == "a file per session":
            (src / f"{key}.jsonl").write_text("".join(line + "\n" for line in ordered))
        else:
            for n, line in enumerate(ordered):
                (src / f"{key}-{n:02d}.jsonl").write_text(line + "\n")
    lake = collect(tmp_path / "lake", [("claude-code", tmp_path / "src")])
    sessions = pl.from_arrow(lake.tables["sessions"])
    assert sessions.height == 15  # type: ignore[union-attr]
    calls = pl.from_arrow(lake.tables["tool_calls"])
    assert calls.height == 18 and calls["has_result"].all()  # type: ignore[union-attr,index]
    assert sorted(calls.filter(pl.col("is_error"))["name"].to_list()) == ["AskUserQuestion", "Edit"]  # type: ignore[union-attr]
    assert calls.filter(pl.col("name") == "Bash")["exit_code"].to_list() == [0]  # type: ignore[union-attr]
    quarantine = pl.from_arrow(lake.tables["collect_quarantine"])
    unpaired = quarantine.filter(pl.col("reason") == "unpaired_tool_result")  # type: ignore[union-attr]
    assert unpaired.height == 6  # the Bash, ExitPlanMode, KillShell, MultiEdit, Read and Write errors
    lines = lake.receipt.stats["lines"]
    assert lines["exact_duplicate"] == 2
    assert sum(lines.values()) == 59


def _codex_line(kind: str, payload: dict[str, object], n: int) -> str:
    return orjson.dumps({"timestamp": f"2026-04-01T10:00:{n:02d}.000Z", "type": kind, "payload": payload}).decode()


def _ev(text: str, n: int) -> str:
    return _codex_line("event_msg", {"type": "user_message", "message": text}, n)


def _item(role: str, text: str, n: int) -> str:
    kind = "input_text" if role == "user" else "output_text"
    return _codex_line("response_item", {"type": "message", "role": role, "content": [{"type": kind, "text": text}]}, n)


@pytest.mark.parametrize(("lines", "expected"), [
    # no twins at all: each reply stays with its own prompt
    ([_ev("A", 1), _item("assistant", "x", 2), _ev("B", 3), _item("assistant", "y", 4)],
     [("user", False, "A", "A"), ("assistant", False, "x", "A"), ("user", False, "B", "B"),
      ("assistant", False, "y", "B")]),
    # a twin is looked for in its own turn only: an older identical text is not it
    ([_item("user", "go", 1), _ev("B", 2), _item("assistant", "b", 3), _ev("go", 4), _item("assistant", "g", 5),
      _item("user", "go", 6)],
     [("user", False, "go", None), ("user", False, "B", "B"), ("assistant", False, "b", "B"),
      ("user", False, "go", "go"), ("assistant", False, "g", "go"), ("user", True, "go", "go")]),
    # IDE context before the request is a twin; a short prompt inside it is not
    ([_ev("yes", 1), _item("assistant", "ok", 2), _item("user", "# Context\nSelection: yes\n## Request:\nrename it", 3),
      _ev("rename it", 4), _item("assistant", "done", 5)],
     [("user", False, "yes", "yes"), ("assistant", False, "ok", "yes"),
      ("user", False, "# Context\nSelection: yes\n## Request:\nrename it", "rename it"),
      ("assistant", False, "done", "rename it")]),
])
def test_codex_prompts_find_their_own_turn(tmp_path: Path, lines: list[str], expected: list[tuple[object, ...]]) -> None:
    meta = _codex_line("session_meta", {"id": "s1", "cwd": "/w", "originator": "Codex Desktop"}, 0)
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "rollout-s1.jsonl").write_text("\n".join([meta, *lines]) + "\n")
    lake = collect(tmp_path / "lake", [("codex", tmp_path / "src")])
    prompts = {p["prompt_id"]: p["text"] for p in lake.tables["prompts"].to_pylist()}
    messages = sorted(lake.tables["messages"].to_pylist(), key=lambda m: m["line_no"])
    assert [(m["role"], m["is_meta"], m["text"], prompts.get(m["prompt_id"])) for m in messages] == expected


def test_a_revealed_secret_answered_in_another_file_is_redacted(tmp_path: Path) -> None:
    """`kubectl get secret ... | base64 -d` in one file of a session, its output in the
    next (a resumed session): the output is a secret whatever it looks like, though the
    file holding it cannot see the command (fail closed)."""
    from collect_helpers import all_text

    secret = "4ptiO!=Dce.eYwUW9cg"
    call = {"type": "assistant", "sessionId": "s1", "uuid": "u1", "parentUuid": None, "timestamp": "2026-01-01T00:00:01Z",
            "message": {"id": "m1", "role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "Bash",
                        "input": {"command": "kubectl get secret db -o jsonpath='{.data.password}' | base64 -d"}}]}}
    result = {"type": "user", "sessionId": "s1", "uuid": "u2", "parentUuid": "u1", "timestamp": "2026-01-01T00:00:02Z",
              "message": {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": secret}]},
              "toolUseResult": {"stdout": secret, "stderr": "", "interrupted": False}}
    src = tmp_path / "src" / "-w"
    src.mkdir(parents=True)
    (src / "a.jsonl").write_text(orjson.dumps(call).decode() + "\n")
    (src / "b.jsonl").write_text(orjson.dumps(result).decode() + "\n")
    lake = collect(tmp_path / "lake", [("claude-code", tmp_path / "src")])
    assert lake.tables["tool_calls"].column("has_result").to_pylist() == [True]  # paired across the files
    assert secret not in all_text(lake.tables)
