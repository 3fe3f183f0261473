"""train end to end on the tiny Qwen3: packed attention, the adapter as a lake artifact
bound to its data, peft loading it, and a resume after kill -9."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from pipeline.core.runner import Runner, RunOptions
from pipeline.core.sources import SourceSpec
from pipeline.stages.registry import load_stages

REPO = Path(__file__).resolve().parents[2]
CONFIG = {"train": {"max_steps": 10, "pack_tokens": 512, "checkpoint_every": 2}}


def test_packed_logits_equal_separate_ones() -> None:
    import torch
    import transformers

    from pipeline.train.packing import pack

    torch.manual_seed(0)
    config = transformers.Qwen3Config(vocab_size=512, hidden_size=16, num_attention_heads=2, num_key_value_heads=1,
                                      head_dim=8, num_hidden_layers=2, intermediate_size=32)
    model = transformers.Qwen3ForCausalLM(config).eval()
    a, b = list(range(5, 12)), list(range(40, 45))
    (packed,) = pack([(a, a), (b, b)], 64)
    assert packed.position_ids == [*range(7), *range(5)]
    with torch.no_grad():
        separate = [model(input_ids=torch.tensor([ids]), use_cache=False).logits[0] for ids in (a, b)]
        together = model(input_ids=torch.tensor([packed.input_ids]), position_ids=torch.tensor([packed.position_ids]),
                         use_cache=False).logits[0]
        leaky = model(input_ids=torch.tensor([packed.input_ids]),
                      position_ids=torch.tensor([packed.position_ids])).logits[0]
    assert torch.allclose(together, torch.cat(separate), atol=1e-5)
    assert not torch.allclose(leaky[7:], separate[1], atol=1e-3)  # why use_cache=False is pinned


def test_the_loss_is_taken_only_at_trained_positions() -> None:
    from pipeline.train.packing import pack

    (packed,) = pack([([1, 2, 3, 4], [-100, -100, 3, 4]), ([5, 6, 7], [-100, 6, -100])], 16)
    assert packed.sources == [1, 2, 4] and packed.targets == [3, 4, 6]  # never across the boundary
    assert packed.rows == [0, 1]
    assert pack([([1, 2, 3], [5, -100, -100])], 16) == []  # nothing to predict: nothing packed


def test_accumulated_packs_weigh_every_token_the_same() -> None:
    """Two micro-steps of 1 and 3 trained tokens give the gradient of one pack holding
    all four (not the mean of two per-pack means)."""
    import torch
    import transformers
    from peft import LoraConfig, get_peft_model

    from pipeline.train.loop import TrainSettings, train
    from pipeline.train.packing import pack

    def gradients(examples: list[tuple[list[int], list[int]]], accumulation: int, max_tokens: int) -> Any:
        torch.manual_seed(0)
        config = transformers.Qwen3Config(vocab_size=64, hidden_size=16, num_attention_heads=2,
                                          num_key_value_heads=1, head_dim=8, num_hidden_layers=1,
                                          intermediate_size=32)
        model = get_peft_model(transformers.Qwen3ForCausalLM(config),
                               LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj"], init_lora_weights=False))
        settings = TrainSettings(max_steps=1, gradient_accumulation=accumulation, learning_rate=1e-9,
                                 pack_tokens=max_tokens, checkpoint_every=5)
        (step,) = train(model, pack(examples, max_tokens), settings, lambda r: None, lambda b: None, None)
        return step.loss

    short = (list(range(1, 10)), [-100] * 8 + [9])  # 9 tokens, 1 trained
    long = (list(range(10, 22)), [-100] * 9 + [19, 20, 21])  # 12 tokens, 3 trained
    together = gradients([short, long], 1, 32)  # one pack of both
    apart = gradients([short, long], 2, 16)  # two packs, accumulated
    assert apart == pytest.approx(together, rel=1e-5)


def _corpus(tmp_path: Path) -> Path:
    from pipeline.synth import synthesize

    synthesize(tmp_path / "cc", 25, 5, "claude-code")
    return tmp_path / "cc"


def _run(root: Path, corpus: Path) -> Any:
    return Runner(load_stages(["train"]), RunOptions(root=root, sources=[SourceSpec("claude-code", corpus)],
                                                     stage_config=CONFIG, recorded_at="2026-01-01T00:00:00Z")
                  ).run(["train"])


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    work = tmp_path_factory.mktemp("train")
    result = _run(work / "lake", _corpus(work))
    assert result.ok, [(o.stage, o.error) for o in result.outcomes if o.error]
    return work, result


def test_the_adapter_is_bound_to_its_data_and_loads_with_peft(trained: tuple[Path, Any]) -> None:
    import torch
    import transformers
    from peft import PeftModel

    from pipeline.sql import connect

    work, result = trained
    receipt = next(o.receipt for o in result.outcomes if o.stage == "train")
    collate = next(o.receipt for o in result.outcomes if o.stage == "collate")
    inputs = {i.name: i for i in receipt.inputs}
    assert inputs["collated_sft"].xxh3_128 == next(o.xxh3_128 for o in collate.outputs if o.name == "collated_sft")
    assert inputs["external:model"].sha256 and inputs["external:model"].rows == 6
    adapter = next(a for a in receipt.artifacts if a.name == "adapter")
    assert {f.path for f in adapter.files} == {"adapter_config.json", "adapter_model.safetensors"}
    assert receipt.stats["probe"]["verdict"] in ("PASS", "WARN") and receipt.stats["probe"]["steps"] == 10
    con, _ = connect(work / "lake")
    assert con.execute("SELECT count(*) FROM artifacts WHERE stage = 'train' AND name = 'adapter' AND digest = ?",
                       [adapter.digest]).fetchone() == (1,)
    assert con.execute("SELECT count(*) FROM train_steps").fetchone() == (10,)
    base_path = work / "lake" / inputs["external:model"].location  # type: ignore[operator]
    base = transformers.AutoModelForCausalLM.from_pretrained(str(base_path), local_files_only=True)
    tuned = PeftModel.from_pretrained(base, str(work / "lake" / adapter.path))
    ids = torch.tensor([[151644, 872, 198]])
    with torch.no_grad():
        with_adapter = tuned(input_ids=ids, use_cache=False).logits
        with tuned.disable_adapter():
            without = tuned(input_ids=ids, use_cache=False).logits
    assert not torch.equal(with_adapter, without)  # it learned something, and it is the adapter's doing


_RUN = """
import sys
from pathlib import Path
from pipeline.core.runner import Runner, RunOptions
from pipeline.core.sources import SourceSpec
from pipeline.stages.registry import load_stages
from tests.train.test_train import CONFIG
Runner(load_stages(["train"]), RunOptions(root=Path(sys.argv[1]), sources=[SourceSpec("claude-code", Path(sys.argv[2]))],
       stage_config=CONFIG, recorded_at="2026-01-01T00:00:00Z")).run(["train"])
"""


def test_a_killed_training_resumes_and_ends_where_an_unbroken_one_does(trained: tuple[Path, Any],
                                                                      tmp_path: Path) -> None:
    work, unbroken = trained
    lake = tmp_path / "lake"
    process = subprocess.Popen([sys.executable, "-c", _RUN, str(lake), str(work / "cc")], cwd=REPO,
                               env={**os.environ, "PYTHONPATH": str(REPO)}, start_new_session=True)
    resume = lake / "data" / "cache" / "train" / "resume"
    deadline = time.time() + 240
    while time.time() < deadline and process.poll() is None and not list(resume.glob("*/state")):
        time.sleep(0.02)
    if process.poll() is not None:
        pytest.fail("the run ended before its first checkpoint")
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    result = _run(lake, work / "cc")
    receipt = next(o.receipt for o in result.outcomes if o.stage == "train")
    assert receipt is not None and receipt.status == "ok" and receipt.stats["resumed"] is True
    original = next(o.receipt for o in unbroken.outcomes if o.stage == "train")
    steps = {o.name: o.rows for o in receipt.outputs}
    assert steps["train_steps"] == 10
    import pyarrow.parquet as pq

    resumed = pq.read_table(lake / receipt.outputs[0].path).to_pylist()
    first = pq.read_table(work / "lake" / original.outputs[0].path).to_pylist()
    assert [r["step"] for r in resumed] == list(range(10))
    assert [r["loss"] for r in resumed] == pytest.approx([r["loss"] for r in first], abs=1e-5)


def test_lineage_answers_both_ways(trained: tuple[Path, Any]) -> None:
    from pipeline.sql import connect

    work, result = trained
    con, _ = connect(work / "lake")
    (adapter,) = con.execute("SELECT adapter FROM adapters").fetchone() or ()
    sessions = con.execute("SELECT DISTINCT session_id, source_file FROM adapter_lineage WHERE adapter = ?",
                           [adapter]).fetchall()
    receipt = next(o.receipt for o in result.outcomes if o.stage == "train")
    tasks = con.execute("SELECT count(DISTINCT task_id) FROM adapter_lineage WHERE adapter = ?", [adapter]).fetchone()
    assert tasks == (receipt.records_out,) and receipt.records_out > 0  # what its packs held, no more
    reached = receipt.stats["packs_trained"]
    assert reached <= 10 and receipt.filtered.get("not_reached", 0) >= 0
    source = sessions[0][1]
    assert con.execute("SELECT DISTINCT adapter FROM adapter_lineage WHERE source_file = ?",
                       [source]).fetchall() == [(adapter,)]


def test_nothing_to_train_is_said_not_failed(tmp_path: Path) -> None:
    """A corpus whose rows are all held out or too long: the run passes, the receipt
    says nothing was trained and why, and no adapter is made."""
    from pipeline.stages.collate import STAGE as COLLATE
    from pipeline.stages.train import STAGE as TRAIN
    from tests.exports.builders import EXPORT_STAGES, Corpus, fake_collect, good_task

    corpus = Corpus()
    good_task(corpus.session("one"), "Fix the bug", "Fixed.")
    result = Runner([fake_collect(corpus), *EXPORT_STAGES, COLLATE, TRAIN],
                    RunOptions(root=tmp_path, sources=[], stage_config={"train": {"pack_tokens": 16}})).run()
    receipt = next(o.receipt for o in result.outcomes if o.stage == "train")
    assert result.ok and receipt is not None and receipt.stats["trained"] is False
    assert receipt.artifacts == [] and receipt.stats["probe"]["verdict"] == "SKIP"
    assert receipt.records_in == sum(receipt.filtered.values())


def test_the_exported_adapter_carries_an_openssf_signature_model_signing_accepts(trained: tuple[Path, Any],
                                                                                 tmp_path: Path) -> None:
    """``model_signing verify`` (OpenSSF's own CLI, no tracelake) accepts the exported
    adapter with the published key, and refuses it once a byte changes."""
    import shutil

    from pipeline.core import openssf
    from pipeline.core.signing import load_key

    work, result = trained
    exported = work / "lake" / "exports" / result.run_id
    folder, signature, public = exported / "adapter", exported / "adapter.sig", exported / "adapter.pub.pem"
    assert public.read_bytes() == openssf.public_pem(load_key())  # the lake's key, derived
    cli = Path(sys.executable).parent / "model_signing"
    verify = [str(cli), "verify", "key", "--signature", str(signature), "--public_key", str(public)]
    ok = subprocess.run([*verify, str(folder)], capture_output=True, text=True, check=False)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    copy = tmp_path / "adapter"
    shutil.copytree(folder, copy)
    weights = copy / "adapter_model.safetensors"
    weights.chmod(0o644)
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 1
    weights.write_bytes(bytes(data))
    tampered = subprocess.run([*verify, str(copy)], capture_output=True, text=True, check=False)
    assert tampered.returncode != 0
    with pytest.raises(Exception, match="model signature"):
        openssf.verify_model(copy, signature, public)
    openssf.verify_model(folder, signature, public)
