"""The contamination firewall: checks every export re-applies to what it actually wrote.

The stages filter before writing; these checks run again on the written Parquet and
JSONL (``validate`` hooks), so a bug, a hand edit or a planted row fails the stage
instead of reaching a trainer. The secret rescan is fail-closed: without collect's
redaction patterns the check reports an error rather than passing silently.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import orjson

from pipeline.export.common import Quarantine
from pipeline.export.conversation import Conversation, conversation_text

# Chat-template control tokens of the common open model families. Inside content they
# either forge turns when rendered or (Qwen3's </think>) split a message in two.
TEMPLATE_TOKENS = (
    "<|im_start|>", "<|im_end|>", "<|endoftext|>", "<tool_call>", "</tool_call>",
    "<tool_response>", "</tool_response>", "<think>", "</think>",
    "<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
    "<|eot_id|>", "<|eom_id|>", "<|python_tag|>", "<start_of_turn>", "<end_of_turn>",
    "<|start|>", "<|end|>", "<|message|>", "<|channel|>", "<|return|>", "<|call|>",
    "<|system|>", "<|user|>", "<|assistant|>", "<|fim_prefix|>", "<|fim_middle|>",
    "<|fim_suffix|>", "[INST]", "[/INST]",
)


class SecretScannerUnavailable(RuntimeError):
    pass


def _find_secrets() -> Callable[[str], list[tuple[str, int, int]]]:
    try:
        from pipeline.collect.redact import find_secrets
    except ImportError as exc:  # fail closed: no patterns, no pass
        raise SecretScannerUnavailable(
            "pipeline.collect.redact.find_secrets is unavailable; cannot rescan for secrets"
        ) from exc
    return find_secrets  # type: ignore[no-any-return]


def secret_kinds(text: str) -> list[str]:
    """Kinds of secrets collect's redaction patterns find in ``text`` (sorted, distinct)."""
    if not text:
        return []
    return sorted({kind for kind, _, _ in _find_secrets()(text)})


def template_token(text: str, tokens: Iterable[str] = TEMPLATE_TOKENS) -> str | None:
    for token in tokens:
        if token in text:
            return token
    return None


def walk_strings(value: Any) -> Iterator[str]:
    """Every string inside a JSON value, keys of objects included."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield key
            yield from walk_strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from walk_strings(item)


def content_strings(messages: list[dict[str, Any]]) -> Iterator[str]:
    """Strings a trainer would tokenize: content, reasoning, tool names and arguments."""
    for message in messages:
        for key in ("content", "reasoning_content"):
            value = message.get(key)
            if isinstance(value, str):
                yield value
        for call in message.get("tool_calls") or []:
            function = call.get("function", {})
            yield from walk_strings(function.get("name"))
            yield from walk_strings(function.get("arguments"))


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    for line in path.read_bytes().splitlines():
        if line.strip():
            rows.append(orjson.loads(line))
    return rows


def scan_texts(
    texts: list[str], tokens: Iterable[str] = TEMPLATE_TOKENS, check_tokens: bool = True
) -> tuple[list[list[str]], list[str | None]]:
    """Secret kinds and first template token per text, vectorised over the batch.

    collect's own RE2 gate (the one find_secrets applies to long texts) runs once over
    the whole batch; only texts it cannot rule out go through find_secrets itself.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    find = _find_secrets()
    candidates: Iterable[int] = range(len(texts))
    from pipeline.collect import redact

    gate, min_len = getattr(redact, "_SECRET_RE2", None), getattr(redact, "_RE2_MIN_LEN", None)
    if isinstance(gate, str) and isinstance(min_len, int):
        long_ids = [i for i, t in enumerate(texts) if len(t) >= min_len]
        keep = set(range(len(texts))) - set(long_ids)
        if long_ids:
            arr = pa.array([texts[i] for i in long_ids], type=pa.large_string())
            maybe = pc.match_substring_regex(arr, gate).to_pylist()
            keep |= {i for i, hit in zip(long_ids, maybe, strict=True) if hit}
        candidates = sorted(keep)
    kinds: list[list[str]] = [[] for _ in texts]
    for i in candidates:
        if texts[i]:
            kinds[i] = sorted({kind for kind, _, _ in find(texts[i])})
    found: list[str | None] = [None] * len(texts)
    tokens = tuple(tokens)
    if check_tokens and texts and tokens:
        arr = pa.array(texts, type=pa.large_string())
        pattern = "|".join(re.escape(t) for t in tokens)
        hits = pc.match_substring_regex(arr, pattern).to_pylist()
        for i, hit in enumerate(hits):
            if hit:
                found[i] = template_token(texts[i], tokens)
    return kinds, found


def field_text(value: Any) -> str:
    """The text of one row field: message strings for conversations, else its JSON text."""
    if isinstance(value, list) and value and all(isinstance(m, dict) and "role" in m for m in value):
        return "\n".join(content_strings(value))
    if isinstance(value, str):
        return value
    return orjson.dumps(value).decode()


class ViolationScan:
    """Collects (where, row, field, value) and reports secrets and template tokens at once."""

    def __init__(self, tokens: Iterable[str] = TEMPLATE_TOKENS) -> None:
        self.tokens = tuple(tokens)
        self.items: list[tuple[str, str, str, bool]] = []
        self.texts: list[str] = []

    def add(self, where: str, key: str, values: dict[str, Any], check_tokens: bool = True) -> None:
        for field_name, value in values.items():
            self.items.append((where, key, field_name, check_tokens))
            self.texts.append(field_text(value))

    def errors(self) -> list[str]:
        # The table and the files hold the same values: scan each distinct text once.
        unique = sorted(set(self.texts))
        kinds_u, tokens_u = scan_texts(unique, self.tokens)
        index = {text: i for i, text in enumerate(unique)}
        kinds = [kinds_u[index[t]] for t in self.texts]
        tokens = [tokens_u[index[t]] for t in self.texts]
        out = []
        for (where, key, field_name, check_tokens), k, token in zip(self.items, kinds, tokens, strict=True):
            if k:
                out.append(f"{where}: {key}: secret ({', '.join(k)}) in {field_name}")
            if check_tokens and token:
                out.append(f"{where}: {key}: template token {token!r} in {field_name}")
        return out


def screen(convs: list[Conversation], quarantine: Quarantine, tokens: list[str]) -> list[Conversation]:
    """Set aside rows with chat-template tokens or secrets (one batched scan)."""
    kinds, found = scan_texts([conversation_text(c.messages) for c in convs], tokens)
    kept = []
    for conv, k, token in zip(convs, kinds, found, strict=True):
        if token:
            quarantine.add("template_token_in_content", conv.task_id, conv.session_id, token)
        elif k:
            quarantine.add("secret_detected", conv.task_id, conv.session_id, ",".join(k))
        else:
            kept.append(conv)
    return kept


def write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> int:
    """Atomic JSONL write (sorted keys, one object a line); returns the row count."""
    from pipeline.core.store import atomic_write_bytes

    lines = [orjson.dumps(row, option=orjson.OPT_SORT_KEYS) for row in rows]
    atomic_write_bytes(path, b"".join(line + b"\n" for line in lines))
    return len(lines)
