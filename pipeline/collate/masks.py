"""Exact assistant loss masks through a real chat template, proven for every example.

For each assistant message i, ``messages[:i]`` rendered with the generation prompt and
``messages[:i+1]`` rendered without it are strings; the assistant span is their
difference (content, tool calls, thinking and the end-of-turn token in; the header
out). The whole conversation is tokenised once, by ``apply_chat_template`` itself, with
offsets; a token is trained when it lies wholly inside a span. An example is refused
with a reason, never repaired, unless all of these hold:

- each render is a string prefix of the next and of the full render (a template that
  re-renders history, as stock Qwen3 drops old thinking, fails here);
- no token straddles a span edge;
- each span ends on the template's turn terminator;
- the ids are ``apply_chat_template(tokenize=True)``'s: the full render comes from the
  function it renders with, given what it gives it, tokenised with the call it makes,
  piece by piece between added tokens where the tokenizer cuts there itself
  (``pipeline.collate.pieces``; tests hold all of it to ``apply_chat_template`` and the
  whole encode), and the offsets tile the render;
- with ``{% generation %}`` tags, the mask equals the template's ``assistant_masks``;
- no token of any generation prompt (an empty think block included) is trained;
- no message smuggles a control token (``<|im_end|>`` typed as text would become a
  turn boundary);
- the mask is not empty.

Truncation to ``max_length`` comes after masking, by whole assistant turns.
"""

from __future__ import annotations

import itertools
import json
import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.collate.pieces import PieceEncoder, encode_whole
from pipeline.collate.tokenizer import ChatTemplate

IGNORE = -100

REASONS: dict[str, str] = {
    "template_error": "the chat template raised an error on the conversation",
    "not_prefix_preserving": "a render is not a prefix of the next (the template re-renders history)",
    "span_not_terminated": "an assistant span does not end on the turn terminator",
    "token_straddles_span": "a token crosses the edge of an assistant span",
    "offsets_do_not_tile": "the tokenizer's offsets do not cover the render exactly",
    "mask_differs_from_generation_tags": "the prefix-diff mask differs from the template's assistant_masks",
    "generation_prompt_trained": "a token of a generation prompt would be trained",
    "control_token_in_content": "a message holds a control token as text",
    "no_assistant_turn": "nothing to train on: no assistant message after the prompt",
    "empty_mask": "the mask is empty",
    "too_long": "not even the first assistant turn fits max_length",
    "bad_messages": "the messages are not a list of chat messages with text content",
    "generation_prompt_missing": "the template adds no generation prompt (its header would be trained)",
    "assistant_output_dropped": "the template leaves out an assistant message's text or tool call",
    "prompt_ids_differ": "a preference pair's two sides render the shared prompt differently",
    "sdpo_misaligned": "the hinted teacher's recovery ids differ from the student's (template drift)",
    "sdpo_context_differs": "the teacher's context is not the student's followed by the hint (template drift)",
}


class Refused(Exception):
    def __init__(self, reason: str, detail: str = "") -> None:
        assert reason in REASONS, reason
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Masked:
    input_ids: list[int]
    labels: list[int]  # IGNORE where not trained
    assistant_turns: int  # trained turns kept
    trained: int  # tokens whose label is not IGNORE
    dropped_turns: int = 0  # by truncation
    dropped_tokens: int = 0
    spans: list[tuple[int, int]] = field(default_factory=list)  # token ranges [start, end) trained


@dataclass
class Renderer:
    """One tokenizer, one template, the same arguments for every render."""

    tokenizer: Any
    template: ChatTemplate
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    terminator: str = ""
    control: re.Pattern[str] | None = None
    fast: bool = True  # prefix renders through minijinja where it agrees (pipeline.collate.fast_render)
    # Conversations whose prefixes were rendered by each engine ("minijinja", "jinja2").
    renders: Counter[str] = field(default_factory=Counter)
    _generation: str | None = field(default=None, repr=False)
    _compiled: Any = field(default=None, repr=False)  # FastTemplate, False when minijinja cannot take it
    _variables: dict[str, Any] | None = field(default=None, repr=False)
    # Renders encoded piece by piece, recurring pieces once (None: encoded whole).
    pieces: PieceEncoder | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not self.terminator:
            self.terminator = turn_terminator(self)
        if self.control is None:
            # Named special tokens, and every added token marked special (Llama 3's header
            # tokens are only the latter).
            special = {str(t) for t in self.tokenizer.all_special_tokens}
            special |= {str(t.content) for t in self.tokenizer.added_tokens_decoder.values() if t.special}
            ordered = sorted(special, key=len, reverse=True)
            self.control = re.compile("|".join(re.escape(t) for t in ordered)) if ordered else None
        if self.pieces is None:
            self.pieces = PieceEncoder.of(getattr(self.tokenizer, "backend_tokenizer", None))

    def text(self, messages: Sequence[Mapping[str, Any]], tools: list[dict[str, Any]] | None,
             generation_prompt: bool) -> str:
        try:
            rendered = self.tokenizer.apply_chat_template(
                list(messages), tools=tools, chat_template=self.template.text, tokenize=False,
                add_generation_prompt=generation_prompt, **self.kwargs,
            )
        except Exception as exc:  # jinja's raise_exception, a missing key: the example's fault
            raise Refused("template_error", f"{type(exc).__name__}: {str(exc)[:200]}") from None
        return str(rendered)

    def tagged(self, messages: Sequence[Mapping[str, Any]],
               tools: list[dict[str, Any]] | None) -> tuple[str, list[tuple[int, int]]]:
        """The full render and its ``{% generation %}`` character spans, from the one
        function ``apply_chat_template`` renders with, given what it gives it (messages
        without None values, the special tokens and the template arguments)."""
        from transformers.utils import chat_template_utils

        render: Any = chat_template_utils.render_jinja_template  # typed as returning str; it returns a pair
        conversation = [{k: v for k, v in m.items() if v is not None} for m in messages]
        try:
            rendered, indices = render(
                conversations=[conversation], tools=tools, chat_template=self.template.text,
                return_assistant_tokens_mask=self.template.generation_tags, add_generation_prompt=False,
                **{**self.tokenizer.special_tokens_map, **self.kwargs},
            )
        except Exception as exc:
            raise Refused("template_error", f"{type(exc).__name__}: {str(exc)[:200]}") from None
        return str(rendered[0]), [(int(a), int(b)) for a, b in (indices[0] if indices else [])]

    def encode(self, text: str) -> tuple[list[int], np.ndarray]:
        """Ids and offsets (an ``(n, 2)`` array) of a render, tokenised as
        ``apply_chat_template`` does."""
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        try:
            if self.pieces is not None:
                return self.pieces.encode(text)
            if backend is not None:
                return encode_whole(backend, text)
            out = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
            ids, offsets = out["input_ids"], out["offset_mapping"]
        except (TypeError, ValueError) as exc:  # a lone surrogate, say
            raise Refused("bad_messages", f"cannot tokenise: {str(exc)[:200]}") from None
        flat = np.fromiter(itertools.chain.from_iterable(offsets), dtype=np.int64, count=2 * len(offsets))
        return ids if isinstance(ids, list) else list(ids), flat.reshape(-1, 2)

    def prefix_renderer(self, messages: Sequence[Mapping[str, Any]], tools: list[dict[str, Any]] | None,
                        full: str) -> Callable[[int, bool], str] | None:
        """``render(n, generation_prompt)``: the render of ``messages[:n]`` through
        minijinja, when its render of the whole conversation is ``full`` exactly (the
        render transformers gave); None: render through ``text`` (transformers) alone."""
        def exact(n: int, generation_prompt: bool) -> str:
            return self.text(messages[:n], tools, generation_prompt)

        fast = self._fast_template()
        if fast is None:
            self.renders["jinja2"] += 1
            return None
        from pipeline.collate.fast_render import prepare, prepare_tools, prepare_variables

        try:
            prepared, plain_tools = prepare(messages), prepare_tools(tools)
            if self._variables is None:
                self._variables = prepare_variables(self.tokenizer, self.kwargs)
            variables = self._variables
            fast.begin()
            agrees = fast.render(prepared, plain_tools, False, variables) == full
        except Exception:  # minijinja refuses what jinja2 took: this example goes the exact way
            agrees = False
        if not agrees:
            self.renders["jinja2"] += 1
            return None
        self.renders["minijinja"] += 1

        def quick(n: int, generation_prompt: bool) -> str:
            try:
                return str(fast.render(prepared[:n], plain_tools, generation_prompt, variables))
            except Exception:
                return exact(n, generation_prompt)

        return quick

    def _fast_template(self) -> Any:
        if not self.fast:
            return None
        if self._compiled is None:
            from pipeline.collate.fast_render import FastTemplate

            self._compiled = FastTemplate.compile(self.template.text) or False
        return self._compiled or None

    def generation_prompt(self) -> str:
        """What the generation prompt adds after a user turn (``<|im_start|>assistant\n``)."""
        if self._generation is None:
            plain = [{"role": "user", "content": "u"}]
            with_prompt = self.text(plain, None, True)
            without = self.text(plain, None, False)
            self._generation = with_prompt[len(without):] if with_prompt.startswith(without) else ""
        return self._generation


def stage_renderer(stage: str, folder: Path, template: str, kwargs: Mapping[str, Any]) -> Renderer:
    """The renderer a stage uses for the model folder it was given: its tokenizer, the
    template ``choose_template`` picks, one clear error for a template that cannot frame
    a single turn."""
    from pipeline.collate.tokenizer import choose_template, load_tokenizer
    from pipeline.core.errors import TracelakeError

    tokenizer = load_tokenizer(folder)
    chosen = choose_template(tokenizer, template)
    try:
        return Renderer(tokenizer, chosen, dict(kwargs))
    except Refused as refused:
        raise TracelakeError(f"{stage} cannot use the chat template {chosen.name!r}: {refused}") from None


def turn_terminator(renderer: Renderer) -> str:
    """What the template writes after an assistant message's text (``<|im_end|>``,
    ``<|eot_id|>``, ``<end_of_turn>``), found by rendering a sentinel."""
    sentinel = "tracelake-sentinel-7f3a"
    text = renderer.text([{"role": "user", "content": "u"}, {"role": "assistant", "content": sentinel}], None, False)
    if sentinel not in text:
        raise Refused("span_not_terminated", "the template does not render an assistant message's text")
    tail = text[text.rindex(sentinel) + len(sentinel):].strip()
    if not tail:
        raise Refused("span_not_terminated", "the template writes nothing after an assistant message")
    return tail


def mask_conversation(
    renderer: Renderer,
    messages: Sequence[Mapping[str, Any]],
    tools: list[dict[str, Any]] | None,
    train_from: int = 0,
    max_length: int | None = None,
) -> Masked:
    """Masks the assistant messages at index ``train_from`` and after (a preference
    completion trains only its own turns)."""
    if not isinstance(messages, list) or not all(isinstance(m, dict) and "role" in m for m in messages):
        raise Refused("bad_messages")
    for m in messages:
        if not isinstance(m.get("content"), str | None):
            raise Refused("bad_messages", "content is not a string (a list of parts renders differently per template)")
    _refuse_control_tokens(renderer, messages, tools)
    turns = [i for i, m in enumerate(messages) if m["role"] == "assistant" and i >= train_from and i > 0]
    if not turns:
        raise Refused("no_assistant_turn")
    full, generation_spans = renderer.tagged(messages, tools)
    render = renderer.prefix_renderer(messages, tools, full)
    try:
        spans, prompts = _turn_spans(renderer, messages, tools, turns, full, render)
    except (Refused, _FastPathDiffers):
        if render is None:
            raise
        # minijinja and jinja2 can part on a branch the whole render never takes (the
        # generation prompt, a prefix's last message): the exact path has the last word.
        renderer.renders.subtract(["minijinja"])
        renderer.renders += Counter(jinja2=1)  # (+= also drops the count it took to zero)
        spans, prompts = _turn_spans(renderer, messages, tools, turns, full, None)
    return _token_masks(renderer, full, generation_spans, spans, prompts, train_from, max_length)


class _FastPathDiffers(Exception):
    """A minijinja prefix render that does not end on jinja2's generation prompt."""


def _turn_spans(renderer: Renderer, messages: Sequence[Mapping[str, Any]], tools: list[dict[str, Any]] | None,
                turns: list[int], full: str, fast: Callable[[int, bool], str] | None
                ) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """Each trained turn's character span and its generation prompt's, proven by
    rendering its prefixes (``fast``: minijinja's renders, None: transformers')."""
    def exact(n: int, generation_prompt: bool) -> str:
        return renderer.text(messages[:n], tools, generation_prompt)

    render = fast or exact
    header = renderer.generation_prompt()
    spans: list[tuple[int, int]] = []
    prompts: list[tuple[int, int]] = []  # character ranges of generation prompts
    previous = ""
    for i in turns:
        prompt = render(i, True)
        if header and prompt.endswith(header):
            before = prompt[: len(prompt) - len(header)]
        elif fast is not None:  # jinja2's generation prompt (its header) is the reference: no guessing
            raise _FastPathDiffers()
        else:  # a generation prompt that depends on the conversation: render it apart
            before = render(i, False)
        if len(prompt) <= len(before):  # the header would be inside the span
            raise Refused("generation_prompt_missing", f"before message {i}")
        upto = full if i == len(messages) - 1 else render(i + 1, False)
        for shorter, longer, what in ((previous, before, f"history before message {i}"),
                                      (before, prompt, f"the generation prompt of message {i}"),
                                      (prompt, upto, f"message {i}"), (upto, full, "the full conversation")):
            if not longer.startswith(shorter):
                raise Refused("not_prefix_preserving", f"{what} re-renders what came before")
        if not upto[len(prompt):].rstrip().endswith(renderer.terminator):
            raise Refused("span_not_terminated", f"message {i} does not end on {renderer.terminator!r}")
        _check_rendered(messages[i], upto[len(prompt):], i)
        prompts.append((len(before), len(prompt)))
        spans.append((len(prompt), len(upto)))
        previous = upto
    return spans, prompts


def _token_masks(renderer: Renderer, full: str, generation_spans: list[tuple[int, int]],
                 spans: list[tuple[int, int]], prompts: list[tuple[int, int]], train_from: int,
                 max_length: int | None) -> Masked:
    ids, raw = renderer.encode(full)
    offsets = _check_offsets(raw, len(full))
    mask, token_spans = _token_mask(offsets, spans)
    if renderer.template.generation_tags:
        tagged = _generation_mask(raw, generation_spans)
        # A preference completion trains only its own turns: compare from the first one on.
        since = 0 if train_from == 0 else token_spans[0][0]
        if not np.array_equal(tagged[since:], mask[since:]):
            raise Refused("mask_differs_from_generation_tags", _first_difference(mask, tagged))
    for start, end in prompts:  # the tokens overlapping each generation prompt
        first = int(np.searchsorted(offsets[:, 1], start, side="right"))
        stop = int(np.searchsorted(offsets[:, 0], end, side="left"))
        if mask[first:stop].any():
            raise Refused("generation_prompt_trained", f"characters {start}-{end}")
    if not mask.any():
        raise Refused("empty_mask")
    return _truncated(ids, mask, token_spans, max_length)


def _check_rendered(message: Mapping[str, Any], span: str, index: int) -> None:
    """The span shows the message's text and the names of its calls (Llama 3's
    templates drop tool calls; a template may drop content it cannot place)."""
    content = message.get("content")
    # Thinking inline in the content (``...</think>answer``) is placed by the template:
    # the answer after it must show.
    visible = content.rsplit("</think>", 1)[-1].strip() if isinstance(content, str) else ""
    if visible and visible not in span:
        raise Refused("assistant_output_dropped", f"message {index}'s text is not in its rendered turn")
    for call in message.get("tool_calls") or []:
        function = call.get("function") if isinstance(call, dict) else None
        name = function.get("name") if isinstance(function, dict) else None
        if isinstance(name, str) and name not in span:
            raise Refused("assistant_output_dropped", f"message {index}'s call {name} is not in its rendered turn")


def _refuse_control_tokens(renderer: Renderer, messages: Sequence[Mapping[str, Any]],
                           tools: list[dict[str, Any]] | None) -> None:
    if renderer.control is None:
        return
    text = json.dumps([messages, tools], ensure_ascii=False, default=str)
    found = renderer.control.search(text)
    if found:
        raise Refused("control_token_in_content", found.group(0))


def _check_offsets(offsets: np.ndarray, length: int) -> np.ndarray:
    """Offsets never go backwards and never past the render, and the last token ends it.
    Returns them with every gap (characters no token claims: a space a tokenizer trims
    from ``▁hello``) given to the token after it, so a token that stands for a space
    across a span edge straddles it."""
    if not len(offsets):
        return offsets
    starts, ends = offsets[:, 0], offsets[:, 1]
    reached = np.maximum.accumulate(ends)
    bad = (starts < 0) | (ends < starts) | (ends > length)
    bad[1:] |= ends[1:] < reached[:-1]
    if bad.any():
        k = int(np.argmax(bad))
        raise Refused("offsets_do_not_tile", f"token {k} at {starts[k]}-{ends[k]}")
    if int(reached[-1]) != length:
        raise Refused("offsets_do_not_tile", f"tokens end at {int(reached[-1])}, the render at {length}")
    claimed = offsets.copy()
    claimed[:, 0] = np.minimum(starts, np.concatenate([[0], reached[:-1]]))
    return claimed


def _token_mask(offsets: np.ndarray, spans: list[tuple[int, int]]) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """1 for tokens wholly inside a span; the token range [first, end) of each span.
    Offsets are in order (``_check_offsets``), so each span is two binary searches."""
    starts, ends = offsets[:, 0], offsets[:, 1]
    mask = np.zeros(len(offsets), dtype=np.int8)
    token_spans: list[tuple[int, int]] = []
    for start, end in spans:
        first = int(np.searchsorted(ends, start, side="right"))  # tokens ending by ``start`` are before
        stop = int(np.searchsorted(starts, end, side="left"))  # tokens starting at ``end`` are after
        inside_starts, inside_ends = starts[first:stop], ends[first:stop]
        crossing = (inside_starts < start) | (inside_ends > end)
        if crossing.any():
            k = first + int(np.argmax(crossing))
            raise Refused("token_straddles_span",
                          f"token {k} spans characters {starts[k]}-{ends[k]}, the turn {start}-{end}")
        mask[first:stop] = inside_ends > inside_starts
        token_spans.append((first, stop))
    return mask, token_spans


def _generation_mask(offsets: np.ndarray, spans: list[tuple[int, int]]) -> np.ndarray:
    """The template's ``assistant_masks`` as ``apply_chat_template`` builds it: from the
    token holding a span's first character to the one holding its last."""
    starts, ends = offsets[:, 0], offsets[:, 1]
    mask = np.zeros(len(offsets), dtype=np.int8)
    for start, end in spans:
        first = int(np.searchsorted(ends, start, side="right"))  # the first token ending after ``start``
        if first >= len(offsets) or starts[first] > start:
            break
        last = int(np.searchsorted(ends, end - 1, side="right"))  # the first token holding ``end - 1``
        stop = last + 1 if last < len(offsets) and starts[last] <= end - 1 else len(offsets)
        mask[first:stop] = 1
    return mask


def _first_difference(mine: np.ndarray, theirs: np.ndarray) -> str:
    for k, (a, b) in enumerate(zip(mine, theirs, strict=False)):
        if a != b:
            return f"first at token {k} (prefix-diff {a}, tags {b})"
    return f"lengths {len(mine)} and {len(theirs)}"


def _truncated(ids: list[int], mask: np.ndarray, token_spans: list[tuple[int, int]],
               max_length: int | None) -> Masked:
    cut = len(ids)
    kept = token_spans
    if max_length is not None and len(ids) > max_length:
        kept = [span for span in token_spans if span[1] <= max_length]
        if not kept:
            raise Refused("too_long", f"{len(ids)} tokens, the first turn ends at {token_spans[0][1]}")
        cut = kept[-1][1]
    trained = mask[:cut] == 1
    labels = np.where(trained, np.asarray(ids[:cut], dtype=np.int64), IGNORE).tolist()
    return Masked(ids[:cut], labels, len(kept), int(trained.sum()), dropped_turns=len(token_spans) - len(kept),
                  dropped_tokens=len(ids) - cut, spans=kept)
