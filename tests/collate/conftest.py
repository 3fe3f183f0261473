"""Tokenizers for the collate tests: the offline Qwen one, and the same BPE dressed as
Llama 3 and Gemma 3 (their special tokens added, their stock templates from TRL), which
is enough to prove the masking on another template's structure."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pipeline.collate.masks import Renderer
from pipeline.collate.tokenizer import choose_template, load_tokenizer, trl_template

FAMILIES: dict[str, tuple[str, list[str], str, str]] = {
    # template, special tokens, bos, eos
    "llama3": ("llama3", ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
                          "<|eom_id|>", "<|python_tag|>"], "<|begin_of_text|>", "<|eot_id|>"),
    "gemma3": ("gemma3", ["<bos>", "<start_of_turn>", "<end_of_turn>", "<eos>"], "<bos>", "<end_of_turn>"),
}


def family_tokenizer(qwen_folder: Path, family: str) -> Any:
    template, specials, bos, eos = FAMILIES[family]
    tokenizer = load_tokenizer(qwen_folder)
    tokenizer.add_special_tokens({"additional_special_tokens": specials, "bos_token": bos, "eos_token": eos})
    tokenizer.chat_template = trl_template(template)  # the stock one: auto swaps in *_training
    return tokenizer


@pytest.fixture(scope="session")
def qwen(qwen_folder: Path) -> Any:
    return load_tokenizer(qwen_folder)


@pytest.fixture(scope="session")
def renderer(qwen: Any) -> Renderer:
    return Renderer(qwen, choose_template(qwen))


@pytest.fixture(scope="session")
def stock_qwen3(qwen: Any) -> Renderer:
    return Renderer(qwen, choose_template(qwen, "qwen3"))
