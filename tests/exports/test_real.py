"""End to end through the real collect stage: the teich sessions and a synthetic corpus."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from pipeline.core.runner import Runner, RunOptions, RunResult
from pipeline.core.sources import SourceSpec
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
