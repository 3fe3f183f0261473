"""SDPO rows: structural error sites, a hinted teacher, recovery ids aligned 100%."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from pipeline.collate.masks import Refused, Renderer
from pipeline.collate.sdpo import DEFAULT_HINTS, find_sites, sdpo_row
from pipeline.collate.tokenizer import ChatTemplate
from pipeline.core.runner import Runner, RunOptions
from pipeline.core.sources import SourceSpec
from pipeline.stages.registry import load_stages


def call(name: str, command: str, call_id: str) -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": {"command": command}}}


TRACE = [
    {"role": "user", "content": "Run the linter."},
    {"role": "assistant", "content": "", "reasoning_content": "Use ruff.", "tool_calls": [call("Bash", "rufff .", "c1")]},
    {"role": "tool", "name": "Bash", "tool_call_id": "c1", "content": "bash: rufff: command not found"},
    {"role": "assistant", "content": "", "reasoning_content": "Typo; the tool is ruff.",
     "tool_calls": [call("Bash", "ruff check .", "c2")]},
    {"role": "tool", "name": "Bash", "tool_call_id": "c2", "content": "Error: 3 problems found"},
    {"role": "assistant", "content": "The linter reports 3 problems."},
    {"role": "user", "content": "Fix them."},
    {"role": "assistant", "content": "Fixed."},
]


def test_sites_are_structural_and_an_empty_recovery_is_counted_not_emitted() -> None:
    found = find_sites(TRACE, {"c1": "command_not_found"}, strip_thinking=False)
    assert [(s.failing, s.recovery, s.error_kind) for s in found.sites] == [(2, 3, "command_not_found")]
    assert found.string_only == 1  # "Error: 3 problems" without the flag: counted, never used
    thinking_only = [*TRACE[:3], {"role": "assistant", "content": "", "reasoning_content": "Hmm."}]
    kept = find_sites(thinking_only, {"c1": "command_not_found"}, strip_thinking=False)
    stripped = find_sites(thinking_only, {"c1": "command_not_found"}, strip_thinking=True)
    assert len(kept.sites) == 1 and (len(stripped.sites), stripped.empty_recoveries) == (0, 1)
    human_first = [*TRACE[:3], {"role": "user", "content": "stop"}, {"role": "assistant", "content": "ok"}]
    assert find_sites(human_first, {"c1": "tool_error"}, strip_thinking=False).sites == []


def test_the_teacher_sees_the_hint_and_the_recovery_ids_align(renderer: Renderer) -> None:
    (site,) = find_sites(TRACE, {"c1": "command_not_found"}, strip_thinking=False).sites
    hint = DEFAULT_HINTS["command_not_found"]
    row = sdpo_row(renderer, TRACE, None, site, hint, "user", 4096)
    student, teacher = row["student_input_ids"], row["teacher_input_ids"]
    s_idx, t_idx = row["student_response_idx"], row["teacher_response_idx"]
    assert [student[k] for k in s_idx] == [teacher[k] for k in t_idx] and len(s_idx) > 5
    assert t_idx[-1] == len(teacher) - 1 and s_idx[-1] == len(student) - 1  # the recovery ends both
    assert sum(row["sdpo_loss_mask"]) == len(s_idx)
    tokenizer = renderer.tokenizer
    assert hint in tokenizer.decode(teacher) and hint not in tokenizer.decode(student)
    recovery = tokenizer.decode([student[k] for k in s_idx])
    assert "Typo; the tool is ruff." in recovery and "ruff check ." in recovery and "command not found" not in recovery


def test_a_template_that_drifts_with_the_hint_is_refused(qwen: Any) -> None:
    """A template that renders an assistant turn differently after a user message: the
    teacher's recovery is not the student's, so there is no row (a bug, not noise)."""
    text = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{% if m.role == 'assistant' and loop.previtem "
            "and loop.previtem.role == 'user' %}(after user) {% endif %}{{ m.content }}<|im_end|>\n{% endfor %}"
            "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    drifting = Renderer(qwen, ChatTemplate("model", text, False))
    trace = [{"role": "user", "content": "go"}, {"role": "assistant", "content": "run"},
             {"role": "tool", "tool_call_id": "c1", "content": "failed"}, {"role": "assistant", "content": "retry"}]
    (site,) = find_sites(trace, {"c1": "tool_error"}, strip_thinking=False).sites
    with pytest.raises(Refused) as refused:
        sdpo_row(drifting, trace, None, site, "hint", "user", 4096)
    assert refused.value.reason == "sdpo_misaligned"


def _collate_stats(root: Path, sources: list[SourceSpec]) -> Any:
    result = Runner(load_stages(["collate"]), RunOptions(root=root, sources=sources)).run(["collate"])
    collate = next(o.receipt for o in result.outcomes if o.stage == "collate")
    assert collate is not None and collate.status == "ok", [(o.stage, o.error) for o in result.outcomes]
    return collate


def test_alignment_is_total_on_the_real_teich_sessions(teich_examples: Path, tmp_path: Path) -> None:
    (tmp_path / "cc").mkdir()
    (tmp_path / "cx").mkdir()
    shutil.copy(teich_examples / "example_claude_code.jsonl", tmp_path / "cc" / "session.jsonl")
    shutil.copy(teich_examples / "example_codex_session.jsonl", tmp_path / "cx" / "rollout.jsonl")
    collate = _collate_stats(tmp_path / "lake", [SourceSpec("claude-code", tmp_path / "cc"),
                                                 SourceSpec("codex", tmp_path / "cx")])
    sdpo = collate.stats["sdpo"]
    assert sdpo["error_sites"] >= 2 and sdpo["rows"] >= 2
    assert sdpo["alignment_ratio"] == 1.0 and sdpo["misaligned"] == 0


def test_alignment_is_total_on_the_synthetic_corpus(tmp_path: Path) -> None:
    from pipeline.synth import synthesize

    synthesize(tmp_path / "cc", 40, 3, "claude-code")
    collate = _collate_stats(tmp_path / "lake", [SourceSpec("claude-code", tmp_path / "cc")])
    sdpo = collate.stats["sdpo"]
    assert sdpo["error_sites"] > 5 and sdpo["rows"] > 3 and sdpo["alignment_ratio"] == 1.0
    assert collate.records_in == collate.records_out + sum(collate.quarantined.values()) + sum(
        collate.filtered.values())


def test_a_teacher_whose_context_drifts_is_refused(stock_qwen3: Renderer) -> None:
    """Stock Qwen3 drops the thinking of turns before the last user message, and the
    hint is a user message: the teacher's context would silently lose it."""
    (site,) = find_sites(TRACE, {"c1": "command_not_found"}, strip_thinking=False).sites
    with pytest.raises(Refused) as refused:
        sdpo_row(stock_qwen3, TRACE, None, site, "hint", "user", 4096)
    assert refused.value.reason == "sdpo_context_differs"


def test_stripping_thinking_leaves_user_text_alone() -> None:
    from pipeline.collate.sdpo import strip_thinking_from

    stripped = strip_thinking_from([{"role": "user", "content": "Why split on </think>? Fix parse.py"},
                                    {"role": "assistant", "content": "Plan.</think>Done.", "reasoning_content": "x"}])
    assert stripped[0]["content"] == "Why split on </think>? Fix parse.py"
    assert stripped[1] == {"role": "assistant", "content": "Done."}
