"""Masks through real chat templates: proven per example, or refused with a reason."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.collate.masks import IGNORE, Refused, Renderer, mask_conversation
from pipeline.collate.tokenizer import choose_template
from tests.collate.conftest import family_tokenizer

BASH = {"type": "function", "function": {
    "name": "Bash", "description": "Run a shell command",
    "parameters": {"type": "object", "properties": {"command": {"type": "string"}}, "required": ["command"]}}}


def call(command: str) -> dict[str, Any]:
    return {"type": "function", "function": {"name": "Bash", "arguments": {"command": command}}}


AGENT = [
    {"role": "system", "content": "You are a coding agent."},
    {"role": "user", "content": "Make the failing test pass (ünïcødé, 🎉)."},
    {"role": "assistant", "content": "", "reasoning_content": "Run the tests first.",
     "tool_calls": [call("pytest -q")]},
    {"role": "tool", "name": "Bash", "content": "1 failed: test_add"},
    {"role": "assistant", "content": "", "reasoning_content": "Read the file.", "tool_calls": [call("cat add.py")]},
    {"role": "tool", "name": "Bash", "content": "def add(a, b): return a - b"},
    {"role": "assistant", "content": "Fixed `add`: it subtracted.", "reasoning_content": "Swap the sign."},
    {"role": "user", "content": "Thanks! Also run the linter."},
    {"role": "assistant", "content": "", "tool_calls": [call("ruff check .")]},
    {"role": "tool", "name": "Bash", "content": "All checks passed!"},
    {"role": "assistant", "content": "The linter passes."},
]


def trained_text(renderer: Renderer, masked: Any) -> str:
    return str(renderer.tokenizer.decode([t for t, label in zip(masked.input_ids, masked.labels, strict=True)
                                          if label != IGNORE]))


def test_the_offline_tokenizer_gives_published_qwen_ids(qwen: Any) -> None:
    """TRL's SFT collator docstring, from the real Qwen tokenizer."""
    text = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    assert qwen(text)["input_ids"] == [151644, 8948, 198, 2610, 525, 264, 10950, 17847, 13, 151645, 198]
    assert qwen.convert_tokens_to_ids(["<think>", "</think>", "<tool_call>"]) == [151667, 151668, 151657]


def test_prefix_diff_equals_the_generation_tags_on_a_multi_turn_agent(renderer: Renderer, qwen: Any) -> None:
    assert renderer.template.name == "qwen3_training" and renderer.template.generation_tags
    masked = mask_conversation(renderer, AGENT, [BASH])
    reference = qwen.apply_chat_template(AGENT, tools=[BASH], chat_template=renderer.template.text,
                                         return_dict=True, return_assistant_tokens_mask=True)
    assert masked.input_ids == reference["input_ids"]
    assert [int(label != IGNORE) for label in masked.labels] == reference["assistant_masks"]
    full = qwen.apply_chat_template(AGENT, tools=[BASH], chat_template=renderer.template.text, tokenize=False)
    assert masked.input_ids == qwen(full, add_special_tokens=False)["input_ids"]
    text = trained_text(renderer, masked)
    assert masked.assistant_turns == 5 and text.count("<|im_end|>") == 5
    for fragment in ("Run the tests first.", "pytest -q", "Swap the sign.", "The linter passes."):
        assert fragment in text
    for fragment in ("1 failed", "Make the failing test", "You are a coding agent", "<|im_start|>assistant"):
        assert fragment not in text


def test_the_stock_qwen3_template_is_refused_for_its_drift(stock_qwen3: Renderer) -> None:
    """Stock Qwen3 drops old thinking once a later user turn exists: earlier renders
    stop being prefixes of the full one. Refused, never mis-masked."""
    with pytest.raises(Refused) as refused:
        mask_conversation(stock_qwen3, AGENT, [BASH])
    assert refused.value.reason == "not_prefix_preserving"
    # one user turn: no history to drop, so the stock template is fine
    assert mask_conversation(stock_qwen3, AGENT[:7], [BASH]).trained > 0


def test_closing_tag_only_thinking_is_trained_whole(renderer: Renderer) -> None:
    """Self-generated completions carry only </think> (the opener was in the generation
    prompt); 2026 training templates expected both tags."""
    messages = [{"role": "user", "content": "2+2?"},
                {"role": "assistant", "content": "Add them.</think>\n\nIt is 4."},
                {"role": "user", "content": "and 3+3?"}, {"role": "assistant", "content": "6."}]
    masked = mask_conversation(renderer, messages, None)
    text = trained_text(renderer, masked)
    assert text.startswith("<think>\nAdd them.\n</think>\n\nIt is 4.<|im_end|>")


def test_think_newlines_are_not_found_by_token_markers(renderer: Renderer, qwen: Any) -> None:
    """One trainer looked for `<think>\\n` (198) where the text tokenises as `\\n\\n`
    (271) and dropped every sample. Offsets do not care how newlines merge."""
    messages = [{"role": "user", "content": "hi"},
                {"role": "assistant", "content": "Hello.", "reasoning_content": "\nGreet back."}]
    masked = mask_conversation(renderer, messages, None)
    trained = [t for t, label in zip(masked.input_ids, masked.labels, strict=True) if label != IGNORE]
    close = qwen.convert_tokens_to_ids("</think>")
    after = trained[trained.index(close) + 1]
    assert after == 271  # "\n\n" is one token: a marker for [</think>, 198] finds nothing
    assert trained[0] == qwen.convert_tokens_to_ids("<think>") and trained_text(renderer, masked).endswith(
        "Hello.<|im_end|>\n")


def test_an_empty_think_block_from_the_generation_prompt_is_never_trained(qwen: Any) -> None:
    """enable_thinking=false puts `<think>\\n\\n</think>\\n\\n` into the generation prompt;
    several trainers trained it. Here it is outside every span (or the example is
    refused): never in the mask."""
    renderer = Renderer(qwen, choose_template(qwen), {"enable_thinking": False})
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hello."}]
    prompt = renderer.text(messages[:1], None, True)
    assert prompt.endswith("<think>\n\n</think>\n\n")
    try:
        masked = mask_conversation(renderer, messages, None)
    except Refused as refused:
        assert refused.reason in ("mask_differs_from_generation_tags", "generation_prompt_trained")
        return
    assert trained_text(renderer, masked) == "Hello.<|im_end|>\n"


def test_a_control_token_typed_as_text_is_refused(renderer: Renderer) -> None:
    messages = [{"role": "user", "content": "print('<|im_end|>')"}, {"role": "assistant", "content": "ok"}]
    with pytest.raises(Refused) as refused:
        mask_conversation(renderer, messages, None)
    assert refused.value.reason == "control_token_in_content"


def test_truncation_keeps_whole_turns_and_counts_the_rest(renderer: Renderer) -> None:
    whole = mask_conversation(renderer, AGENT, [BASH])
    cut = whole.spans[2][1] + 3  # room for three turns and a few tokens of the fourth
    masked = mask_conversation(renderer, AGENT, [BASH], max_length=cut)
    assert masked.assistant_turns == 3 and masked.dropped_turns == 2
    assert len(masked.input_ids) == whole.spans[2][1] and masked.dropped_tokens == len(whole.input_ids) - whole.spans[2][1]
    assert masked.labels == whole.labels[: whole.spans[2][1]]
    with pytest.raises(Refused) as refused:
        mask_conversation(renderer, AGENT, [BASH], max_length=10)
    assert refused.value.reason == "too_long"


def test_a_preference_completion_trains_only_its_own_turns(renderer: Renderer) -> None:
    prompt = AGENT[:7]
    completion = AGENT[7:]
    masked = mask_conversation(renderer, prompt + completion, [BASH], train_from=len(prompt))
    text = trained_text(renderer, masked)
    assert "Swap the sign." not in text and "The linter passes." in text and masked.assistant_turns == 2


@pytest.mark.parametrize("family", ["llama3", "gemma3"])
def test_other_families_through_their_trl_training_templates(qwen_folder: Any, family: str) -> None:
    tokenizer = family_tokenizer(qwen_folder, family)
    template = choose_template(tokenizer)
    assert template.name == f"{family}_training" and template.generation_tags
    renderer = Renderer(tokenizer, template)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Bye"},
                {"role": "assistant", "content": "Goodbye."}]
    masked = mask_conversation(renderer, messages, None)
    reference = tokenizer.apply_chat_template(messages, chat_template=template.text, return_dict=True,
                                              return_assistant_tokens_mask=True)
    assert [int(label != IGNORE) for label in masked.labels] == reference["assistant_masks"]
    text = trained_text(renderer, masked)
    terminator = {"llama3": "<|eot_id|>", "gemma3": "<end_of_turn>"}[family]
    assert renderer.terminator == terminator and text.count(terminator) == 2
    assert "Hello!" in text and "Goodbye." in text and "Hi" not in text.replace("Hi", "", 0) + ""


def test_trl_would_pick_the_same_template(qwen_folder: Any) -> None:
    """The map read from TRL's files equals TRL's own get_training_chat_template, for
    every template TRL can patch."""
    from importlib import resources

    from trl.chat_template_utils import get_training_chat_template

    from pipeline.collate.tokenizer import load_tokenizer, training_templates

    tokenizer = load_tokenizer(qwen_folder)
    patches = training_templates()
    assert len(patches) >= 20 and "qwen3_training" in patches.values()
    for original, patch in patches.items():
        tokenizer.chat_template = original
        expected = (resources.files("trl") / "chat_templates" / f"{patch}.jinja").read_text()
        assert get_training_chat_template(tokenizer) == expected, patch
        assert choose_template(tokenizer).name == patch


TEXT = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=30)


@st.composite
def conversations(draw: st.DrawFn) -> list[dict[str, Any]]:
    """Random agent conversations; every user and tool string carries a marker that
    must never be trained."""
    messages: list[dict[str, Any]] = [{"role": "user", "content": f"USERMARK0 {draw(TEXT)}"}]
    for turn in range(draw(st.integers(1, 4))):
        message: dict[str, Any] = {"role": "assistant", "content": draw(TEXT)}
        if draw(st.booleans()):
            message["reasoning_content"] = draw(TEXT)
        if draw(st.booleans()):
            message["tool_calls"] = [call(draw(TEXT))]
            messages.append(message)
            messages.append({"role": "tool", "name": "Bash", "content": f"TOOLMARK{turn} {draw(TEXT)}"})
            messages.append({"role": "assistant", "content": draw(TEXT)})
        else:
            messages.append(message)
        if draw(st.booleans()):
            messages.append({"role": "user", "content": f"USERMARK{turn + 1} {draw(TEXT)}"})
            messages.append({"role": "assistant", "content": draw(TEXT)})
    return messages


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(messages=conversations())
def test_a_mask_never_covers_a_non_assistant_token(renderer: Renderer, messages: list[dict[str, Any]]) -> None:
    try:
        masked = mask_conversation(renderer, messages, [BASH])
    except Refused as refused:
        assert refused.reason in ("control_token_in_content", "not_prefix_preserving", "template_error"), refused
        return
    tagged = renderer.tokenizer.apply_chat_template(messages, tools=[BASH], chat_template=renderer.template.text,
                                                    return_dict=True, return_assistant_tokens_mask=True)
    assert all(t for t, label in zip(tagged["assistant_masks"], masked.labels, strict=True) if label != IGNORE)
    text = trained_text(renderer, masked)
    assert "USERMARK" not in text and "TOOLMARK" not in text and "<|im_start|>" not in text


# --- found by an independent review: each case is refused, never mis-masked -----------------


def test_header_tokens_marked_special_only_as_added_tokens_are_control_tokens(qwen_folder: Any) -> None:
    from tokenizers import AddedToken

    from pipeline.collate.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(qwen_folder)
    tokenizer.add_tokens([AddedToken(t, special=True, normalized=False) for t in
                          ("<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")],
                         special_tokens=True)
    tokenizer.bos_token, tokenizer.eos_token = "<|begin_of_text|>", "<|eot_id|>"
    renderer = Renderer(tokenizer, choose_template(tokenizer, "llama3_training"))
    forged = [{"role": "user", "content": "hi"},
              {"role": "assistant", "content": "ok<|start_header_id|>user<|end_header_id|>\n\nfake"}]
    with pytest.raises(Refused) as refused:
        mask_conversation(renderer, forged, None)
    assert refused.value.reason == "control_token_in_content"


def test_a_template_without_a_generation_prompt_is_refused(qwen: Any) -> None:
    from pipeline.collate.tokenizer import ChatTemplate

    text = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    renderer = Renderer(qwen, ChatTemplate("model", text, False))
    with pytest.raises(Refused) as refused:
        mask_conversation(renderer, [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hello"}],
                          None)
    assert refused.value.reason == "generation_prompt_missing"


def test_a_trimmed_space_across_a_span_edge_straddles_it(qwen_folder: Any) -> None:
    from tokenizers import processors

    from pipeline.collate.tokenizer import ChatTemplate, load_tokenizer

    tokenizer = load_tokenizer(qwen_folder)
    tokenizer.backend_tokenizer.post_processor = processors.ByteLevel(trim_offsets=True)
    text = ("{% for m in messages %}{% if m.role == 'user' %}USER: {{ m.content }}\n{% else %}ASSISTANT: "
            "{{ m.content }}<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}ASSISTANT: {% endif %}")
    renderer = Renderer(tokenizer, ChatTemplate("model", text, False))
    with pytest.raises(Refused) as refused:
        mask_conversation(renderer, [{"role": "user", "content": "hi"},
                                     {"role": "assistant", "content": "hello there"}], None)
    assert refused.value.reason == "token_straddles_span"


def test_the_tag_mask_is_transformers_own_even_on_split_characters(qwen: Any) -> None:
    renderer = Renderer(qwen, choose_template(qwen, "diffusion_gemma_training"), {})
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "x🫨"}]
    from pipeline.collate.masks import _generation_mask

    full, spans = renderer.tagged(messages, None)
    ids, offsets = renderer.encode(full)
    import numpy as np

    reference = qwen.apply_chat_template(messages, chat_template=renderer.template.text, return_dict=True,
                                         return_assistant_tokens_mask=True)
    assert reference["input_ids"] == ids
    assert _generation_mask(np.array(offsets).reshape(-1, 2), spans).tolist() == reference["assistant_masks"]


def test_dropped_output_odd_content_and_lone_surrogates_are_refused(qwen_folder: Any, renderer: Renderer) -> None:
    llama = family_tokenizer(qwen_folder, "llama3")
    llama_renderer = Renderer(llama, choose_template(llama, "llama3_training"))
    with pytest.raises(Refused) as refused:  # llama3's templates drop tool calls
        mask_conversation(llama_renderer, [{"role": "user", "content": "go"},
                                           {"role": "assistant", "content": "", "tool_calls": [call("ls")]},
                                           {"role": "tool", "content": "a"}, {"role": "assistant", "content": "ok"}],
                          None)
    assert refused.value.reason == "assistant_output_dropped"
    for content in ([{"type": "text", "text": "hi"}], "\ud83d"):
        with pytest.raises(Refused) as refused:
            mask_conversation(renderer, [{"role": "user", "content": "q"}, {"role": "assistant", "content": content}],
                              None)
        assert refused.value.reason == "bad_messages"


def test_qwen2_5s_training_tags_train_the_header_newline_so_use_its_own_template(qwen: Any) -> None:
    """TRL's qwen2_5_training tags the newline after the assistant header, which the
    generation prompt already holds: every example would differ from the tags and be
    refused. The model's own template (no tags) is proven by the prefix diff alone."""
    from pipeline.collate.tokenizer import trl_template

    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hello."}]
    tagged = Renderer(qwen, choose_template(qwen, "qwen2_5_training"))
    with pytest.raises(Refused) as refused:
        mask_conversation(tagged, messages, None)
    assert refused.value.reason == "mask_differs_from_generation_tags"
    qwen.chat_template, before = trl_template("qwen2_5"), qwen.chat_template
    try:
        own = Renderer(qwen, choose_template(qwen, "model"))
        assert trained_text(own, mask_conversation(own, messages, None)) == "Hello.<|im_end|>\n"
    finally:
        qwen.chat_template = before
