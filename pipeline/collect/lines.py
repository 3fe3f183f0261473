"""Streaming line reader and tolerant JSON decoding for session logs.

Real corpora hold torn last lines, NUL bytes, invalid UTF-8, lone surrogate escapes and
multi-megabyte lines. The reader yields one line at a time (an oversized line is skipped
in bounded chunks, never held), repairs only what needs no guessing, and reports
everything else as a reason so each line lands in exactly one tally.
"""

from __future__ import annotations

import io
import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from pipeline.core.hashing import HashingReader

BLANK = "blank"
OVERSIZED = "oversized"
NESTING_TOO_DEEP = "nesting_too_deep"
_SKIP_CHUNK = 1 << 20
_BOM = b"\xef\xbb\xbf"


class NestingTooDeep(ValueError):
    """A JSON value nested deeper than orjson writes (255 levels), found while a record
    was being mapped; its line is quarantined as ``nesting_too_deep``. Real logs nest a
    few levels; a record this deep is garbage or an attack, and following it would
    overflow the stack of every recursive step after parsing."""

    def __init__(self, line_no: int | None = None) -> None:
        super().__init__(f"line {line_no}: nested deeper than 255 levels")
        self.line_no = line_no


def check_depth(error: TypeError) -> None:
    """Re-raise orjson's "Recursion limit reached" as ``NestingTooDeep``."""
    if "Recursion limit" in str(error):
        raise NestingTooDeep() from error


def iter_lines(
    path: Path, max_line_bytes: int, repairs: Counter[str], reader: HashingReader | None = None
) -> Iterator[tuple[int, bytes, str | None]]:
    """Yield (1-based line number, bytes without newline, problem or None).

    ``problem`` is BLANK for whitespace-only lines and OVERSIZED for lines above
    ``max_line_bytes`` (their bytes are not returned: the payload is the byte count
    as ASCII). NUL bytes and a UTF-8 byte-order mark opening the file are stripped and
    a final line without newline is accepted; each repair is tallied in ``repairs``.
    With ``reader`` (a ``HashingReader`` over ``path``) the bytes come through it, so
    its digest is of exactly the lines yielded.
    """
    limit = max_line_bytes + 2  # room for "\r\n"
    opened = io.BufferedReader(reader, buffer_size=1 << 20) if reader is not None else path.open("rb", buffering=1 << 20)
    with opened as handle:
        line_no = 0
        while True:
            chunk = handle.readline(limit)
            if not chunk:
                return
            line_no += 1
            if chunk.endswith(b"\n"):
                line = chunk[:-1]
            elif len(chunk) == limit:
                size = len(chunk) + _skip_rest(handle)
                yield line_no, str(size).encode(), OVERSIZED
                continue
            else:
                line = chunk
                if line.strip():
                    repairs["missing_final_newline"] += 1
            if len(line) > max_line_bytes:
                yield line_no, str(len(line)).encode(), OVERSIZED
                continue
            if line_no == 1 and line.startswith(_BOM):  # an editor's byte-order mark
                line = line[len(_BOM):]
                repairs["utf8_bom_stripped"] += 1
            if b"\x00" in line:
                line = line.replace(b"\x00", b"")
                repairs["nul_bytes_stripped"] += 1
            if not line.strip():
                yield line_no, b"", BLANK
                continue
            yield line_no, line, None


def _skip_rest(handle: Any) -> int:
    """Consume the remainder of an oversized line in bounded reads; return its size."""
    skipped = 0
    while True:
        part = handle.readline(_SKIP_CHUNK)
        skipped += len(part)
        if not part or part.endswith(b"\n"):
            return skipped - (1 if part.endswith(b"\n") else 0)


def decode_json(line: bytes, repairs: Counter[str]) -> tuple[Any, str | None]:
    """Parse one line: (object, None) or (None, reason).

    orjson is the fast path. It refuses lone surrogate escapes ("\\ud800"), which
    the stdlib accepts; those strings are kept with the surrogate spelled out as text
    (a lossless repair: Arrow cannot store a lone surrogate).
    """
    try:
        return orjson.loads(line), None
    except orjson.JSONDecodeError:
        pass
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        return None, "invalid_utf8"
    try:
        escaped = _escape_surrogates(json.loads(text))
    except ValueError:
        return None, "malformed_json"
    except RecursionError:  # valid JSON nested deeper than any parser here will follow
        return None, NESTING_TOO_DEEP
    repairs["lone_surrogate_escaped"] += 1
    return escaped, None


def _escape_surrogates(obj: Any) -> Any:
    if isinstance(obj, str):
        try:
            obj.encode("utf-8")
            return obj
        except UnicodeEncodeError:
            return obj.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(obj, dict):
        return {_escape_surrogates(k): _escape_surrogates(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_escape_surrogates(v) for v in obj]
    return obj
