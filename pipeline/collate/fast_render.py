"""Prefix renders through minijinja, held to transformers' own render of each example.

Proving a mask renders every prefix of a conversation, twice per assistant turn: the
cost grows with turns times length, and jinja2's sandbox spends most of it on
per-attribute checks. minijinja (a Rust implementation of the same language, by
jinja2's author) renders the same templates several times faster.

It is used only where it agrees: for every example, minijinja's render of the whole
conversation must equal, byte for byte, the render transformers gives (the tagged
render collate takes its spans from); otherwise that example is rendered again through
transformers alone. The data it sees is prepared the way ``apply_chat_template``
prepares it (None values dropped, plain JSON types, reasoning aliased under its other
names), with the same globals and filters (``raise_exception``, ``tojson`` without HTML
escaping, ``strftime_now``), and with ``trim_blocks`` and ``lstrip_blocks`` set as
transformers sets them. ``{% generation %}`` tags are dropped: outside a mask request
they render their body unchanged. A test holds the two to each other on every prefix of
a corpus, with every template TRL ships.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

GENERATION_TAGS = re.compile(r"\{%-?\s*(?:end)?generation\s*-?%\}")
# minijinja's Python compatibility calls the real methods of the objects it renders:
# ``.append(`` or ``.update(`` in a template would change the prepared conversation
# (transformers' immutable sandbox refuses them), and with it every later prefix render
# and the ``tojson`` memo. A template that names one renders through transformers only.
MUTATING_CALL = re.compile(r"\.\s*(?:append|extend|insert|pop|popitem|remove|clear|update|setdefault|sort|reverse"
                           r"|add|discard|difference_update|intersection_update|symmetric_difference_update)\s*\(")


def _raise_exception(message: str) -> None:
    raise ValueError(message)


# json.dumps builds a new encoder for every call with a non-default argument; the
# filter's usual call (only ensure_ascii off) reuses this one, which gives the same text.
_PLAIN_JSON = json.JSONEncoder(ensure_ascii=False)


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None,
            separators: Any = None, sort_keys: bool = False) -> str:
    if not ensure_ascii and indent is None and separators is None and not sort_keys:
        return _PLAIN_JSON.encode(value)
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent,
                      separators=tuple(separators) if separators is not None else None, sort_keys=sort_keys)


def _strftime_now(format: str) -> str:
    return datetime.now().strftime(format)


class _JsonMemo:
    """``tojson`` for one conversation's renders. Every prefix render serialises again
    the tool calls of every message before it; minijinja hands the filter the very
    objects ``prepare`` made (nothing mutates them while rendering), so each is
    serialised once, keyed by identity and held so that its identity stays its own."""

    def __init__(self) -> None:
        self.texts: dict[int, tuple[Any, str]] = {}

    def __call__(self, value: Any, ensure_ascii: bool = False, indent: int | None = None,
                 separators: Any = None, sort_keys: bool = False) -> str:
        if ensure_ascii or indent is not None or separators is not None or sort_keys:
            return _tojson(value, ensure_ascii, indent, separators, sort_keys)
        held = self.texts.get(id(value))
        if held is not None and held[0] is value:
            return held[1]
        text = _tojson(value)
        if isinstance(value, dict | list):  # a str or a number may be a fresh object per call
            if len(self.texts) >= 65536:  # a caller that never calls begin()
                self.texts.clear()
            self.texts[id(value)] = (value, text)
        return text


class FastTemplate:
    """One chat template compiled with minijinja; ``None`` from ``compile`` when it cannot be."""

    def __init__(self, environment: Any, memo: _JsonMemo) -> None:
        self._environment = environment
        self._memo = memo

    def begin(self) -> None:
        """A new conversation: forget the last one's serialised objects."""
        self._memo.texts.clear()

    @classmethod
    def compile(cls, template: str) -> FastTemplate | None:
        if MUTATING_CALL.search(template):
            return None
        try:
            from minijinja import Environment
        except ImportError:
            return None
        try:
            environment: Any = Environment(templates={"chat": GENERATION_TAGS.sub("", template)})
            environment.pycompat = True
            environment.trim_blocks = True
            environment.lstrip_blocks = True
            environment.add_function("raise_exception", _raise_exception)
            environment.add_function("strftime_now", _strftime_now)
            memo = _JsonMemo()
            environment.add_filter("tojson", memo)
            environment.render_template("chat", messages=[{"role": "user", "content": "x"}], tools=None,
                                        add_generation_prompt=False)
        except Exception:  # a construct minijinja does not know (it parses on first use)
            return None
        return cls(environment, memo)

    def render(self, messages: Sequence[Mapping[str, Any]], tools: Any, generation_prompt: bool,
               variables: Mapping[str, Any]) -> str:
        """``messages`` and ``variables`` as ``prepare`` and ``prepare_variables`` made them."""
        return str(self._environment.render_template(
            "chat", **variables, messages=list(messages), tools=tools, documents=None,
            add_generation_prompt=generation_prompt))


def _not_json(value: Any) -> Any:
    raise TypeError(type(value).__name__)


def _plain(value: Any) -> Any:
    """transformers' ``_plain_template_data``: a fresh copy in plain JSON types. Data
    that is JSON already (what collate reads) takes a round trip through the C codec,
    which gives the same copy several times faster; anything else goes the slow way.
    (Where the two could part, a tuple or a non-string key, minijinja's whole render
    then differs from transformers' and the example is rendered by transformers.)"""
    from transformers.utils.chat_template_utils import _plain_template_data

    try:
        return json.loads(json.dumps(value, ensure_ascii=False, default=_not_json))
    except (TypeError, ValueError, RecursionError):
        return _plain_template_data(value)


def prepare(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The conversation as ``apply_chat_template`` hands it to the template."""
    from transformers.utils.chat_template_utils import _alias_reasoning_fields

    plain = _plain([{k: v for k, v in m.items() if v is not None} for m in messages])
    return list(_alias_reasoning_fields(plain))


def prepare_tools(tools: Any) -> Any:
    return _plain(tools)


def prepare_variables(tokenizer: Any, kwargs: Mapping[str, Any]) -> dict[str, Any]:
    from transformers.utils.chat_template_utils import _plain_template_data

    return dict(_plain_template_data({**tokenizer.special_tokens_map, **kwargs}))
