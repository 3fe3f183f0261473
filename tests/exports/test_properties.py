"""Invariants: no rejected or needs_human_review task reaches SFT, whatever the config.

Hypothesis draws legal score rules (any category per rule, rules turned off) and export
knobs short of the explicit opt-ins, runs the real stages through the runner on a corpus
holding every kind of task, and checks the written SFT table and files.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.stages.score import DEFAULT_RULES, POSITIVE_RULES, decide
from schemas.datasets import CATEGORIES
from tests.exports.builders import Call, Corpus, good_task, receipt, run_pipeline, table


def _corpus() -> Corpus:
    corpus = Corpus()
    good_task(corpus.session("good"), "Fix the pager off-by-one error")
    corpus.session("loop").task(
        "Make the build green again please",
        *[("", [Call("Bash", {"command": "make"}, "error", True)]) for _ in range(3)], "Gave up.",
    )
    corpus.session("tests").task(
        "Run the whole test suite now",
        ("", [Call("Bash", {"command": "pytest"}, "1 failed, 3 passed in 0.2s")]),
        ("", [Call("Read", {"file_path": "t.py"}, "x")]), "One test fails.",
    )
    corpus.session("silent").task("Look around the repository", ("", [Call("Bash", {"command": "ls"}, "a")]))
    pushed = corpus.session("pushed")
    good_task(pushed, "Rename the package to tracelake")
    pushed.task("no, that's wrong, undo that", ("", [Call("Bash", {"command": "git checkout ."}, "ok")]),
                "Undone.")
    corpus.session("defect").task(
        "Read the settings file for me",
        ("", [Call("Read", {}, "missing", True)]), ("", [Call("Read", {"file_path": "s"}, "x")]), "Here.",
    )
    return corpus


CORPUS = _corpus()

rule_values = st.sampled_from([None, *CATEGORIES])


@st.composite
def score_rules(draw: st.DrawFn) -> dict[str, str | None]:
    rules: dict[str, str | None] = {}
    for name in DEFAULT_RULES:
        value = draw(rule_values)
        if value == "accepted" and name not in POSITIVE_RULES:
            value = "rejected"
        rules[name] = value
    return rules


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    rules=score_rules(),
    keep_thinking=st.booleans(),
    cap=st.floats(0.05, 1.0),
    cap_min_rows=st.integers(0, 3),
    min_turns=st.integers(1, 3),
    valid_fraction=st.floats(0, 1),
    skip=st.lists(st.sampled_from(["Read", "Bash", "TodoWrite"]), max_size=2),
)
def test_no_disallowed_category_reaches_sft(
    tmp_path_factory: Any, rules: dict[str, str | None], keep_thinking: bool, cap: float,
    cap_min_rows: int, min_turns: int, valid_fraction: float, skip: list[str],
) -> None:
    root: Path = tmp_path_factory.mktemp("prop") / "lake"
    config = {
        "score": {"rules": rules},
        "export-sft": {"keep_thinking": keep_thinking, "category_cap": cap, "cap_min_rows": cap_min_rows,
                       "min_assistant_turns": min_turns, "valid_fraction": valid_fraction,
                       "skip_tools": skip},
    }
    result = run_pipeline(CORPUS, root, config)
    assert result.ok, [o.receipt.validation.errors for o in result.outcomes if o.receipt]
    scores = {s["task_id"]: s["category"] for s in table(result, root, "scores")}
    rows = table(result, root, "sft")
    assert all(r["category"] == "accepted" == scores[r["task_id"]] for r in rows)
    out = root / "exports" / result.run_id / "sft"
    for split in ("train", "valid"):
        for line in (out / f"{split}.jsonl").read_text().splitlines():
            assert scores[json.loads(line)["task_id"]] == "accepted"
    r = receipt(result, "export-sft")
    assert r.records_in == r.records_out + sum(r.quarantined.values()) + sum(r.filtered.values())
    rag = table(result, root, "rag")
    assert all(scores[d["task_id"]] in ("accepted", "partially_accepted") for d in rag)


@settings(max_examples=300, deadline=None)
@given(
    rules=score_rules(),
    markers=st.fixed_dictionaries({
        "outcome": st.sampled_from([None, "pass", "fail", "partial"]),
        "interrupted": st.booleans(), "loop": st.booleans(),
        "tests_failed": st.one_of(st.none(), st.integers(0, 3)),
        "unrecovered_error": st.booleans(), "final_text_answer": st.booleans(),
        "user_correction": st.booleans(), "empty_args_calls": st.integers(0, 2),
        "in_args_repetition": st.booleans(),
    }),
)
def test_accepted_needs_positive_evidence(rules: dict[str, str | None], markers: dict[str, Any]) -> None:
    from pipeline.stages.score import ScoreConfig

    category, rule, reasons = decide(markers, ScoreConfig(rules=rules).rules)
    assert category in CATEGORIES and (rule == "no_rule" or rule in reasons)
    if category == "accepted":
        positive = markers["outcome"] == "pass" or (
            markers["final_text_answer"] and not markers["unrecovered_error"]
        )
        assert positive
