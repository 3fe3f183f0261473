"""The column-wise fast paths equal their per-row references, byte for byte.

Score's polars conversation builder against the per-task Python builder (and the old
per-conversation scan, digests and dedupe keys); the lazy preference pairing against
the materialise-everything one; the vectorised dedupe collapse, JSONL rendering, JSON
string encoding and row ids against their straightforward definitions.
"""

from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import polars as pl
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.core.hashing import digest_json
from pipeline.core.runner import Runner, RunOptions
from pipeline.core.sources import SourceSpec
from pipeline.core.store import LakeLayout
from pipeline.export.common import CATEGORY_RANK, Quarantine, dumps, row_id
from pipeline.export.conversation import CallFacts, build_conversations, features_of, join_messages
from pipeline.export.dedupe import DEFAULT_SIGNATURE, collapse, dedupe_keys
from pipeline.export.firewall import StringScan, json_digest, render_jsonl
from pipeline.export.frames import PY_WHITESPACE, json_str
from pipeline.export.prepare import conversations_table, required_of
from pipeline.export.tasks import assemble
from pipeline.export.tools import derive_schemas, parse_args
from pipeline.stages.export_preference import PAIRINGS, plan_pairs
from pipeline.stages.registry import STAGES
from pipeline.stages.score import MESSAGE_COLUMNS
from schemas.records import COLLECT_TABLES
from tests.exports.builders import Call, Corpus, good_task

SECRET = "AKIA" + "Q4RZ7WX2M5TBN6YP"  # random-looking: the documented example key is not a secret

# --- score's conversations --------------------------------------------------------------


def reference_conversations(tables: dict[str, pl.DataFrame]) -> list[dict[str, Any]]:
    """The conversations table as the per-task Python builder made it (rows by task)."""
    messages = tables["messages"].select(MESSAGE_COLUMNS)
    assembled = assemble(tables["sessions"], messages, tables["prompts"], tables["tool_calls"],
                         tables["subagents"], Quarantine("score"))
    calls, parsed, facts = _calls(tables["sessions"], assembled.calls)
    built = build_conversations(assembled.tasks, assembled.messages, calls, tables["branches"], parsed)
    meta = {t: (s, n, k) for t, s, n, k in assembled.tasks.select(
        "task_id", "session_id", "prompt_number", "source_kind").iter_rows()}
    rows, scan = [], StringScan()
    for b in built:
        session_id, number, kind = meta[b.task_id]
        prompt, completion = dumps(b.messages[:1]), dumps(b.messages[1:])
        row = {"task_id": b.task_id, "session_id": session_id, "prompt_number": number, "source_kind": kind,
               "n_messages": len(b.messages), "prompt": prompt, "completion": completion,
               "copied_context": b.copied_context, "truncated_args": b.truncated_args,
               **features_of(b.messages, facts, b.call_ids),
               "json_digests": [json_digest(prompt), json_digest(completion),
                                json_digest(join_messages(prompt, completion))]}
        row["steps"] = dumps(row["steps"])
        scan.add_messages(b.messages)
        rows.append(row)
    digests, sigs = dedupe_keys([scan.text(g) for g in range(len(rows))], *DEFAULT_SIGNATURE)
    for row, (kinds, token), digest, sig in zip(rows, scan.results(), digests, sigs, strict=True):
        row.update(secret_kinds=kinds, template_token=token, text_digest=digest, minhash=sig.tolist())
    return rows


def _calls(sessions: pl.DataFrame, calls: pl.DataFrame) -> tuple[pl.DataFrame, list[dict[str, Any]], CallFacts]:
    calls = calls.join(sessions.select("session_id", "source_kind"), on="session_id", how="left").with_columns(
        pl.col("source_kind").fill_null("unknown"))
    parsed = [parse_args(s) for s in calls["input_json"].to_list()]
    kinds, names = calls["source_kind"].to_list(), calls["name"].to_list()
    schemas = derive_schemas(zip(kinds, names, parsed, strict=True))
    return calls, parsed, CallFacts.of(kinds, names, parsed, required_of(schemas))


def fast_conversations(tables: dict[str, pl.DataFrame], split: bool = False) -> list[dict[str, Any]]:
    messages = tables["messages"].select(MESSAGE_COLUMNS)
    assembled = assemble(tables["sessions"], messages, tables["prompts"], tables["tool_calls"],
                         tables["subagents"], Quarantine("score"))
    calls, parsed, facts = _calls(tables["sessions"], assembled.calls)
    with ThreadPoolExecutor(max_workers=2) as pool:  # split: sessions built in two halves
        table = conversations_table(assembled.tasks, assembled.messages, calls, parsed, tables["branches"], facts,
                                    pool if split else None)
    return table.to_pylist()


def tricky_corpus() -> Corpus:
    """Turns split over rows, blank and whitespace texts, thinking-only rows, abandoned
    branches, compaction and copied history, secrets split across merged rows, template
    tokens, free-text and nested arguments, truncated inputs, control characters."""
    corpus = Corpus()
    good_task(corpus.session("plain"), "Fix the pager", "Fixed.")
    s = corpus.session("split")
    s.prompt("Refactor the parser into two modules")
    s.assistant("Let me look.")
    s.assistant("", thinking="  The parser has two halves.  ")
    s.assistant("   ", thinking="\n")
    s.assistant("password=", thinking="think\x01 again")
    s.assistant("hunter2hunter2hunter2", calls=[Call("Read", {"file_path": "p.py"}, "line\n" * 5),
                                               Call("Bash", {"command": "cd x && pytest -q"}, None)])
    s.assistant("", calls=[Call("Write", {"file_path": "a.py", "content": "x\ny\n" * 4,
                                          "meta": {"n": [1, 2.5, True, None, "deep é"]}}, "é\u2028\x7f")])
    s.assistant("Done <|im_start|> here.")
    s.prompt("   ")
    s.assistant("", calls=[Call("apply_patch", {"input": "*** Update File: src/a.py\n@@"}, "ok")])
    s.calls[-1]["input_json"] = "free text, not JSON"
    s.calls[-1]["input_truncated_bytes"] = 12
    s.prompt("This session is being continued from a previous conversation.")
    s.assistant("ok")
    b = corpus.session("branch")
    root = b.prompt("Add a retry to the client")
    first = b.assistant("Trying one way.", calls=[Call("Edit", {"file_path": "c.py", "old_string": "",
                                                                "new_string": "retry"}, "ok")])
    b.assistant("Nested under the abandoned edit.")
    second = b.assistant("The other way.", calls=[Call("Grep", {"pattern": f"key {SECRET}"}, "none")])
    b.messages[-2]["parent_id"] = root
    corpus.branch(b, root, [first, second])
    b.user("Summary of the work so far", is_compact_summary=True)
    b.assistant("Final answer after compaction.")
    c = corpus.session("codex", source_kind="codex")
    c.task("Run the tests", ("", [Call("shell", {"command": ["bash", "-lc", "go test ./..."]}, "ok  pkg 0.1s")]),
           "All green.")
    c.task("No tools this time", "Just text.")
    corpus.session("empty").prompt("A prompt with nothing after it")
    return corpus


def _collect_tables(corpus: Corpus) -> dict[str, pl.DataFrame]:
    return {name: pl.from_arrow(t) for name, t in corpus.tables().items()}  # type: ignore[misc]


@pytest.mark.parametrize("split", [False, True])
def test_conversation_frame_equals_reference_on_tricky_rows(split: bool) -> None:
    tables = _collect_tables(tricky_corpus())
    fast, slow = fast_conversations(tables, split), reference_conversations(tables)
    assert [r["task_id"] for r in fast] == [r["task_id"] for r in slow]
    for f, s in zip(fast, slow, strict=True):
        assert f == s, f["task_id"]
    by_session = {r["session_id"]: r for r in fast if r["prompt_number"] == 0}
    assert by_session["split"]["template_token"] == "<|im_start|>"
    assert by_session["branch"]["secret_kinds"] and "Nested under" not in by_session["branch"]["completion"]


@pytest.fixture(scope="module")
def synth_tables(tmp_path_factory: pytest.TempPathFactory) -> dict[str, pl.DataFrame]:
    from pipeline.synth import synthesize

    base = tmp_path_factory.mktemp("equiv")
    synthesize(base / "cc", 16, 11, "claude-code")
    synthesize(base / "cx", 8, 11, "codex")
    root = base / "lake"
    result = Runner(STAGES, RunOptions(root=root, sources=[SourceSpec("claude-code", base / "cc"),
                                                           SourceSpec("codex", base / "cx")],
                                       recorded_at="2026-01-01T00:00:00Z", workers=1)).run(["collect"])
    assert result.ok
    layout = LakeLayout(root)
    return {name: pl.read_parquet(layout.root / result.summary.tables[name].path) for name in COLLECT_TABLES}


def test_conversation_frame_equals_reference_on_synth_sessions(synth_tables: dict[str, pl.DataFrame]) -> None:
    fast, slow = fast_conversations(synth_tables, split=True), reference_conversations(synth_tables)
    assert len(fast) == len(slow) > 20
    for f, s in zip(fast, slow, strict=True):
        assert f == s, f["task_id"]


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_json_str_is_orjson(text: str) -> None:
    if any(0xD800 <= ord(ch) <= 0xDFFF for ch in text):
        return  # not representable in Arrow or orjson
    out = pl.DataFrame({"s": [text, None]}).select(json_str(pl.col("s")))["s"].to_list()
    assert out == [orjson.dumps(text).decode(), "null"]


def test_python_whitespace_set() -> None:
    assert PY_WHITESPACE == "".join(chr(c) for c in range(0x110000) if chr(c).isspace())


# --- preference pairing -----------------------------------------------------------------


def reference_plan(groups: list[tuple[str, list[str]]], category: dict[str, str], digest: dict[str, str],
                   n_messages: dict[str, int], cap: int) -> tuple[list[tuple[str, str, str]], set[tuple[str, str]], int]:
    """Every candidate materialised, ranked, then walked (the original algorithm)."""
    seen: set[frozenset[str]] = set()
    ranked = []
    for source_rank, (source, ids) in enumerate(sorted(groups, key=lambda g: g[0])):
        for a, b in combinations(sorted(set(ids)), 2):
            if CATEGORY_RANK[category[a]] < CATEGORY_RANK[category[b]]:
                a, b = b, a
            key = frozenset((a, b))
            if key in seen or (category[a], category[b]) not in PAIRINGS:
                continue
            seen.add(key)
            ranked.append((PAIRINGS.index((category[a], category[b])), source_rank, a, b, source))
    ranked.sort()
    per_task: Counter[str] = Counter()
    pairs, invalid, capped = [], set(), 0
    for _, _, a, b, source in ranked:
        if digest[a] == digest[b] or n_messages[a] <= 1 or n_messages[b] <= 1:
            invalid.add((a, b))
        elif per_task[a] >= cap or per_task[b] >= cap:
            capped += 1
        else:
            per_task[a] += 1
            per_task[b] += 1
            pairs.append((a, b, source))
    return pairs, invalid, capped


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_lazy_pairing_equals_materialised(data: st.DataObject) -> None:
    n = data.draw(st.integers(2, 40))
    tasks = [f"t{i:02d}" for i in range(n)]
    category = {t: data.draw(st.sampled_from(sorted(CATEGORY_RANK))) for t in tasks}
    digest = {t: data.draw(st.sampled_from("abcdefgh")) for t in tasks}
    n_messages = {t: data.draw(st.sampled_from([1, 3, 3, 3, 5])) for t in tasks}
    # Same-prompt groups partition the tasks; branch groups overlap them.
    prompt_of = {t: data.draw(st.integers(0, 3)) for t in tasks}
    groups = [("same_prompt", [t for t in tasks if prompt_of[t] == p]) for p in range(4)]
    groups = [g for g in groups if len(g[1]) > 1]
    for _ in range(data.draw(st.integers(0, 3))):
        groups.append(("branch_sibling", data.draw(st.lists(st.sampled_from(tasks), min_size=2, max_size=6,
                                                             unique=True))))
    cap = data.draw(st.integers(1, 4))
    plan = plan_pairs(groups, category, digest, n_messages, cap)
    pairs, invalid, capped = reference_plan(groups, category, digest, n_messages, cap)
    assert plan.pairs == pairs
    assert sorted(plan.invalid) == sorted(invalid) and len(plan.invalid) == len(invalid)
    assert plan.capped == capped


# --- dedupe, rendering, ids -------------------------------------------------------------


def reference_collapse(ids: list[str], digests: list[str], sigs: np.ndarray, threshold: float) -> tuple[
        list[str], dict[str, str], dict[str, str]]:
    kept: list[int] = []
    exact, near, seen = {}, {}, {}
    rows = 8
    for i, (item, dig) in enumerate(zip(ids, digests, strict=True)):
        if dig in seen:
            exact[item] = seen[dig]
            continue
        seen[dig] = item
        share = [j for j in kept if any(np.array_equal(sigs[i, b:b + rows], sigs[j, b:b + rows])
                                        for b in range(0, sigs.shape[1], rows))]
        match = [ids[j] for j in share if float(np.mean(sigs[i] == sigs[j])) >= threshold]
        if match:
            near[item] = min(match)
            continue
        kept.append(i)
    return [ids[i] for i in kept], exact, near


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_collapse_equals_reference(data: st.DataObject) -> None:
    n = data.draw(st.integers(1, 30))
    base = np.array(data.draw(st.lists(st.lists(st.integers(0, 3), min_size=16, max_size=16),
                                       min_size=n, max_size=n)), dtype=np.uint32)
    ids = data.draw(st.permutations([f"id{i:02d}" for i in range(n)]))
    digests = [data.draw(st.sampled_from("pqrstuvwxyz")) for _ in range(n)]
    threshold = data.draw(st.sampled_from([0.5, 0.85, 1.0]))
    result = collapse(list(ids), digests, base, threshold)
    assert (result.kept, result.exact, result.near) == reference_collapse(list(ids), digests, base, threshold)


json_text = st.text(alphabet=st.characters(exclude_categories=("Cs",)), max_size=20)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(json_text, st.none() | st.integers(-5, 5), st.none() | st.booleans(),
                          st.none() | st.lists(json_text, max_size=3),
                          st.sampled_from([None, "", "[]", '{"a":[1,"é\\n"]}', '"x"'])), max_size=8))
def test_render_jsonl_equals_per_row_orjson(rows: list[tuple[Any, ...]]) -> None:
    table = pa.table({
        "text": pa.array([r[0] for r in rows], pa.large_string()),
        "count": pa.array([r[1] for r in rows], pa.int64()),
        "flag": pa.array([r[2] for r in rows], pa.bool_()),
        "names": pa.array([r[3] for r in rows], pa.list_(pa.string())),
        "doc": pa.array([r[4] for r in rows], pa.large_string()),
    })
    expected = b"".join(orjson.dumps({**row, "doc": orjson.Fragment(row["doc"]) if row["doc"] else None},
                                     option=orjson.OPT_SORT_KEYS) + b"\n" for row in table.to_pylist())
    assert render_jsonl(table, ("doc",)).to_pybytes() == expected


@settings(max_examples=100, deadline=None)
@given(st.lists(json_text, min_size=1, max_size=3))
def test_row_id_is_digest_json(parts: list[str]) -> None:
    assert row_id(*parts) == digest_json(parts)


def test_dedupe_keys_from_arrow_equal_from_strings(tmp_path: Path) -> None:
    texts = ["", " a ", "Hello   World\n", "x" * 5000, "é" * 3000 + " tail", "  \t "] * 3
    digests, sigs = dedupe_keys(texts, *DEFAULT_SIGNATURE)
    arrow_digests, arrow_sigs = dedupe_keys(pa.chunked_array([pa.array(texts[:7]), pa.array(texts[7:])]),
                                            *DEFAULT_SIGNATURE)
    assert digests == arrow_digests and np.array_equal(sigs, arrow_sigs)
    assert digests[0] == digests[5] and digests[1] != digests[2]
