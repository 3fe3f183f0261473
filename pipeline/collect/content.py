"""Content-block helpers shared by the readers: blob placeholders, caps, canonical JSON.

Base64 images and documents would dominate the lake's size and say nothing a query
needs, so they are replaced by a short placeholder before anything else (including
redaction, which would otherwise scan megabytes of base64). Caps are applied after
redaction so a secret is never cut in half and left partly readable.
"""

from __future__ import annotations

import json
from typing import Any

import orjson
import xxhash

from pipeline.collect.lines import check_depth

_BLOB_TYPES = frozenset({"image", "document"})
_DATA_URL_MIN = 256


def str_field(record: dict[str, Any], key: str) -> str | None:
    """A field that should be a string, or None when it is anything else: logs of
    unseen versions put lists and objects where names were, and those must not reach
    a set lookup (unhashable) or a column of strings."""
    value = record.get(key)
    return value if isinstance(value, str) else None


def _placeholder(media_type: object, size: int) -> str:
    return f"[{media_type or 'binary'} base64 omitted: {size} chars]"


def _strip_source(block: dict[str, Any]) -> dict[str, Any]:
    source = block.get("source")
    if isinstance(source, dict) and isinstance(source.get("data"), str):
        data = source["data"]
        return {**block, "source": {**source, "data": _placeholder(source.get("media_type"), len(data))}}
    return block


def _strip_data_url(value: object) -> object:
    if isinstance(value, str) and value.startswith("data:") and len(value) > _DATA_URL_MIN:
        head = value[5 : value.find(";")] if ";" in value[:80] else None
        return _placeholder(head, len(value))
    return value


_STRIPPED_TYPES = frozenset({*_BLOB_TYPES, "input_image"})


def strip_blobs(blocks: list[Any]) -> list[Any]:
    """Blocks with image/document payloads and data URLs replaced by placeholders.

    The list itself when no block is of a type that can hold one (most records).
    """
    for block in blocks:
        if isinstance(block, dict):
            kind = str_field(block, "type")
            if kind in _STRIPPED_TYPES or (kind == "tool_result" and isinstance(block.get("content"), list)):
                break
    else:
        return blocks
    out: list[Any] = []
    for block in blocks:
        if isinstance(block, dict):
            kind = str_field(block, "type")
            if kind in _BLOB_TYPES:
                block = _strip_source(block)
            elif kind == "tool_result" and isinstance(block.get("content"), list):
                block = {**block, "content": strip_blobs(block["content"])}
            elif kind == "input_image":
                block = {**block, "image_url": _strip_data_url(block.get("image_url"))}
        out.append(block)
    return out


def cap_strings(obj: Any, limit: int) -> Any:
    """Every string longer than ``limit`` UTF-8 bytes cut, with a marker of what was cut."""
    if isinstance(obj, str):
        if len(obj) * 4 <= limit:
            return obj
        text, cut = cut_text(obj, limit)
        return text + f"…[truncated {cut} bytes]" if cut else text
    if isinstance(obj, dict):
        return {k: cap_strings(v, limit) for k, v in obj.items()}
    if isinstance(obj, list):
        return [cap_strings(v, limit) for v in obj]
    return obj


def cut_text(text: str, limit: int) -> tuple[str, int]:
    """(text cut to at most ``limit`` UTF-8 bytes on a character boundary, bytes cut)."""
    if len(text) * 4 <= limit:
        return text, 0
    data = text.encode("utf-8")
    if len(data) <= limit:
        return text, 0
    kept = data[:limit].decode("utf-8", "ignore")
    return kept, len(data) - len(kept.encode("utf-8"))


def dumps(obj: Any) -> str:
    """Canonical JSON (sorted keys, compact); falls back to the stdlib for big ints."""
    try:
        return orjson.dumps(obj, option=orjson.OPT_SORT_KEYS).decode("utf-8")
    except TypeError as error:
        check_depth(error)
        return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def text_digest(text: str) -> str:
    return xxhash.xxh3_64_hexdigest(text.strip().encode("utf-8", "backslashreplace"))


def result_text(content: Any) -> str | None:
    """A tool result's text: a string, text blocks joined, images named, or None if absent."""
    if content is None:
        return None
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for item in content:
            if isinstance(item, dict):
                kind = item.get("type")
                if kind in ("text", "input_text", "output_text"):
                    parts.append(str(item.get("text") or ""))
                elif kind in ("image", "input_image"):
                    parts.append("[image]")
                elif kind == "tool_reference":
                    parts.append(f"[tool_reference {item.get('tool_name', '')}]")
                else:
                    parts.append(dumps(item))
            elif isinstance(item, str):
                parts.append(item)
        return "\n".join(parts)
    return dumps(content)


def capped_dumps(obj: Any, limit: int) -> str:
    """``dumps(cap_strings(obj, limit))``, walking the value only when some string can be long.

    No string inside can be longer (in UTF-8 bytes) than the whole document, so a short
    document needs no cap: the common case costs one serialisation.
    """
    text = dumps(obj)
    if len(text) * 4 <= limit or len(text.encode("utf-8")) <= limit:
        return text
    return dumps(cap_strings(obj, limit))


def joined_json(parts: list[bytes] | None, blocks: list[Any], limit: int) -> str | bytes:
    """``capped_dumps(blocks, limit)`` from the blocks' JSON pieces, when they are known.

    ``parts`` are orjson's sorted-key JSON lists whose items make up ``blocks``; a list
    serialises as its items joined by commas, so joining their insides is the same text.
    That text is returned as orjson's UTF-8 bytes: Arrow stores a string column from
    bytes as is, and decoding them to ``str`` only to have Arrow encode them again costs.
    """
    if parts is None:
        return capped_dumps(blocks, limit)
    if len(parts) == 1:
        data = parts[0]
    else:
        data = b"[" + b",".join([p[1:-1] for p in parts if len(p) > 2]) + b"]"
    if len(data) <= limit:
        return data
    return dumps(cap_strings(blocks, limit))
