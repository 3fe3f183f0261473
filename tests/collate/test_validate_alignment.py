"""`tracelake validate-alignment`: the yield and the ratio, and its three exits."""

from __future__ import annotations

import shutil
from pathlib import Path

from typer.testing import CliRunner

from pipeline.cli.main import app

DRIFTING = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{% if m.role == 'assistant' and loop.previtem "
            "and loop.previtem.role == 'user' %}(after user) {% endif %}{{ m.content }}"
            "{% for c in m.tool_calls or [] %}<tool_call>{{ c.function.name }}</tool_call>{% endfor %}"
            "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def _sources(teich_examples: Path, tmp_path: Path) -> list[str]:
    (tmp_path / "cc").mkdir()
    shutil.copy(teich_examples / "example_claude_code.jsonl", tmp_path / "cc" / "session.jsonl")
    return ["--source", f"claude-code:{tmp_path / 'cc'}"]


def test_real_sessions_pass_and_a_drifting_template_fails(teich_examples: Path, tmp_path: Path,
                                                           qwen_folder: Path) -> None:
    runner = CliRunner()
    sources = _sources(teich_examples, tmp_path)
    passed = runner.invoke(app, ["validate-alignment", *sources])
    assert passed.exit_code == 0, passed.output
    assert "error sites (structural is_error)" in passed.output and "PASS alignment 1.0000" in passed.output

    drifting = tmp_path / "drifting-model"
    shutil.copytree(qwen_folder, drifting)
    (drifting / "chat_template.jinja").write_text(DRIFTING)
    failed = runner.invoke(app, ["validate-alignment", *sources, "--model", str(drifting)])
    assert failed.exit_code == 1, failed.output
    assert "FAIL alignment" in failed.output


def test_no_template_or_no_site_exits_2(teich_examples: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    sources = _sources(teich_examples, tmp_path)
    empty = tmp_path / "empty-model"
    empty.mkdir()
    (empty / "README.md").write_text("no tokenizer here")
    no_model = runner.invoke(app, ["validate-alignment", *sources, "--model", str(empty)])
    assert no_model.exit_code == 2 and "cannot load a tokenizer" in no_model.output
    assert "Traceback" not in no_model.output


def test_sources_without_an_error_site_exit_2(claude_code_log_messages: Path, tmp_path: Path) -> None:
    (tmp_path / "cc").mkdir()
    shutil.copy(claude_code_log_messages / "user" / "user.jsonl", tmp_path / "cc" / "session.jsonl")
    result = CliRunner().invoke(app, ["validate-alignment", "--source", f"claude-code:{tmp_path / 'cc'}"])
    assert result.exit_code == 2, result.output
    assert "no tool-error site" in result.output
