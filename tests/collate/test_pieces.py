"""A render encoded piece by piece is the render encoded whole: the same ids and the same
offsets, cold or with every piece already cached, on every family collate is tested on."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.collate.masks import Renderer
from pipeline.collate.pieces import MIN_CACHED_CHARS, PieceEncoder
from pipeline.collate.tokenizer import choose_template, load_tokenizer
from tests.collate.conftest import family_tokenizer
from tests.collate.test_masks import BASH, conversations


def _whole(backend: Any, text: str) -> tuple[list[int], np.ndarray]:
    encoding = backend.encode(text, add_special_tokens=False)
    return list(encoding.ids), np.array(encoding.offsets, dtype=np.int64).reshape(-1, 2)


def _assert_same(pieces: PieceEncoder, text: str) -> None:
    ids, offsets = _whole(pieces.backend, text)
    for _ in range(3):  # cold; each long piece cut into the cache; each from the cache
        got_ids, got_offsets = pieces.encode(text)
        assert got_ids == ids
        assert np.array_equal(got_offsets, offsets)


@pytest.fixture(scope="module")
def encoders(qwen_folder: Path) -> dict[str, PieceEncoder]:
    out = {}
    for family in ("qwen", "llama3", "gemma3"):
        tokenizer = load_tokenizer(qwen_folder) if family == "qwen" else family_tokenizer(qwen_folder, family)
        encoder = PieceEncoder.of(tokenizer.backend_tokenizer)
        assert encoder is not None, family
        out[family] = encoder
    return out


# Text around added tokens: what could join across a cut if the cut were wrong (a
# combining mark NFC folds into the ">" before it, spaces and newlines a pre-tokenizer
# groups, digits, long runs that are cached).
FRAGMENTS = st.sampled_from([
    "<|im_start|>", "<|im_end|>", "<think>", "</think>", "<tool_call>", "<|eot_id|>", "<start_of_turn>",
    "<|im_end", "im_end|>", "<", ">", "\u0338", "e\u0301", " ", "  ", "\n", "\n\n", " \n", "\t", "x", "123",
    "'s", "héllo wörld ", "🫨", "Ω" * 70, "word " * 20, "\n" * 70, " " * 80,
])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(parts=st.lists(FRAGMENTS, max_size=40), family=st.sampled_from(["qwen", "llama3", "gemma3"]))
def test_pieces_add_up_to_the_whole_on_adversarial_text(encoders: dict[str, PieceEncoder], parts: list[str],
                                                        family: str) -> None:
    _assert_same(encoders[family], "".join(parts))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(messages=conversations())
def test_pieces_add_up_to_the_whole_on_rendered_conversations(renderer: Renderer,
                                                              messages: list[dict[str, Any]]) -> None:
    assert renderer.pieces is not None
    padded = [{**m, "content": (m.get("content") or "") + " pad" * MIN_CACHED_CHARS} for m in messages]
    for conversation in (messages, padded):
        _assert_same(renderer.pieces, renderer.text(conversation, [BASH], False))


def test_pieces_add_up_to_the_whole_on_the_real_teich_sessions(teich_examples: Path,
                                                               encoders: dict[str, PieceEncoder]) -> None:
    """Every record of the real sessions, as text (paths, tool output, unicode), between
    each family's turn tokens."""
    lines = [line for name in ("example_claude_code.jsonl", "example_codex_session.jsonl")
             for line in (teich_examples / name).read_text(encoding="utf-8").splitlines()]
    assert len(lines) > 50
    for family, encoder in encoders.items():
        text = "".join(f"<|im_start|>user\n{line}<|im_end|>\n<|eot_id|>{json.dumps(line)}<end_of_turn>"
                       for line in lines)
        _assert_same(encoder, text)
        assert encoder._cached_chars > 0, family


def test_a_cached_piece_is_reused_and_the_cache_is_bounded(renderer: Renderer, monkeypatch: Any) -> None:
    import pipeline.collate.pieces as pieces_module

    encoder = PieceEncoder.of(renderer.tokenizer.backend_tokenizer)
    assert encoder is not None
    calls: list[str] = []
    real = pieces_module.encode_whole
    monkeypatch.setattr(pieces_module, "encode_whole", lambda backend, text: calls.append(text) or real(backend, text))
    system = "You are a careful agent. " * 10
    for user in ("hi", "bye", "again"):
        encoder.encode(f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n")
    # met once (remembered), met twice (kept), then taken from the cache
    assert sum(system in text for text in calls) == 2
    assert len(calls) == 4  # two renders in one call each; around the cached piece, two
    monkeypatch.setattr(pieces_module, "MAX_CACHED_CHARS", 2 * len(system) + 10)
    encoder.clear()
    other = system.upper()
    for _ in range(2):
        encoder.encode(f"<|im_start|>a{system}<|im_end|><|im_start|>b{system}<|im_end|><|im_start|>c{other}<|im_end|>")
    assert 0 < encoder._cached_chars <= 2 * len(system) + 10


def test_tokenizers_whose_pieces_would_not_add_up_are_encoded_whole(qwen_folder: Path) -> None:
    from tokenizers import AddedToken, pre_tokenizers

    def fresh() -> Any:
        return load_tokenizer(qwen_folder).backend_tokenizer

    assert PieceEncoder.of(fresh()) is not None
    lstrip = fresh()
    lstrip.add_special_tokens([AddedToken("<|mark|>", lstrip=True)])
    normalized = fresh()
    normalized.add_tokens([AddedToken("<|norm|>", normalized=True)])
    metaspace = fresh()
    metaspace.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="first")
    truncated = fresh()
    truncated.enable_truncation(128)
    for backend in (lstrip, normalized, metaspace, truncated):
        assert PieceEncoder.of(backend) is None
    # and a renderer over such a tokenizer encodes whole, still correctly
    tokenizer = load_tokenizer(qwen_folder)
    tokenizer.backend_tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="first")
    whole = Renderer(tokenizer, choose_template(tokenizer))
    assert whole.pieces is None
    ids, _ = whole.encode("<|im_start|>user\nhello<|im_end|>")
    assert ids == tokenizer.backend_tokenizer.encode("<|im_start|>user\nhello<|im_end|>", add_special_tokens=False).ids
