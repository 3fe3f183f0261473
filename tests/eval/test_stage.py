"""eval end to end: the real tiny Qwen3 and the adapter train made, replayed on the
held-out split; the adapter is an artifact input bound into the cache key and checked
by receipts verify."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pipeline.core.runner import Runner, RunOptions
from pipeline.core.sources import SourceSpec
from pipeline.stages.registry import load_stages

CONFIG: dict[str, dict[str, Any]] = {
    "train": {"max_steps": 4, "pack_tokens": 512},
    "eval": {"max_examples": 3, "max_new_tokens": 12, "step_margin": 1},
}


def _run(root: Path, corpus: Path, config: dict[str, dict[str, Any]] | None = None) -> Any:
    return Runner(load_stages(["eval"]), RunOptions(root=root, sources=[SourceSpec("claude-code", corpus)],
                                                    stage_config=config or CONFIG,
                                                    recorded_at="2026-01-01T00:00:00Z")).run(["eval"])


def _receipt(result: Any, stage: str) -> Any:
    return next(o.receipt for o in result.outcomes if o.stage == stage)


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    from pipeline.synth import synthesize

    work = tmp_path_factory.mktemp("eval")
    synthesize(work / "cc", 25, 5, "claude-code")
    result = _run(work / "lake", work / "cc")
    assert result.ok, [(o.stage, o.error, o.receipt and o.receipt.validation.errors) for o in result.outcomes]
    return work, result


def test_eval_measures_base_and_adapter_on_the_held_out_split(evaluated: tuple[Path, Any]) -> None:
    from pipeline.eval.scorecard import METRIC_NAMES
    from pipeline.sql import connect

    work, result = evaluated
    receipt, train = _receipt(result, "eval"), _receipt(result, "train")
    adapter = next(a for a in train.artifacts if a.name == "adapter")
    inputs = {i.name: i for i in receipt.inputs}
    assert inputs["artifact:adapter"].sha256 == adapter.digest  # bound to the very adapter train made
    assert inputs["external:model"].sha256 == {i.name: i for i in train.inputs}["external:model"].sha256
    assert receipt.stats["adapter"] is True and receipt.validation.passed
    assert receipt.records_in == receipt.records_out + sum(receipt.filtered.values())
    assert 0 < receipt.records_out <= 3 and receipt.filtered["not_held_out"] > 0
    con, _ = connect(work / "lake")
    rows = {r[0]: r[1:] for r in con.execute("SELECT metric, base, adapter, gate, passed FROM eval").fetchall()}
    assert set(rows) == set(METRIC_NAMES)
    assert rows["loop_rate"][2:] == ("adapter <= base", True)
    assert all((base is None) == (tuned is None) for base, tuned, *_ in rows.values())
    splits = con.execute("SELECT DISTINCT split FROM sft JOIN eval_generations USING (task_id)").fetchall()
    assert splits == [("valid",)]  # never a conversation it trained on
    per_model = dict(con.execute("SELECT model, count(*) FROM eval_generations GROUP BY model").fetchall())
    assert per_model["base"] == per_model["adapter"] > 0
    assert receipt.stats["points"]["base"] == receipt.stats["points"]["adapter"] > 0
    report = work / "lake" / "exports" / result.run_id / "eval" / "eval.md"
    text = report.read_text(encoding="utf-8")
    assert adapter.digest in text and "| loop_rate |" in text


def test_receipts_verify_accepts_the_run_and_a_rerun_is_a_cache_hit(evaluated: tuple[Path, Any]) -> None:
    from pipeline.audit.verify import verify_run
    from pipeline.core.trust import load_trusted

    work, result = evaluated
    layout_root = work / "lake"
    from pipeline.core.store import LakeLayout

    layout = LakeLayout(layout_root)
    assert verify_run(layout, result.run_id, load_trusted(layout)).problems == []
    again = _run(layout_root, work / "cc")
    assert all(o.receipt is not None and o.receipt.cache_hit for o in again.outcomes)
    assert again.summary.run_hash == result.summary.run_hash


def test_a_new_adapter_reruns_eval_and_nothing_upstream_of_train(evaluated: tuple[Path, Any],
                                                                   tmp_path: Path) -> None:
    import shutil

    work, result = evaluated
    lake = tmp_path / "lake"
    shutil.copytree(work / "lake", lake, symlinks=True)
    changed = {**CONFIG, "train": {**CONFIG["train"], "learning_rate": 5e-3}}
    again = _run(lake, work / "cc", changed)
    hits = {o.stage: o.receipt.cache_hit for o in again.outcomes}
    assert hits["collate"] and not hits["train"] and not hits["eval"]
    before = {i.name: i.sha256 for i in _receipt(result, "eval").inputs}
    after = {i.name: i.sha256 for i in _receipt(again, "eval").inputs}
    assert after["artifact:adapter"] != before["artifact:adapter"] and after["sft"] == before["sft"]


def test_an_edited_stored_adapter_is_refused_not_read(evaluated: tuple[Path, Any], tmp_path: Path) -> None:
    import shutil

    from pipeline.core.artifacts import artifact_inputs, open_artifact_input
    from pipeline.core.errors import TracelakeError
    from pipeline.core.store import LakeLayout

    work, result = evaluated
    lake = tmp_path / "lake"
    shutil.copytree(work / "lake", lake, symlinks=True)
    ref = artifact_inputs(_receipt(result, "eval").inputs)["adapter"]
    layout = LakeLayout(lake)
    folder = open_artifact_input(layout, ref)
    weights = folder / "adapter_model.safetensors"
    weights.chmod(0o644)
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    with pytest.raises(TracelakeError, match="no longer holds"):
        open_artifact_input(layout, ref)


def test_without_an_adapter_the_base_is_measured_and_no_gate_is_judged(tmp_path: Path) -> None:
    from pipeline.stages.collate import STAGE as COLLATE
    from pipeline.stages.eval import STAGE as EVAL
    from pipeline.stages.train import STAGE as TRAIN
    from tests.exports.builders import EXPORT_STAGES, Corpus, fake_collect, good_task

    corpus = Corpus()
    for n in range(12):
        good_task(corpus.session(f"s{n}"), f"Fix bug {n}", "Fixed.")
    config = {"export-sft": {"valid_fraction": 0.5}, "train": {"pack_tokens": 16},
              "eval": {"max_examples": 2, "max_new_tokens": 8}}
    result = Runner([fake_collect(corpus), *EXPORT_STAGES, COLLATE, TRAIN, EVAL],
                    RunOptions(root=tmp_path, sources=[], stage_config=config)).run()
    receipt = _receipt(result, "eval")
    assert result.ok and receipt.stats["adapter"] is False
    assert not any(i.name.startswith("artifact:") for i in receipt.inputs)
    assert receipt.stats["gates"] == {"loop_rate": None, "text_answer_rate": None}
    assert receipt.records_out > 0


def test_a_failed_gate_fails_the_stage_and_run_all_says_which(tmp_path: Path) -> None:
    """The gates' verdicts from scripted models (a looping adapter) as a stage's
    validation, with eval's own materialize: the run fails, the failure lines name the
    gate, eval.md is withheld from exports/ (and the run still verifies), and the
    scorecard stays queryable and in the report."""
    from pipeline.audit.verify import verify_run
    from pipeline.cli.main import failure_lines
    from pipeline.core.stage import Stage, StageContext, StageResult, Traits
    from pipeline.core.store import LakeLayout
    from pipeline.core.trust import load_trusted
    from pipeline.eval.scorecard import gate_failures, scorecard
    from pipeline.report.facts import gather
    from pipeline.sql import connect
    from pipeline.stages.eval import EvalConfig, materialize
    from schemas.datasets import EVAL
    from schemas.tables import from_rows
    from tests.eval.test_replay import good_agent, looping_agent, tally

    def gated(ctx: StageContext) -> StageResult:
        rows = scorecard(tally(good_agent), tally(looping_agent), {"loop_rate": 0.0})
        return StageResult(tables={"eval": from_rows(EVAL, rows)}, records_in=0, records_out=0,
                           validation_errors=gate_failures(rows, adapter=True))

    stage = Stage(name="gated", version="1", config_model=EvalConfig, inputs=(), outputs=(EVAL,), run=gated,
                  materialize=materialize, traits=Traits(maps_records=False))
    result = Runner([stage], RunOptions(root=tmp_path, sources=[])).run()
    assert not result.ok
    layout = LakeLayout(tmp_path)
    lines = failure_lines(result.outcomes, layout.failed_exports / result.run_id)
    assert lines[0] == "gated failed: eval gate loop_rate: adapter <= base fails (base 0.0, adapter 1.0)"
    assert lines[1].startswith("gated: its exports were withheld")
    assert (layout.failed_exports / result.run_id / "gated" / "eval" / "eval.md").is_file()
    assert not (layout.export_dir(result.run_id) / "eval").exists()
    assert verify_run(layout, result.run_id, load_trusted(layout)).problems == []
    con, _ = connect(tmp_path)
    assert con.execute("SELECT passed FROM eval WHERE metric = 'loop_rate'").fetchone() == (False,)
    facts = gather(tmp_path, None)
    assert [e.passed for e in facts.evaluation if e.metric == "loop_rate"] == [False]


def test_eval_refuses_an_adapter_trained_on_another_base(evaluated: tuple[Path, Any], tmp_path: Path) -> None:
    import json
    import shutil

    work, result = evaluated
    lake = tmp_path / "lake"
    shutil.copytree(work / "lake", lake, symlinks=True)
    base = lake / next(i.location for i in _receipt(result, "train").inputs if i.name == "external:model")
    other = tmp_path / "other-model"
    shutil.copytree(base, other)
    config_file = other / "config.json"
    config_file.chmod(0o644)
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()), "note": "another base"}))
    again = _run(lake, work / "cc", {**CONFIG, "eval": {**CONFIG["eval"], "model": str(other)}})
    outcome = next(o for o in again.outcomes if o.stage == "eval")
    assert outcome.status == "failed" and "the adapter was trained on" in (outcome.error or "")


def test_greedy_decoding_ignores_the_model_folders_generation_settings(evaluated: tuple[Path, Any],
                                                                       tmp_path: Path) -> None:
    """A repetition penalty in generation_config.json would hide the repetition the eval
    measures: the eval decodes with a config of its own."""
    import json
    import shutil

    from pipeline.collate.masks import Renderer
    from pipeline.collate.tokenizer import choose_template, load_tokenizer
    from pipeline.eval.generate import Generator, load_models

    work, result = evaluated
    base = work / "lake" / next(i.location for i in _receipt(result, "train").inputs if i.name == "external:model")
    penalised = tmp_path / "penalised"
    shutil.copytree(base, penalised)
    settings = penalised / "generation_config.json"
    settings.chmod(0o644)
    settings.write_text(json.dumps({**json.loads(settings.read_text()), "repetition_penalty": 1.5,
                                    "no_repeat_ngram_size": 2}))
    messages = [{"role": "user", "content": "fix the build"}]
    replies = []
    for folder in (base, penalised):
        tokenizer = load_tokenizer(folder)
        generator = Generator(load_models(folder, None), Renderer(tokenizer, choose_template(tokenizer)), 24, 512)
        replies.append(generator.generate(messages, None, adapter=False))
    assert replies[0] == replies[1] and replies[0].truncated  # the tiny model never stops by itself
