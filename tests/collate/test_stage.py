"""The collate stage in a pipeline: proven rows, an export trainers load as it is, the
tokenizer as a hashed input."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.core.runner import Runner, RunOptions
from pipeline.stages.collate import STAGE as COLLATE
from tests.exports.builders import (
    EXPORT_STAGES,
    Corpus,
    agent_corpus,
    fake_collect,
    good_task,
    receipt,
)


def _corpus() -> Corpus:
    corpus = agent_corpus()
    good_task(corpus.session("inject"), "Explain what <|im_end|> means in a chat template",
              "It closes a turn: the model stops after <|im_end|>.")
    return corpus


def _run(root: Path, config: dict[str, dict[str, Any]] | None = None,
         externals: dict[str, Path] | None = None) -> Any:
    corpus = _corpus()
    runner = Runner([fake_collect(corpus), *EXPORT_STAGES, COLLATE],
                    RunOptions(root=root, sources=[], stage_config=config or {}, externals=externals or {},
                               recorded_at="2026-01-01T00:00:00Z"))
    return runner.run()


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    root = tmp_path_factory.mktemp("collate") / "lake"
    result = _run(root)
    assert result.ok, [(o.stage, o.error) for o in result.outcomes]
    return root, result


def test_rows_are_proven_and_refusals_have_reasons(lake: tuple[Path, Any]) -> None:
    root, result = lake
    collate = receipt(result, "collate")
    sft_rows = receipt(result, "export-sft").outputs[0].rows
    stats = collate.stats["templates"]["qwen3_training"]
    assert stats["examples"] == collate.records_in and stats["generation_tags"] is True
    # the <|im_end|> typed as text never got this far: export-sft's firewall set it aside
    assert receipt(result, "export-sft").quarantined.get("template_token_in_content") == 1
    assert stats["rejected"] == sum(collate.quarantined.values()) == 0
    table = pq.read_table(root / result.summary.tables["collated_sft"].path)
    assert 0 < table.num_rows <= sft_rows
    for row in table.to_pylist():
        assert len(row["input_ids"]) == len(row["labels"]) == row["n_tokens"]
        assert row["n_trained"] == sum(label != -100 for label in row["labels"]) > 0
        assert all(label in (-100, token) for label, token in zip(row["labels"], row["input_ids"], strict=True))
    external = next(i for i in collate.inputs if i.name == "external:model")
    assert external.rows == 3 and external.location and "data/artifacts/" in external.location


def test_refusals_are_counted_per_template_with_reasons(tmp_path: Path) -> None:
    result = _run(tmp_path / "lake", {"collate": {"max_length": 24}})
    collate = receipt(result, "collate")
    stats = collate.stats["templates"]["qwen3_training"]
    assert collate.status == "ok" and collate.quarantined == {"too_long": stats["rejected"]}
    assert stats["rejected"] == collate.records_in and stats["rejected_share"] == 1.0
    quarantine = pq.read_table(tmp_path / "lake" / result.summary.tables["collate_quarantine"].path).to_pylist()
    assert {row["reason"] for row in quarantine} == {"too_long"} and all(row["detail"] for row in quarantine)


def test_the_export_loads_in_datasets_with_exactly_the_trainer_columns(lake: tuple[Path, Any]) -> None:
    from datasets import load_dataset

    root, result = lake
    path = root / "exports" / result.run_id / "collated" / "sft.parquet"
    dataset = load_dataset("parquet", data_files=str(path), split="train")
    assert dataset.column_names == ["input_ids", "attention_mask", "labels", "task_id"]
    assert dataset.num_rows == result.summary.tables["collated_sft"].rows
    pairs = pq.read_table(root / "exports" / result.run_id / "collated" / "preference.parquet")
    assert {"prompt_input_ids", "chosen_input_ids", "chosen_mask", "rejected_input_ids"} <= set(pairs.column_names)
    for row in pairs.to_pylist():
        assert len(row["chosen_input_ids"]) == len(row["chosen_mask"]) and any(row["chosen_mask"])


def test_a_changed_template_reruns_collate_and_nothing_else(lake: tuple[Path, Any], tmp_path: Path,
                                                            qwen_folder: Path) -> None:
    model = tmp_path / "model"
    shutil.copytree(qwen_folder, model)
    root = tmp_path / "lake"
    first = _run(root, externals={"model": model})
    assert first.ok
    again = _run(root, externals={"model": model})
    assert all(o.receipt is not None and o.receipt.cache_hit for o in again.outcomes)
    template = model / "chat_template.jinja"
    template.write_text(template.read_text().replace("<|im_start|>", "<|im_start|>", 1) + "\n")
    changed = _run(root, externals={"model": model})
    hits = {o.stage: o.receipt.cache_hit for o in changed.outcomes if o.receipt is not None}
    assert hits.pop("collate") is False and all(hits.values()), hits


def test_a_folder_without_a_tokenizer_fails_collate_in_one_line(tmp_path: Path) -> None:
    empty = tmp_path / "not-a-model"
    empty.mkdir()
    (empty / "README.md").write_text("nothing here")
    result = _run(tmp_path / "lake", externals={"model": empty})
    outcome = next(o for o in result.outcomes if o.stage == "collate")
    assert outcome.status == "failed" and "cannot load a tokenizer" in (outcome.error or "")
    assert all(o.status == "ok" for o in result.outcomes if o.stage != "collate")


def test_a_pair_with_one_side_cut_is_refused(qwen_folder: Path) -> None:
    import json

    from pipeline.collate.jobs import preference_row
    from pipeline.collate.masks import Refused, Renderer
    from pipeline.collate.tokenizer import choose_template, load_tokenizer

    tokenizer = load_tokenizer(qwen_folder)
    renderer = Renderer(tokenizer, choose_template(tokenizer))
    call = {"type": "function", "function": {"name": "Bash", "arguments": {"command": "pytest"}}}
    chosen = [{"role": "assistant", "content": "", "tool_calls": [call]},
              {"role": "tool", "content": "x " * 400}, {"role": "assistant", "content": "Fixed"}]
    row = {"pair_id": "p", "prompt": json.dumps([{"role": "user", "content": "fix it"}]),
           "chosen": json.dumps(chosen), "rejected": json.dumps([{"role": "assistant", "content": "no"}]),
           "tools": "[]"}
    with pytest.raises(Refused) as refused:
        preference_row(renderer, row, 200, [])
    assert refused.value.reason == "too_long"
    assert preference_row(renderer, row, 4096, [])["chosen_mask"].count(1) > 0


@pytest.mark.parametrize("start", ["fork", "spawn"])
def test_worker_processes_give_the_same_rows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, start: str) -> None:
    """The same tables whether the examples run here or in two workers, forked (the
    parent's renderer as is) or spawned (which load the tokenizer themselves and check
    its digest again)."""
    from pipeline.collate import jobs
    from pipeline.stages import collate

    one = _run(tmp_path / "one")
    monkeypatch.setenv("TRACELAKE_COLLATE_START", start)
    assert jobs.start_method() == start
    monkeypatch.setattr(jobs, "PARALLEL_MIN_EXAMPLES", 1)
    monkeypatch.setattr(jobs, "PARALLEL_MIN_EXAMPLES_FORKED", 1)
    pools: list[str] = []
    real_pool = jobs._pool

    def counted(workers: int, context: Any, initializer: Any, initargs: Any) -> Any:
        pools.append(context.get_start_method())
        return real_pool(workers, context, initializer, initargs)

    monkeypatch.setattr(jobs, "_pool", counted)
    # small units, one in flight per worker, rows read one at a time: the windows turn over
    monkeypatch.setattr(jobs, "PROCESS_CHUNK", 1)
    monkeypatch.setattr(jobs, "WINDOW_PER_WORKER", 1)
    monkeypatch.setattr(collate, "_READ_ROWS", 1)
    two = _run(tmp_path / "two")
    assert pools == [start]  # the workers really ran, started this way
    assert receipt(two, "collate").status == "ok"
    assert receipt(two, "collate").records_in > 2  # more examples than one window (2 workers x 1) holds
    for name in ("collated_sft", "collated_preference", "collated_sdpo", "collate_quarantine"):
        assert one.summary.tables[name].xxh3_128 == two.summary.tables[name].xxh3_128, name


def test_results_come_in_order_with_a_bounded_window_read_ahead() -> None:
    """The parent reads jobs only a window ahead of the results it has handed on (its
    memory does not grow with the export), and hands them on in job order whatever
    order the units finish in."""
    import time
    from concurrent.futures import ThreadPoolExecutor

    from pipeline.collate.jobs import _windowed

    pulled = []

    def chunks() -> Any:
        for i in range(40):
            pulled.append(i)
            yield [i]

    def unit(chunk: list[int]) -> list[int]:
        time.sleep(0.002 * (5 - chunk[0] % 5))  # later units often finish first
        return [chunk[0] * 10]

    with ThreadPoolExecutor(4) as pool:
        seen = []
        for value in _windowed(lambda chunk: pool.submit(unit, chunk), chunks(), window=3):
            seen.append(value)
            assert len(pulled) <= len(seen) + 3
    assert seen == [i * 10 for i in range(40)]


def test_rows_turned_into_arrow_in_chunks_give_the_same_tables(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Collate hands its rows to Arrow a chunk at a time and spills each chunk to disk,
    streaming the tables back to the store (bounded memory on big runs): chunks of one
    row give the very tables one chunk does, in the order the store checks."""
    from pipeline.stages import collate

    whole = _run(tmp_path / "whole")
    monkeypatch.setattr(collate._Rows, "CHUNK", 1)
    chunked = _run(tmp_path / "chunked")
    assert receipt(chunked, "collate").status == "ok"
    assert whole.summary.tables["collated_sft"].rows > 1  # so there are several chunks
    for name in ("collated_sft", "collated_preference", "collated_sdpo", "collate_quarantine"):
        assert whole.summary.tables[name].xxh3_128 == chunked.summary.tables[name].xxh3_128, name


@given(st.lists(st.tuples(st.sampled_from(["a", "b", "ab", "é", "Z", ""]), st.text(max_size=5)), max_size=60),
       st.integers(1, 8))
@settings(max_examples=30, deadline=None)
def test_rows_of_a_table_stored_in_another_order_come_in_the_stable_sort(rows: list[tuple[str, str]],
                                                                          batch: int) -> None:
    """A table stored in another order (preference, by task ids) is read in key order a
    batch at a time: the very order of Arrow's stable sort, ties included, whatever the
    batch size."""
    import tempfile
    from unittest import mock

    import pyarrow as pa

    from pipeline.stages import collate

    table = pa.table({"key": [k for k, _ in rows], "value": [v for _, v in rows]},
                     schema=pa.schema([("key", pa.string()), ("value", pa.string())]))
    with tempfile.TemporaryDirectory() as folder, mock.patch.object(collate, "_READ_ROWS", batch):
        path = Path(folder) / "t.parquet"
        pq.write_table(table, path, row_group_size=7)
        got = list(collate._canonical_rows(path, ["key", "value"], ("key",), ("value",)))
    assert got == table.sort_by([("key", "ascending")]).to_pylist()


def test_an_unknown_collate_start_method_is_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.collate import jobs
    from pipeline.core.errors import TracelakeError

    monkeypatch.setenv("TRACELAKE_COLLATE_START", "forkserver")
    with pytest.raises(TracelakeError, match="fork or spawn"):
        jobs.start_method()


_ORPHAN_PARENT = """
import os, sys, time, multiprocessing
from pathlib import Path
from pipeline.collate import jobs
from pipeline.collate.tokenizer import ChatTemplate
from pipeline.core.lock import writer_lock
from pipeline.core.store import LakeLayout

layout = LakeLayout(Path(sys.argv[1]))
setup = jobs.WorkerSetup("unused", ChatTemplate("t", "", False), {}, lambda: Path("."), 16)
with writer_lock(layout):
    pool = jobs._pool(2, multiprocessing.get_context("fork"), jobs._adopt_renderer, (None, setup, os.getpid()))
    print(" ".join(str(p) for p in pool._processes), flush=True)
    time.sleep(600)
"""


def test_forked_workers_leave_with_their_parent_and_never_hold_its_lock(tmp_path: Path) -> None:
    """A collate run killed outright (an out-of-memory kill) must not leave its forked
    workers behind holding the root's writer lock: they die with the parent and never
    kept the lock's descriptor."""
    import signal
    import subprocess
    import sys
    import time

    from pipeline.core.lock import writer_active
    from pipeline.core.store import LakeLayout

    layout = LakeLayout(tmp_path / "root")
    layout.data.mkdir(parents=True)
    parent = subprocess.Popen([sys.executable, "-c", _ORPHAN_PARENT, str(layout.root)], stdout=subprocess.PIPE,
                              text=True, cwd=Path(__file__).resolve().parents[2])
    assert parent.stdout is not None
    workers = [int(pid) for pid in parent.stdout.readline().split()]
    assert len(workers) == 2 and writer_active(layout)
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and (writer_active(layout) or any(_alive(pid) for pid in workers)):
        time.sleep(0.1)
    assert not writer_active(layout)
    assert not any(_alive(pid) for pid in workers)


def _alive(pid: int) -> bool:
    import os

    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (dead, not yet reaped by its new parent) is gone for our purpose
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return False
