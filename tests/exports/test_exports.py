"""SFT, RAG and preference exports on hand-made corpora: filters, cap, split, dedupe, pairs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pipeline.stages.export_sft import apply_cap, cap_limit, split_of
from tests.exports.builders import Call, Corpus, good_task, receipt, run_pipeline, table


def _exports(result: Any, root: Path) -> Path:
    return root / "exports" / result.run_id


def _conserves(r: Any) -> None:
    assert r.records_in == r.records_out + sum(r.quarantined.values()) + sum(r.filtered.values())


def test_sft_rows_filters_and_files(tmp_path: Path) -> None:
    corpus = Corpus()
    good = good_task(corpus.session("good"), "Fix the off-by-one in the pager", "Fixed the pager.")
    good.messages[-3]["thinking"] = "The pager loop should stop at n-1."
    corpus.session("todo").task(
        "Plan and fix the date parser bug please",
        ("", [Call("TodoWrite", {"todos": [{"content": "fix"}]}, "ok")]),
        ("", [Call("Read", {"file_path": "d.py"}, "code")]),
        "Fixed the parser.",
    )
    corpus.session("todotalk").task(  # the turns describe the todo list: without the call, the row goes
        "Plan and fix the time parser bug please",
        ("I'll track the fix in a todo list first.", [Call("TodoWrite", {"todos": [{"content": "fix"}]}, "ok")]),
        ("", [Call("Read", {"file_path": "t.py"}, "code")]),
        "Fixed the parser; all todos are done.",
    )
    corpus.session("short").task("What does this repo do, in one line?", "It parses logs.")
    corpus.session("long").task(
        "Write the generated fixture file for me",
        ("", [Call("Write", {"file_path": "f.txt", "content": "y" * 2500})]), "Written.",
    )
    corpus.session("token").task(
        "Explain the chat template markers", ("", [Call("Read", {"file_path": "t.jinja"}, "x")]),
        "It uses <|im_start|> to open a turn.",
    )
    corpus.session("secret").task(
        "Set up the deploy credentials",
        ("", [Call("Bash", {"command": "export AWS_ACCESS_KEY_ID=AKIAQ4RZ7WX2M5TBN6YP"}, "ok")]),
        "Done.",
    )
    corpus.session("summary").task(
        "This session is being continued from a previous conversation that ran out of context.",
        ("", [Call("Read", {"file_path": "x"}, "x")]), "Continuing.",
    )
    corpus.session("bad").task("Break things", ("", [Call("Bash", {"command": "rm -rf /"}, "no", True)]), "Oops.")
    root = tmp_path / "lake"
    result = run_pipeline(corpus, root)
    r = receipt(result, "export-sft")
    assert r.status == "ok", r.validation.errors
    _conserves(r)
    assert r.records_in == 9
    # The rejected "bad" task: rejected work is unsafe for SFT whatever the opt-ins.
    assert r.quarantined == {"unsafe_sft_category": 1, "copied_context": 1, "secret_detected": 1,
                             "template_token_in_content": 1}
    assert r.filtered == {"long_argument": 1, "too_few_turns": 1, "skipped_tool_turns": 1}
    assert r.stats["skip_tool_calls_removed"] == 2
    rows = {row["session_id"]: row for row in table(result, root, "sft")}
    assert set(rows) == {"good", "todo"}
    messages = json.loads(rows["good"]["messages"])
    assert [m["role"] for m in messages] == ["user", "assistant", "tool", "assistant", "tool", "assistant"]
    assert messages[1]["tool_calls"][0]["function"] == {"name": "Read", "arguments": {"file_path": "/work/project/good.py"}}
    assert messages[2]["tool_call_id"] == messages[1]["tool_calls"][0]["id"] and messages[2]["name"] == "Read"
    assert messages[3]["reasoning_content"] == "The pager loop should stop at n-1."
    assert "TodoWrite" not in rows["todo"]["messages"]
    tools = json.loads(rows["good"]["tools"])
    assert [t["function"]["name"] for t in tools] == ["Edit", "Read"]
    assert tools[0]["function"]["parameters"]["required"] == ["file_path", "old_string", "new_string"]
    out = _exports(result, root) / "sft"
    assert {p.name for p in out.iterdir()} >= {"train.jsonl", "valid.jsonl", "train.parquet", "valid.parquet"}
    lines = [json.loads(x) for x in (out / "train.jsonl").read_text().splitlines()]
    lines += [json.loads(x) for x in (out / "valid.jsonl").read_text().splitlines()]
    assert {x["session_id"] for x in lines} == {"good", "todo"}
    assert isinstance(lines[0]["messages"], list) and isinstance(lines[0]["tools"], list)
    names = {x["name"] for x in table(result, root, "tool_schemas")}
    assert {"Read", "Edit", "Bash", "TodoWrite", "Write"} <= names


def test_thinking_stripped_warns(tmp_path: Path) -> None:
    corpus = Corpus()
    good_task(corpus.session("s"), "Fix the thing in the module").messages[1]["thinking"] = "hmm"
    result = run_pipeline(corpus, tmp_path / "lake", {"export-sft": {"keep_thinking": False}})
    r = receipt(result, "export-sft")
    assert r.stats["warnings"] and "reasoning_content" not in table(result, tmp_path / "lake", "sft")[0]["messages"]


def test_include_partial_is_an_explicit_opt_in(tmp_path: Path) -> None:
    corpus = Corpus()
    s = good_task(corpus.session("s"), "Refactor the module into two files")
    s.task("no, that's wrong, revert it", "Reverted.")
    good_task(corpus.session("t"), "Add a retry to the HTTP client")
    default = run_pipeline(corpus, tmp_path / "a")
    assert {r["category"] for r in table(default, tmp_path / "a", "sft")} == {"accepted"}
    opted = run_pipeline(corpus, tmp_path / "b", {"export-sft": {"include_partial": True}})
    rows = table(opted, tmp_path / "b", "sft")
    assert {r["category"] for r in rows} == {"accepted", "partially_accepted"}
    assert receipt(opted, "export-sft").stats["include_partial"] is True


def test_200_copies_become_one_row(tmp_path: Path) -> None:
    corpus = Corpus()
    for i in range(200):
        good_task(corpus.session(f"copy{i:03d}"), "Fix the flaky date test in utils",
                  "Fixed: the test now freezes time.")
        # the copies share content; make the file paths identical too
        for call in corpus.sessions[-1].calls:
            call["input_json"] = call["input_json"].replace(f"copy{i:03d}", "utils")
    near = corpus.session("near")
    good_task(near, "Fix the flaky date test in utils", "Fixed: the test now freezes the time.")
    for call in near.calls:
        call["input_json"] = call["input_json"].replace("near", "utils")
    root = tmp_path / "lake"
    result = run_pipeline(corpus, root)
    for stage in ("export-sft", "export-rag", "export-preference"):
        r = receipt(result, stage)
        _conserves(r)
        assert r.filtered["exact_duplicate"] == 199 and r.filtered["near_duplicate"] == 1, (stage, r.filtered)
    assert len(table(result, root, "sft")) == 1
    assert len(table(result, root, "rag")) == 1
    assert len(table(result, root, "kto")) == 1


def test_cap_and_split() -> None:
    assert cap_limit({"a": 100, "b": 1, "c": 1}, 0.2, 5) == 5
    assert cap_limit({c: 10 for c in "abcdefghij"}, 0.2, 0) == 10
    counts = {"Bash:git": 60, "Read": 10, "Edit": 10, "Grep": 10, "Glob": 10, "Bash:pytest": 10}
    cats = {f"{c}-{i}": c for c, n in counts.items() for i in range(n)}
    dropped = apply_cap(cats, 0.2, 0, 42)
    kept = [c for t, c in cats.items() if t not in dropped]
    assert max(kept.count(c) for c in counts) <= 0.2 * len(kept)
    assert dropped == apply_cap(cats, 0.2, 0, 42) and dropped != apply_cap(cats, 0.2, 0, 7)
    sides = {split_of(f"s{i}", 0.05, 42) for i in range(400)}
    assert sides == {"train", "valid"}
    share = sum(split_of(f"s{i}", 0.05, 42) == "valid" for i in range(4000)) / 4000
    assert 0.03 < share < 0.07


def test_rag_playbooks(tmp_path: Path) -> None:
    corpus = Corpus()
    good_task(corpus.session("good"), "Fix the off-by-one in the pager", "Fixed the pager.")
    corpus.session("bad").task("Break things", ("", [Call("Bash", {"command": "make"}, "no", True)]), "Oops.")
    s = corpus.session("partial")
    good_task(s, "Rename the module to tracelake")
    s.task("no, that's wrong, undo that", "Undone.")
    corpus.session("review").task("Look around", ("", [Call("Bash", {"command": "ls"}, "a")]))
    root = tmp_path / "lake"
    result = run_pipeline(corpus, root)
    r = receipt(result, "export-rag")
    # "bad" is rejected (never RAG material); "review" needs a human (admitted by --include-review).
    assert r.status == "ok" and r.quarantined == {"unsafe_rag_category": 1, "category_disallowed": 1}
    all_docs = table(result, root, "rag")
    assert {d["category"] for d in all_docs} == {"accepted", "partially_accepted"}
    docs = {d["session_id"]: d for d in all_docs}
    assert set(docs) == {"good", "partial"}
    doc = docs["good"]
    assert doc["files_touched"] == ["/work/project/good.py"] and doc["final_answer"] == "Fixed the pager."
    assert json.loads(doc["steps"])[0] == {"tool": "Read", "args": {"file_path": "/work/project/good.py"}}
    assert doc["source_file"].endswith("good.jsonl") and "## Steps" in doc["text"]
    lines = (_exports(result, root) / "rag" / "playbooks.jsonl").read_text().splitlines()
    assert len(lines) == 3 and isinstance(json.loads(lines[0])["steps"], list)
    opted = run_pipeline(corpus, tmp_path / "b", {"export-rag": {"include_review": True}})
    assert {d["category"] for d in table(opted, tmp_path / "b", "rag")} == {
        "accepted", "partially_accepted", "needs_human_review"}


def test_preference_pairs(tmp_path: Path) -> None:
    corpus = Corpus()
    prompt = "Add input validation to the signup form"
    words = "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike".split()
    for i in range(7):  # seven distinct accepted attempts of the same prompt in one project
        good_task(corpus.session(f"ok{i}"), prompt, " ".join(words[i:] + words[:i]) * 3)
    for i in range(2):
        corpus.session(f"bad{i}").task(
            prompt, ("", [Call("Bash", {"command": f"npm test {' '.join(words[i * 5:])}"}, "x", True)]),
            f"It fails: {' '.join(reversed(words[i * 4:]))}.")
    corpus.session("elsewhere", cwd="/other").task(prompt, ("", [Call("Bash", {"command": "x"}, "e", True)]), "No.")
    # An edited prompt: the first version was abandoned and went badly.
    s = corpus.session("edit")
    root_msg = s.user("context")
    first = s.prompt("Make the logo bigger on the landing page", parent=root_msg)
    s.assistant("", [Call("Bash", {"command": "open logo"}, "err", True)])
    second = s.prompt("Make the logo twice as big on the landing page", parent=root_msg)
    s.assistant("", [Call("Edit", {"file_path": "l.css", "old_string": "1", "new_string": "2"}, "ok")])
    s.assistant("Done, the logo is twice as big.")
    corpus.branch(s, root_msg, [first, second])
    root = tmp_path / "lake"
    result = run_pipeline(corpus, root)
    r = receipt(result, "export-preference")
    assert r.status == "ok", r.validation.errors
    _conserves(r)
    pairs = table(result, root, "preference")
    sources = {p["pair_source"] for p in pairs}
    assert sources == {"branch_sibling", "same_prompt"}
    per_task: dict[str, int] = {}
    for p in pairs:
        assert p["chosen_task_id"] != p["rejected_task_id"] and p["chosen"] != p["rejected"]
        assert (p["chosen_category"], p["rejected_category"]) == ("accepted", "rejected")
        for t in (p["chosen_task_id"], p["rejected_task_id"]):
            per_task[t] = per_task.get(t, 0) + 1
    assert max(per_task.values()) <= 5
    assert sum(p["pair_source"] == "same_prompt" for p in pairs) == 10  # 2 rejected x 5 max
    branch = next(p for p in pairs if p["pair_source"] == "branch_sibling")
    assert json.loads(branch["prompt"])[0]["content"].startswith("Make the logo twice")
    assert json.loads(branch["chosen"])[-1]["content"] == "Done, the logo is twice as big."
    kto = table(result, root, "kto")
    assert {k["label"] for k in kto} == {True, False}
    assert all(k["label"] == (k["category"] == "accepted") for k in kto)
    exports = _exports(result, root)
    assert sorted(p.name for p in (exports / "preference").iterdir()) == ["README.md", "preference.jsonl"]
    # its own folder: other columns
    assert sorted(p.name for p in (exports / "kto").iterdir()) == ["README.md", "kto.jsonl"]


def test_turns_about_a_removed_tool_are_found() -> None:
    from pipeline.export.conversation import strip_tools, talks_about

    call = {"id": "c1", "type": "function", "function": {"name": "TodoWrite", "arguments": {"todos": []}}}
    messages = [
        {"role": "user", "content": "Fix the todo app's date bug"},  # the user's words do not count
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "c1", "name": "TodoWrite", "content": "ok"},
        {"role": "assistant", "content": "Fixed."},
    ]
    kept, removed, tools = strip_tools(messages, {"TodoWrite"})
    assert (removed, tools, [m["role"] for m in kept]) == (1, {"TodoWrite"}, ["user", "assistant"])
    assert not talks_about(kept, tools)
    for said in ("Updating the to-do list.", "All TODOs done.", "I called TodoWrite.", "My todo items:"):
        assert talks_about([*kept, {"role": "assistant", "content": said}], tools), said
    assert talks_about([{"role": "assistant", "content": "", "reasoning_content": "tick the todo"}], tools)
    assert not talks_about([{"role": "assistant", "content": "Plan mode is off."}], tools)
    assert talks_about([{"role": "assistant", "content": "Plan mode is off."}], {"ExitPlanMode"})
