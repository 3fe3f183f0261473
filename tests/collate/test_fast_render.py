"""minijinja's prefix renders held to transformers' own, on every template TRL ships:
where it is used, it must give the very text apply_chat_template gives."""

from __future__ import annotations

from importlib import resources
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.collate.fast_render import FastTemplate, prepare, prepare_tools, prepare_variables
from pipeline.collate.masks import Renderer, mask_conversation
from pipeline.collate.tokenizer import ChatTemplate, choose_template, has_generation_tags
from tests.collate.test_masks import AGENT, BASH, conversations

TEMPLATES = sorted(p.name.removesuffix(".jinja") for p in (resources.files("trl") / "chat_templates").iterdir()
                   if p.name.endswith(".jinja"))
# The ones collate picks for the families it is tested on must take the fast path.
MUST_COMPILE = {"qwen3_training", "qwen2_5", "llama3_training", "gemma3_training"}


def _exact(tokenizer: Any, text: str, messages: list[dict[str, Any]], tools: Any, prompt: bool) -> str:
    return str(tokenizer.apply_chat_template(messages, tools=tools, chat_template=text, tokenize=False,
                                             add_generation_prompt=prompt))


@pytest.mark.parametrize("name", TEMPLATES)
def test_every_prefix_renders_as_transformers_renders_it(qwen: Any, name: str) -> None:
    text = (resources.files("trl") / "chat_templates" / f"{name}.jinja").read_text()
    fast = FastTemplate.compile(text)
    if fast is None:
        assert name not in MUST_COMPILE  # collate falls back to transformers for it, every example
        return
    variables = prepare_variables(qwen, {})
    for tools in (None, [BASH]):
        for n in range(1, len(AGENT) + 1):
            for prompt in (False, True):
                try:
                    expected = _exact(qwen, text, AGENT[:n], tools, prompt)
                except Exception:
                    continue  # the template refuses this prefix (a family without tool roles, say)
                try:
                    got = fast.render(prepare(AGENT[:n]), prepare_tools(tools), prompt, variables)
                except Exception:
                    continue  # refused by minijinja too: collate renders it through transformers
                assert got == expected, (name, n, prompt, tools is not None)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(messages=conversations())
def test_the_fast_and_the_exact_path_make_the_same_masks(qwen: Any, messages: list[dict[str, Any]]) -> None:
    template = choose_template(qwen)
    results = []
    for fast in (True, False):
        renderer = Renderer(qwen, template, fast=fast)
        try:
            masked = mask_conversation(renderer, messages, [BASH])
            results.append((masked.input_ids, masked.labels))
        except Exception as exc:
            results.append(str(exc))
        assert set(renderer.renders) <= {"minijinja" if fast else "jinja2"}  # empty: refused before rendering
    assert results[0] == results[1]


@pytest.mark.parametrize("odd", ["{{ 1e20 }}", "{{ m.content | wordcount }}"])
def test_an_example_minijinja_renders_differently_goes_the_exact_way(qwen: Any, odd: str) -> None:
    """Where the engines part (a float printed as 1e+20 by jinja2 and in full by
    minijinja; a filter minijinja lacks), the example goes to transformers alone and
    its mask is the exact path's."""
    text = ("{%- for m in messages %}<|im_start|>{{ m.role }}\n{% if m.role == 'user' %}" + odd +
            " {{ m.content }}{% else %}{{ m.content }}{% endif %}<|im_end|>\n{%- endfor %}"
            "{%- if add_generation_prompt %}<|im_start|>assistant\n{%- endif %}")
    template = ChatTemplate("custom", text, has_generation_tags(text))
    messages = [{"role": "user", "content": "run it"}, {"role": "assistant", "content": "done"}]
    renderer, exact = Renderer(qwen, template), Renderer(qwen, template, fast=False)
    assert mask_conversation(renderer, messages, None) == mask_conversation(exact, messages, None)
    assert renderer.renders == {"jinja2": 1}


def test_a_prefix_the_engines_render_differently_is_redone_the_exact_way(qwen_folder: Any) -> None:
    """GLM's template strips a reasoning text only in a prefix render: Python's strip()
    takes the control character U+001F, Rust's trim does not. The whole renders agree,
    the prefixes part; the example is redone through transformers, and its mask is the
    exact path's (found by an independent review)."""
    from pipeline.collate.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(qwen_folder)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|user|>", "<|assistant|>", "<|system|>",
                                                                "<|observation|>"]})
    text = (resources.files("trl") / "chat_templates" / "glm4moe_training.jinja").read_text()
    template = ChatTemplate("glm4moe_training", text, has_generation_tags(text))
    messages = [{"role": "user", "content": "Fix the bug."},
                {"role": "assistant", "content": "Looking.", "reasoning_content": "\x1f"},
                {"role": "user", "content": "Go on."}, {"role": "assistant", "content": "Done."}]
    fast, exact = Renderer(tokenizer, template), Renderer(tokenizer, template, fast=False)
    assert mask_conversation(fast, messages, None) == mask_conversation(exact, messages, None)
    assert fast.renders == {"jinja2": 1}


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None)
@given(value=_JSON)
def test_the_plain_copy_is_transformers_copy_on_json_data(value: Any) -> None:
    """The C round trip ``prepare`` takes gives what transformers' own conversion gives,
    as a fresh copy."""
    from transformers.utils.chat_template_utils import _plain_template_data

    from pipeline.collate.fast_render import _plain

    copied = _plain(value)
    assert copied == _plain_template_data(value)
    assert type(copied) is type(_plain_template_data(value))
    if isinstance(value, dict | list) and value:
        assert copied is not value


def test_data_that_is_not_json_takes_transformers_conversion() -> None:
    from dataclasses import dataclass

    from transformers.utils.chat_template_utils import _plain_template_data

    from pipeline.collate.fast_render import _plain

    @dataclass
    class Call:
        name: str

    value = {"calls": [Call("bash")], "pair": (1, 2), 3: "int key"}
    assert _plain(value) == _plain_template_data(value)  # tuple, int key and dataclass kept as transformers keeps them


@settings(max_examples=200, deadline=None)
@given(value=_JSON)
def test_the_tojson_memo_gives_json_dumps_text(value: Any) -> None:
    import json

    from pipeline.collate.fast_render import _JsonMemo

    memo = _JsonMemo()
    expected = json.dumps(value, ensure_ascii=False)
    assert memo(value) == expected
    assert memo(value) == expected  # the second time from the memo
    assert memo(value, indent=2) == json.dumps(value, ensure_ascii=False, indent=2)  # other arguments: never memoised


def test_the_tojson_memo_is_keyed_by_identity_and_forgotten_per_conversation() -> None:
    from pipeline.collate.fast_render import _JsonMemo

    memo = _JsonMemo()
    first, twin = {"command": "ls"}, {"command": "ls"}
    assert memo(first) == memo(twin) == '{"command": "ls"}'
    assert len(memo.texts) == 2  # equal but distinct objects: two entries, each held
    first["command"] = "rm"  # nothing mutates data while it renders; a new conversation starts afresh
    memo.texts.clear()
    assert memo(first) == '{"command": "rm"}'
