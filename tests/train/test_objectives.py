"""SDPO and DPO against hand-computed values, the device choice, and both losses end to
end in the train stage on the tiny Qwen3."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from pipeline.core.errors import TracelakeError
from pipeline.train.loop import TrainSettings, resolve_device


def _tiny_lora(seed: int = 0) -> Any:
    import torch
    import transformers
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    config = transformers.Qwen3Config(vocab_size=64, hidden_size=16, num_attention_heads=2, num_key_value_heads=1,
                                      head_dim=8, num_hidden_layers=1, intermediate_size=32)
    return get_peft_model(transformers.Qwen3ForCausalLM(config), LoraConfig(r=2, lora_alpha=4,
                                                                           target_modules=["q_proj", "v_proj"]))


def test_reverse_kl_and_jsd_match_hand_computed_values() -> None:
    import torch

    from pipeline.train.objectives import divergence

    s, t = torch.tensor([[0.0, math.log(3.0)]]), torch.tensor([[0.0, 0.0]])  # (1/4, 3/4) against (1/2, 1/2)
    expected_kl = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)
    assert float(divergence(s, t, "reverse_kl")) == pytest.approx(expected_kl, rel=1e-6)
    m = (0.375, 0.625)
    expected_jsd = 0.5 * (0.25 * math.log(0.25 / m[0]) + 0.75 * math.log(0.75 / m[1])) \
        + 0.5 * (0.5 * math.log(0.5 / m[0]) + 0.5 * math.log(0.5 / m[1]))
    assert float(divergence(s, t, "jsd")) == pytest.approx(expected_jsd, rel=1e-6)
    assert float(divergence(s, s, "reverse_kl")) == pytest.approx(0.0, abs=1e-7)
    assert float(divergence(s, t, "jsd")) == pytest.approx(float(divergence(t, s, "jsd")), rel=1e-6)


def test_dpo_starts_at_ln2_and_only_the_policy_gets_gradient() -> None:
    from pipeline.train.objectives import PreferenceExample, dpo_loss

    model = _tiny_lora()
    pair = PreferenceExample(prompt=[1, 2, 3], chosen=[4, 5, 6], chosen_mask=[1, 1, 0], rejected=[7, 8],
                             rejected_mask=[1, 1])
    loss = dpo_loss(model, pair, beta=0.1)
    assert loss.item() == pytest.approx(math.log(2.0), abs=1e-6)  # a zero adapter: policy = reference
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert grads and all("lora_" in n for n in grads)
    assert any(g is not None and float(g.abs().sum()) > 0 for g in grads.values())


def test_sdpo_teacher_is_the_base_without_the_adapter_and_gets_no_gradient() -> None:
    import torch

    from pipeline.train.objectives import SdpoExample, position_logits, sdpo_loss

    model = _tiny_lora()
    with torch.no_grad():  # a non-zero adapter, so student and teacher differ even on equal context
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    same = SdpoExample(student_ids=[1, 2, 3, 4], teacher_ids=[1, 2, 3, 4], student_idx=[2, 3], teacher_idx=[2, 3])
    loss = sdpo_loss(model, same, "reverse_kl")
    assert float(loss) > 0
    with torch.no_grad(), model.disable_adapter():
        base = position_logits(model, [1, 2, 3, 4], [2, 3])
    student = position_logits(model, [1, 2, 3, 4], [2, 3])
    from pipeline.train.objectives import divergence

    assert float(loss) == pytest.approx(float(divergence(student, base, "reverse_kl")), rel=1e-5)
    loss.backward()
    assert all(p.grad is None for n, p in model.named_parameters() if not p.requires_grad)


def test_the_device_is_detected_and_an_impossible_one_is_refused() -> None:
    import torch

    if torch.cuda.is_available():  # this machine has a GPU: the choice is bf16 on it where supported
        device = resolve_device(TrainSettings())
        assert device.name == "cuda"
        return
    assert resolve_device(TrainSettings()) in {resolve_device(TrainSettings(device="cpu"))}
    assert resolve_device(TrainSettings()).dtype == "float32"
    with pytest.raises(TracelakeError, match="no CUDA device"):
        resolve_device(TrainSettings(device="cuda"))
    with pytest.raises(TracelakeError, match="bf16 needs a CUDA device"):
        resolve_device(TrainSettings(precision="bf16"))


def test_sdpo_and_dpo_train_end_to_end_and_keep_the_eval_split_out(tmp_path: Path) -> None:
    from pipeline.core.runner import Runner, RunOptions
    from pipeline.core.sources import SourceSpec
    from pipeline.sql import connect
    from pipeline.stages.registry import load_stages
    from pipeline.synth import synthesize

    synthesize(tmp_path / "cc", 25, 5, "claude-code")
    config = {"export-sft": {"valid_fraction": 0.1},
              "train": {"max_steps": 3, "pack_tokens": 512, "sdpo_weight": 0.5, "dpo_weight": 0.5}}
    result = Runner(load_stages(["train"]), RunOptions(root=tmp_path / "lake",
                                                       sources=[SourceSpec("claude-code", tmp_path / "cc")],
                                                       stage_config=config)).run(["train"])
    receipt = next(o.receipt for o in result.outcomes if o.stage == "train")
    assert result.ok and receipt is not None
    assert receipt.stats["objectives"] == {"sft": 1.0, "sdpo": 0.5, "dpo": 0.5}
    assert receipt.records_in == receipt.records_out + sum(receipt.filtered.values())
    con, _ = connect(tmp_path / "lake")
    steps = con.execute("SELECT step, loss, sft_loss, sdpo_loss, dpo_loss FROM train_steps ORDER BY step").fetchall()
    assert len(steps) == 3 and all(v is not None and math.isfinite(v) for row in steps for v in row)
    assert steps[0][4] == pytest.approx(math.log(2.0), abs=1e-5)
    assert all(total == pytest.approx(sft + 0.5 * sdpo + 0.5 * dpo, rel=1e-6)
               for _, total, sft, sdpo, dpo in steps)
    objectives = dict(con.execute("SELECT objective, count(*) FROM train_rows GROUP BY ALL").fetchall())
    assert objectives.keys() == {"sft", "sdpo", "dpo"}
    held_out = con.execute("SELECT count(DISTINCT session_id) FROM sft WHERE split <> 'train'").fetchone()
    leaked = con.execute("SELECT count(*) FROM train_rows WHERE session_id IN "
                         "(SELECT session_id FROM sft WHERE split <> 'train')").fetchone()
    # No SFT, SDPO or DPO example from a session eval replays (the split is by session:
    # a pair's rejected task never reaches the SFT export, its session does).
    assert held_out is not None and held_out[0] > 0 and leaked == (0,)
    assert receipt.filtered["pair_held_out"] > 0 and receipt.filtered["sdpo_held_out"] > 0
    lineage = con.execute("SELECT DISTINCT objective FROM adapter_lineage").fetchall()
    assert {o for (o,) in lineage} == {"sft", "sdpo", "dpo"}
