"""The scorer: one truth-table case per rule, marker extraction, outcomes, config checks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from pipeline.export.markers import test_summary
from pipeline.stages.score import DEFAULT_RULES, RULE_ORDER, ScoreConfig, decide
from tests.exports.builders import Call, Corpus, good_task, receipt, run_pipeline, table

CLEAN: dict[str, Any] = {
    "outcome": None, "interrupted": False, "loop": False, "tests_failed": None,
    "unrecovered_error": False, "final_text_answer": True, "user_correction": False,
    "empty_args_calls": 0, "in_args_repetition": False,
}

# (rule, markers that differ from CLEAN, expected category). One case per rule.
TRUTH_TABLE = [
    ("outcome_fail", {"outcome": "fail"}, "rejected"),
    ("outcome_partial", {"outcome": "partial"}, "partially_accepted"),
    ("outcome_pass", {"outcome": "pass", "final_text_answer": False, "unrecovered_error": True},
     "accepted"),
    ("interrupted", {"interrupted": True, "user_correction": True}, "rejected"),
    ("loop", {"loop": True}, "rejected"),
    ("tests_failed", {"tests_failed": 2}, "rejected"),
    ("unrecovered_error", {"unrecovered_error": True}, "rejected"),
    ("no_final_answer", {"final_text_answer": False}, "needs_human_review"),
    ("user_correction", {"user_correction": True}, "partially_accepted"),
    ("arg_defects", {"empty_args_calls": 1}, "partially_accepted"),
    ("final_answer", {}, "accepted"),
]


def test_truth_table_covers_every_rule() -> None:
    assert [case[0] for case in TRUTH_TABLE] == list(RULE_ORDER)


@pytest.mark.parametrize(("rule", "changes", "category"), TRUTH_TABLE, ids=[c[0] for c in TRUTH_TABLE])
def test_rule(rule: str, changes: dict[str, Any], category: str) -> None:
    got_category, got_rule, reasons = decide({**CLEAN, **changes}, DEFAULT_RULES)
    assert (got_category, got_rule) == (category, rule)
    assert reasons[0] == rule


def test_tests_passing_and_repetition_are_read() -> None:
    assert decide({**CLEAN, "tests_failed": 0}, DEFAULT_RULES)[0] == "accepted"
    assert decide({**CLEAN, "in_args_repetition": True}, DEFAULT_RULES)[1] == "arg_defects"


def test_a_disabled_rule_falls_through() -> None:
    rules = ScoreConfig(rules={"loop": None}).rules
    assert decide({**CLEAN, "loop": True}, rules)[0] == "accepted"
    rules = ScoreConfig(rules={"final_answer": None}).rules
    assert decide(CLEAN, rules) == ("needs_human_review", "no_rule", ["final_answer"])


def test_only_positive_evidence_may_accept() -> None:
    with pytest.raises(ValidationError, match="cannot accept"):
        ScoreConfig(rules={"no_final_answer": "accepted"})
    with pytest.raises(ValidationError, match="unknown score rules"):
        ScoreConfig(rules={"vibes": "accepted"})


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("==== 3 failed, 10 passed, 1 skipped in 0.52s ====", (10, 3)),
        ("....\n12 passed in 0.10s\n", (12, 0)),
        ("Tests:       1 failed, 5 passed, 6 total\nTime: 1s", (5, 1)),
        ("test result: ok. 7 passed; 0 failed; 0 ignored\ntest result: FAILED. 1 passed; 2 failed;", (8, 2)),
        ("=== RUN TestA\n--- PASS: TestA (0.00s)\n--- FAIL: TestB (0.00s)\nFAIL\tpkg/x\t0.01s\n", (1, 2)),
        ("ok  \tgithub.com/x/y\t0.01s\n", (1, 0)),
        ("nothing to see here", None),
    ],
)
def test_test_summaries(text: str, expected: tuple[int, int] | None) -> None:
    assert test_summary(text) == expected


def _scores(tmp_path: Path, corpus: Corpus, outcomes: Path | None = None) -> dict[str, dict[str, Any]]:
    result = run_pipeline(corpus, tmp_path / "lake", outcomes=outcomes)
    assert receipt(result, "score").status == "ok", receipt(result, "score").validation
    return {r["task_id"]: r for r in table(result, tmp_path / "lake", "scores")}


def test_markers_from_traces(tmp_path: Path) -> None:
    corpus = Corpus()
    good = good_task(corpus.session("good"), "Fix the parser bug in the tokenizer module")
    loop = corpus.session("loop").task(
        "Make the build green",
        *[("", [Call("Bash", {"command": "make"}, "error", True)]) for _ in range(3)],
        "I give up.",
    )
    empty = corpus.session("empty").task(
        "Read the config", ("", [Call("Read", {}, "missing file_path", True)]),
        ("", [Call("Read", {"file_path": "a"}, "x")]), "Here it is.",
    )
    repeated = corpus.session("rep").task(
        "Write the file", ("", [Call("Write", {"file_path": "f", "content": "x = 1\n" * 6})]), "Written.",
    )
    tests = corpus.session("tests").task(
        "Run the tests", ("", [Call("Bash", {"command": "pytest -q"}, "2 failed, 5 passed in 0.3s")]),
        "Two tests fail.",
    )
    unrecovered = corpus.session("unrec").task(
        "Deploy it", ("", [Call("Bash", {"command": "deploy"}, "boom", True)]), "It failed."
    )
    silent = corpus.session("silent").task("Do the thing", ("", [Call("Bash", {"command": "ls"}, "a")]))
    pushed = corpus.session("pushed")
    good_task(pushed, "Refactor the module into two files")
    pushed.task("no, that's not what I asked, revert it", "Reverted.")
    interrupted = corpus.session("intr")
    interrupted.prompt("Rewrite everything in Rust")
    interrupted.assistant("", [Call("Bash", {"command": "cargo init"}, "ok")])
    interrupted.user("[Request interrupted by user]")
    scores = _scores(tmp_path, corpus)
    by_session = {s["session_id"]: s for s in scores.values() if s["prompt_number"] == 0}

    def first(session: Any) -> dict[str, Any]:
        return by_session[session.session_id]

    assert first(good)["category"] == "accepted" and first(good)["n_tool_calls"] == 2
    assert first(loop)["loop"] and first(loop)["category"] == "rejected"
    assert first(loop)["n_tool_errors"] == 3
    assert first(empty)["empty_args_calls"] == 1 and first(empty)["category"] == "partially_accepted"
    assert first(repeated)["in_args_repetition"] and first(repeated)["rule"] == "arg_defects"
    assert (first(tests)["tests_passed"], first(tests)["tests_failed"]) == (5, 2)
    assert first(tests)["rule"] == "tests_failed"
    assert first(unrecovered)["unrecovered_error"] and first(unrecovered)["category"] == "rejected"
    assert first(silent)["category"] == "needs_human_review"
    assert first(pushed)["user_correction"] and first(pushed)["category"] == "partially_accepted"
    assert first(interrupted)["interrupted"] and first(interrupted)["category"] == "rejected"
    assert all(s["scorer_version"] == "1.0.0" for s in scores.values())


def test_subagent_calls_count_toward_the_spawning_task(tmp_path: Path) -> None:
    corpus = Corpus()
    parent = corpus.session("parent")
    parent.task("Investigate the flaky test suite thoroughly",
                ("", [Call("Task", {"prompt": "look", "description": "d"}, "found it")]), "Found it.")
    spawn = parent.calls[0]["tool_use_id"]
    child = corpus.subagent(parent, spawn, "agent-1")
    child.prompt("look")
    child.assistant("", [Call("Bash", {"command": "pytest"}, "boom", True)])
    child.assistant("done")
    result = run_pipeline(corpus, tmp_path / "lake")
    (score,) = table(result, tmp_path / "lake", "scores")
    (task,) = table(result, tmp_path / "lake", "tasks")
    assert task["subagent_session_ids"] == ["agent-1"]
    assert (score["n_tool_calls"], score["n_tool_errors"]) == (2, 1)
    assert score["category"] == "accepted"  # the subagent recovered; the parent answered


def test_outcomes_override_and_quarantine(tmp_path: Path) -> None:
    corpus = Corpus()
    a = good_task(corpus.session("a"), "Add a CLI flag for verbose output")
    b = good_task(corpus.session("b"), "Add a CLI flag for quiet output")
    c = corpus.session("c").task("Try something", ("", [Call("Bash", {"command": "x"}, "e", True)]))
    task_a, task_c = a.prompts[0]["prompt_id"], c.prompts[0]["prompt_id"]
    outcomes = tmp_path / "outcomes.jsonl"
    lines = [
        {"task_id": task_a, "verdict": "pass", "created_at": "2026-01-01T00:00:00Z"},
        {"task_id": task_a, "verdict": "reverted", "created_at": "2026-01-02T00:00:00Z", "note": "rolled back"},
        {"session_id": "c", "verdict": "pass", "created_at": "2026-01-01T00:00:00Z"},
        {"session_id": "b", "verdict": "fail"},  # no created_at: quarantined, not guessed
        {"task_id": "nope", "verdict": "pass", "created_at": "2026-01-01T00:00:00Z"},
        {"task_id": task_a, "verdict": "meh", "created_at": "2026-01-01T00:00:00Z"},
    ]
    outcomes.write_text("\n".join(json.dumps(x) for x in lines) + "\nnot json\n")
    scores = _scores(tmp_path, corpus, outcomes)
    assert scores[task_a]["category"] == "rejected" and scores[task_a]["outcome_note"] == "rolled back"
    assert scores[task_c]["category"] == "accepted" and scores[task_c]["rule"] == "outcome_pass"
    assert scores[b.prompts[0]["prompt_id"]]["category"] == "accepted"
    result = run_pipeline(corpus, tmp_path / "lake", outcomes=outcomes)
    r = receipt(result, "score")
    assert r.quarantined == {"missing_created_at": 1, "schema_violation": 2, "unmatched_outcome": 1}
    assert r.filtered == {"outcome_superseded": 1}
    assert r.records_in == 3 + 7 and r.stats["outcomes_applied"] == 2
    quarantine = table(result, tmp_path / "lake", "score_quarantine")
    assert {q["reason"] for q in quarantine} == {"missing_created_at", "schema_violation", "unmatched_outcome"}
