"""End to end through the real collect stage: the teich sessions and a synthetic corpus."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from pipeline.core.runner import Runner, RunOptions, RunResult
from pipeline.core.sources import SourceSpec
from pipeline.core.store import LakeLayout
from pipeline.drift.metrics import load_view, run_metrics
from pipeline.stages.registry import STAGES
from tests.exports.builders import receipt, table

EXPORTS = ("score", "export-sft", "export-rag", "export-preference")


def _run(root: Path, specs: list[SourceSpec]) -> RunResult:
    # workers=1: collect's fork-based pool can crash once tokenizers/datasets threads run
    # in this process (see the render tests); in-process parsing sidesteps it.
    runner = Runner(STAGES, RunOptions(root=root, sources=specs, recorded_at="2026-01-01T00:00:00Z",
                                       workers=1))
    result = runner.run()
    failed = {o.stage: (o.error, o.receipt and o.receipt.validation.errors[:3])
              for o in result.outcomes if o.status != "ok"}
    assert not failed, failed
    return result


def _conserve(result: RunResult) -> None:
    for stage in EXPORTS:
        r = receipt(result, stage)
        assert r.records_in == r.records_out + sum(r.quarantined.values()) + sum(r.filtered.values())


def test_teich_sessions_golden(teich_examples: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for name in ("example_claude_code.jsonl", "example_codex_session.jsonl"):
        shutil.copy(teich_examples / name, src / name)
    root = tmp_path / "lake"
    result = _run(root, [SourceSpec("claude-code", src / "example_claude_code.jsonl"),
                         SourceSpec("codex", src / "example_codex_session.jsonl")])
    _conserve(result)
    scores = table(result, root, "scores")
    assert sorted((s["source_kind"], s["category"], s["rule"]) for s in scores) == [
        ("claude-code", "accepted", "final_answer"), ("codex", "accepted", "final_answer")]
    claude = next(s for s in scores if s["source_kind"] == "claude-code")
    assert claude["n_tool_calls"] > 5 and claude["n_tool_errors"] >= 1 and not claude["unrecovered_error"]
    sft = receipt(result, "export-sft")
    # Codex's apply_patch carries a whole file (> 2,000 characters): dropped, and counted.
    assert (sft.records_out, sft.filtered) == (1, {"long_argument": 1})
    (row,) = table(result, root, "sft")
    messages = json.loads(row["messages"])
    assert messages[0]["role"] == "user" and messages[-1]["role"] == "assistant"
    assert any(m.get("reasoning_content") for m in messages)
    assert {t["function"]["name"] for t in json.loads(row["tools"])} >= {"Bash"}
    docs = table(result, root, "rag")
    assert len(docs) == 2 and all(d["final_answer"] for d in docs)
    codex_doc = next(d for d in docs if d["source_kind"] == "codex")
    assert codex_doc["files_touched"], codex_doc["steps"]
    assert len(table(result, root, "kto")) == 2 and table(result, root, "preference") == []


@pytest.fixture(scope="module")
def synth_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, RunResult]:
    from pipeline.synth import synthesize

    base = tmp_path_factory.mktemp("synth")
    synthesize(base / "cc", 40, 7, "claude-code")
    synthesize(base / "cx", 20, 7, "codex")
    root = base / "lake"
    result = _run(root, [SourceSpec("claude-code", base / "cc"), SourceSpec("codex", base / "cx")])
    return root, result


def test_synth_corpus(synth_run: tuple[Path, RunResult]) -> None:
    root, result = synth_run
    _conserve(result)
    scores = table(result, root, "scores")
    categories = {s["category"] for s in scores}
    assert {"accepted", "partially_accepted", "rejected"} <= categories
    rules = {s["rule"] for s in scores}
    assert {"loop", "tests_failed", "interrupted", "final_answer"} <= rules
    by_task = {s["task_id"]: s for s in scores}
    for row in table(result, root, "sft"):
        assert by_task[row["task_id"]]["category"] == "accepted"
    for doc in table(result, root, "rag"):
        assert by_task[doc["task_id"]]["category"] in ("accepted", "partially_accepted")
    pairs = table(result, root, "preference")
    assert pairs and all(p["chosen_task_id"] != p["rejected_task_id"] for p in pairs)
    sft = receipt(result, "export-sft")
    assert sft.quarantined.get("secret_detected", 0) == 0  # collect redacted them all
    splits = {r["session_id"]: r["split"] for r in table(result, root, "sft")}
    assert len(splits) > 5


def test_rerun_is_a_cache_hit_and_reexports(synth_run: tuple[Path, RunResult], tmp_path: Path) -> None:
    root, first = synth_run
    base = root.parent
    again = _run(root, [SourceSpec("claude-code", base / "cc"), SourceSpec("codex", base / "cx")])
    for stage in EXPORTS:
        assert receipt(again, stage).cache_hit
        assert receipt(again, stage).outputs == receipt(first, stage).outputs
    assert (root / "exports" / again.run_id / "sft" / "train.jsonl").exists()


def _line(kind: str, payload: dict[str, object], second: int) -> str:
    return json.dumps({"timestamp": f"2026-04-01T10:00:{second:02d}.000Z", "type": kind, "payload": payload})


def _user_event(text: str, second: int) -> str:
    return _line("event_msg", {"type": "user_message", "message": text, "images": [], "local_images": []}, second)


def _user_item(text: str, second: int) -> str:
    return _line("response_item", {"type": "message", "role": "user",
                                   "content": [{"type": "input_text", "text": text}]}, second)


def _answer(text: str, second: int) -> list[str]:
    return [
        _line("response_item", {"type": "function_call", "name": "exec_command", "call_id": f"c{second}",
                                "arguments": json.dumps({"cmd": "pytest -q"})}, second),
        _line("response_item", {"type": "function_call_output", "call_id": f"c{second}",
                                "output": "Process exited with code 0\nOutput:\n3 passed"}, second + 1),
        _line("response_item", {"type": "message", "role": "assistant",
                                "content": [{"type": "output_text", "text": text}]}, second + 2),
        _line("event_msg", {"type": "task_complete"}, second + 3),
    ]


def _rollout(session: str, originator: str, version: str, turns: list[list[str]]) -> str:
    meta = _line("session_meta", {"id": session, "cwd": "/work/app", "originator": originator,
                                  "cli_version": version, "source": "vscode"}, 0)
    return "\n".join([meta, *(line for turn in turns for line in turn)]) + "\n"


def test_every_codex_client_s_prompts_reach_score(tmp_path: Path) -> None:
    """Where clients write the prompt's response_item twin: the CLI just before the
    user_message event; the Desktop app after the turn (0.117-era), not at all (first
    turn), or with its IDE context before the request. Each prompt is one task."""
    first, second = "Run the tests and tell me if they pass.", "Now fix the flaky one."
    ide = "# Context from my IDE setup:\n\n## Active file: app.py\n\n## My request for Codex:\n" + second
    desktop = _rollout("019d0000-0000-0000-0000-00000000000d", "Codex Desktop", "0.128.0-alpha.1", [
        [_user_event(first, 1), *_answer("All 3 tests pass.", 2)],
        [_user_item(first, 6)],  # the first prompt's twin, written after its turn
        [_user_item(ide, 7), _user_event(second, 8), *_answer("Fixed: a sleep replaced by a wait.", 9)],
    ])
    cli = _rollout("019d0000-0000-0000-0000-00000000000c", "codex_cli_rs", "0.125.0", [
        [_user_item(first, 1), _user_event(first, 2), *_answer("All 3 tests pass.", 3)],
    ])
    src = tmp_path / "src"
    src.mkdir()
    (src / "rollout-2026-04-01T10-00-00-019d0000-0000-0000-0000-00000000000d.jsonl").write_text(desktop)
    (src / "rollout-2026-04-01T10-00-00-019d0000-0000-0000-0000-00000000000c.jsonl").write_text(cli)
    root = tmp_path / "lake"
    result = _run(root, [SourceSpec("codex", src)])
    _conserve(result)
    prompts = table(result, root, "prompts")
    messages = {(m["session_id"], m["message_id"]): m for m in table(result, root, "messages")}
    assert len(prompts) == 3 and all((p["session_id"], p["message_id"]) in messages for p in prompts)
    assert sorted(m["text"] for m in messages.values() if m["role"] == "user" and not m["is_meta"]) == sorted([
        first, first, ide])  # the Desktop's late twin is a mirror (meta), not a second turn
    score = receipt(result, "score")
    assert score.quarantined.get("missing_provenance", 0) == 0
    scores = table(result, root, "scores")
    assert sorted(s["category"] for s in scores) == ["accepted"] * 3
    view = load_view(LakeLayout(root), result.run_id)
    reach = {k: v for (group, k), v in run_metrics(LakeLayout(root), view).counts.items() if group == "reach"}
    assert reach == {"codex.prompts": 3, "codex.scored": 3}  # what drift compares run to run


def test_a_session_spread_over_two_files_traces_to_both(teich_examples: Path, tmp_path: Path) -> None:
    """A resumed Claude Code session continues in a second file: every exported row of it
    names both files in `lineage`, and each message names the file it came from."""
    from pipeline.sql import connect

    lines = (teich_examples / "example_claude_code.jsonl").read_text().splitlines(keepends=True)
    src = tmp_path / "src" / "-home-user-app"
    src.mkdir(parents=True)
    half = len(lines) // 2
    (src / "first.jsonl").write_text("".join(lines[:half]))
    (src / "resumed.jsonl").write_text("".join(lines[half:]))
    root = tmp_path / "lake"
    result = _run(root, [SourceSpec("claude-code", tmp_path / "src")])
    con, _ = connect(root, result.run_id)
    per_file = dict(con.execute("SELECT regexp_extract(source_file, '[^/]+$'), count(*) FROM messages "
                                "GROUP BY ALL").fetchall())
    assert set(per_file) == {"first.jsonl", "resumed.jsonl"}
    assert per_file["first.jsonl"] > 0 and per_file["resumed.jsonl"] > 0
    fed = con.execute("SELECT dataset, regexp_extract(source_file, '[^/]+$') FROM lineage "
                      "WHERE dataset IN ('sft', 'rag') GROUP BY ALL ORDER BY ALL").fetchall()
    assert fed == [("rag", "first.jsonl"), ("rag", "resumed.jsonl"), ("sft", "first.jsonl"), ("sft", "resumed.jsonl")]
