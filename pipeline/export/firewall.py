"""The contamination firewall: checks every export re-applies to what it actually wrote.

The stages filter before writing; these checks run again on the written Parquet and
JSONL (``validate`` hooks), so a bug, a hand edit or a planted row fails the stage
instead of reaching a trainer.

Secrets are looked for **per string value** (message content, reasoning, tool names,
argument keys and values): a secret lives inside one string, and a row's strings are a
subset of its conversation's strings whatever an export removes (skip-listed tools,
thinking), so a conversation score found clean stays clean in every export. The scan
uses only collect's public redaction API: ``Redactor(fold_home=False).redact_many`` as
a batch screen (one RE2 pass over all strings; with home folding off, a string comes
back changed exactly when ``find_secrets`` finds something in it), then ``find_secrets``
on the changed strings for their kinds. An independent rule set (detect-secrets, see
``pipeline.secrets.independent``) scans the same strings, so the redactor's blind spots
are not the firewall's. Without either the check fails closed.

Validation stays cheap without trusting the run: each written JSONL file must be
byte-identical to the canonical rendering of the re-read Parquet table (one comparison;
otherwise every file row is parsed and checked on its own), and each JSON field is
either byte-identical to a conversation score scanned and found clean (a digest lookup
against the re-read ``conversations`` table) or parsed and scanned in full.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import xxhash

from pipeline.export.common import Quarantine
from pipeline.secrets import scanner_table
from schemas.receipt import SecretRescan

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
    return find_secrets


def _screen() -> Callable[[Sequence[str | None]], list[str | None]] | None:
    """collect's public batch redaction, used as a screen; None when it is not there."""
    try:
        from pipeline.collect.redact import Redactor
    except ImportError:
        return None
    redact_many = getattr(Redactor(fold_home=False), "redact_many", None)
    return redact_many if callable(redact_many) else None


def _independent() -> Callable[[list[str]], list[list[str]]]:
    try:
        from pipeline.secrets.independent import find_many
    except ImportError as exc:  # fail closed, like the redactor's engines
        raise SecretScannerUnavailable(
            "detect-secrets is not installed; cannot rescan for secrets independently"
        ) from exc
    return find_many


def secret_kinds_many(texts: Sequence[str]) -> list[list[str]]:
    """Sorted distinct secret kinds per text: collect's engines (its own rules and the
    catalogue), screened in one batch, united with an independent scanner's findings
    (``detect_secrets:<type>``), so a secret both of collect's engines miss is still
    caught unless a third rule set misses it too."""
    find = _find_secrets()
    independent = _independent()
    screen = _screen()
    if screen is None:  # no batch screen: every text goes through find_secrets
        flagged: Iterable[int] = range(len(texts))
    else:
        screened = screen(texts)  # as given: an ArrowStrings goes to Arrow without re-encoding
        flagged = [i for i, (a, b) in enumerate(zip(texts, screened, strict=True)) if a != b]
    kinds: list[list[str]] = [[] for _ in texts]
    for i in flagged:
        if texts[i]:
            kinds[i] = sorted({kind for kind, _, _ in find(texts[i])})
    for i, found in enumerate(independent(list(texts))):
        if found:
            kinds[i] = sorted(set(kinds[i]) | set(found))
    return kinds


def first_tokens(texts: Sequence[str], tokens: Sequence[str]) -> list[str | None]:
    """Per text, the first of ``tokens`` (in their order) it contains; one RE2 pass."""
    found: list[str | None] = [None] * len(texts)
    if not len(texts) or not tokens:
        return found
    pattern = "|".join(re.escape(t) for t in tokens)
    arrow = pa.array(texts, type=pa.large_string())
    hits = pc.match_substring_regex(arrow, pattern)
    for i in pc.indices_nonzero(hits.fill_null(False)).to_pylist():
        text = arrow[i].as_py()
        found[i] = next(t for t in tokens if t in text)
    return found


class ArrowStrings(Sequence[str]):
    """A string column as a Python sequence, for batch screens that go through Arrow:
    ``pa.array(seq)`` takes the column as it is (``__arrow_array__``) instead of encoding
    every Python string again; values become Python strings once, when first read."""

    def __init__(self, array: pa.Array | pa.ChunkedArray) -> None:
        combined = array.combine_chunks() if isinstance(array, pa.ChunkedArray) else array
        self.array = combined.cast(pa.large_string())
        self._values: list[str] | None = None

    def __arrow_array__(self, type: pa.DataType | None = None) -> pa.Array:
        return self.array if type is None else self.array.cast(type)

    @property
    def values(self) -> list[str]:
        if self._values is None:
            self._values = self.array.to_pylist()
        return self._values

    def __len__(self) -> int:
        return len(self.array)

    def __getitem__(self, index: int) -> str:  # type: ignore[override]
        return self.values[index]

    def __iter__(self) -> Iterator[str]:
        return iter(self.values)


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


def content_strings(messages: Any) -> Iterator[str]:
    """Strings a trainer would tokenize: content, reasoning, tool names and arguments.

    A value that is not a message list (a planted or tools field) yields all its strings.
    """
    if not isinstance(messages, list) or not all(isinstance(m, dict) and "role" in m for m in messages):
        yield from walk_strings(messages)
        return
    for message in messages:
        for key in ("content", "reasoning_content"):
            value = message.get(key)
            if isinstance(value, str):
                yield value
        for call in message.get("tool_calls") or []:
            function = call.get("function", {}) if isinstance(call, dict) else {}
            yield from walk_strings(function.get("name"))
            yield from walk_strings(function.get("arguments"))


def _message_strings(messages: list[dict[str, Any]], out: list[str]) -> None:
    """content_strings for well-formed messages, appended to ``out`` (the hot path)."""
    for message in messages:
        content = message.get("content")
        if isinstance(content, str):
            out.append(content)
        reasoning = message.get("reasoning_content")
        if isinstance(reasoning, str):
            out.append(reasoning)
        for call in message.get("tool_calls") or ():
            function = call["function"]
            args = function["arguments"]
            if isinstance(args, dict):
                _add_call_strings(out, function["name"], args)
            else:
                out.append(function["name"])
                out.extend(walk_strings(args))


def call_strings(name: str, args: dict[str, Any]) -> list[str]:
    """The strings a call contributes to its conversation: its name, then each argument
    key and the strings inside its value (the scan's order, shared with prepare)."""
    out: list[str] = []
    _add_call_strings(out, name, args)
    return out


def _add_call_strings(out: list[str], name: str, args: dict[str, Any]) -> None:
    out.append(name)
    for key, value in args.items():
        out.append(key)
        if isinstance(value, str):
            out.append(value)
        else:
            out.extend(walk_strings(value))


class StringScan:
    """Secret kinds and template tokens of many string groups, each distinct string once.

    Groups share one flat list; the batch screen runs over the distinct strings and,
    when none is flagged (the usual case), no group is looked at again.
    """

    def __init__(self, tokens: Sequence[str] = TEMPLATE_TOKENS) -> None:
        self.tokens = tuple(tokens)
        self.distinct = 0  # distinct strings scanned, once ``results`` has run
        self._strings: list[str] = []
        self._bounds: list[int] = [0]

    def add(self, strings: Iterable[str]) -> int:
        self._strings.extend(strings)
        self._bounds.append(len(self._strings))
        return len(self._bounds) - 2

    def add_messages(self, messages: list[dict[str, Any]]) -> int:
        """A conversation built by this package (fast path; ``add(content_strings(...))``
        for anything read back from disk)."""
        _message_strings(messages, self._strings)
        self._bounds.append(len(self._strings))
        return len(self._bounds) - 2

    def text(self, group: int) -> str:
        """The group's non-empty strings joined by newlines: what dedupe compares."""
        return "\n".join([x for x in self._strings[self._bounds[group] : self._bounds[group + 1]] if x])

    def results(self) -> list[tuple[list[str], str | None]]:
        """(secret kinds, first template token) per group, in add order."""
        unique = [u for u in set(self._strings) if u]
        unique.sort()  # deterministic batches
        self.distinct = len(unique)
        kinds = secret_kinds_many(unique)
        found = first_tokens(unique, self.tokens)
        flagged = {u: (k, t) for u, k, t in zip(unique, kinds, found, strict=True) if k or t}
        n_groups = len(self._bounds) - 1
        if not flagged:
            return [([], None)] * n_groups
        rank = {t: i for i, t in enumerate(self.tokens)}
        out: list[tuple[list[str], str | None]] = []
        for g in range(n_groups):
            hits = [flagged[x] for x in self._strings[self._bounds[g] : self._bounds[g + 1]] if x in flagged]
            k = sorted({kind for kinds_, _ in hits for kind in kinds_})
            toks = [t for _, t in hits if t is not None]
            out.append((k, min(toks, key=lambda t: rank[t]) if toks else None))
        return out


def identity_errors(where: str, key: str, id_name: str, seen: set[str], ids: set[str],
                    table: str) -> list[str]:
    """Every export row's identity checks: ids are unique, and each row is one the stage's
    own table holds (a row planted into a file is not)."""
    errors = []
    if key in seen:
        errors.append(f"{where}: {key}: duplicate {id_name}")
    seen.add(key)
    if key not in ids:
        errors.append(f"{where}: {key}: row not in the {table} table")
    return errors


def json_digest(value: str | bytes) -> str:
    """xxh3-128 of a stored JSON value's UTF-8 bytes."""
    return xxhash.xxh3_128_hexdigest(value.encode("utf-8") if isinstance(value, str) else value)


class FieldScan:
    """Firewall scan of written fields: each distinct value parsed (when JSON) and its
    strings scanned once. Callers leave out values already known clean (see
    ``inputs.known_clean_mask``)."""

    def __init__(self, tokens: Sequence[str] = TEMPLATE_TOKENS) -> None:
        self.scan = StringScan(tokens)
        self.items: list[tuple[str, str, str, int, bool]] = []
        self._groups: dict[Any, int] = {}  # a repeated value is parsed once
        self.vouched = 0  # values left out because score scanned them clean
        self.findings: Counter[str] = Counter()

    def vouch(self, known: Iterable[bool]) -> None:
        """Count the values a caller leaves out as known clean (for the receipt)."""
        self.vouched += sum(known)

    def report(self) -> SecretRescan:
        """What ``errors`` scanned and found, for the export receipt's validation."""
        return SecretRescan(scanners=scanner_table(), strings_scanned=self.scan.distinct,
                            values_vouched=self.vouched, findings=dict(sorted(self.findings.items())))

    def add(self, where: str, key: str, field_name: str, value: Any, check_tokens: bool = True) -> None:
        memo = value if isinstance(value, str) else None
        if memo is not None and memo in self._groups:
            group = self._groups[memo]
        else:
            parsed = value
            if isinstance(value, str):
                try:
                    parsed = orjson.loads(value)
                except orjson.JSONDecodeError:
                    parsed = value
            group = self.scan.add(content_strings(parsed))
            if memo is not None:
                self._groups[memo] = group
        self.items.append((where, key, field_name, group, check_tokens))

    def add_text(self, where: str, key: str, field_name: str, text: str | None, check_tokens: bool) -> None:
        """A plain text field (not JSON): scanned as one string."""
        self.items.append((where, key, field_name, self.scan.add([text or ""]), check_tokens))

    def errors(self) -> list[str]:
        results = self.scan.results()
        self.findings = Counter()
        out = []
        for where, key, field_name, group, check in self.items:
            kinds, token = results[group]
            self.findings.update(kinds)
            if kinds:
                out.append(f"{where}: {key}: secret ({', '.join(kinds)}) in {field_name}")
            if check and token:
                out.append(f"{where}: {key}: template token {token!r} in {field_name}")
        return out


# --- JSONL files ------------------------------------------------------------------------


_ESCAPE = r'["\\\x00-\x1f]'  # what JSON must escape inside a string (orjson escapes nothing else)
_NULL = pa.scalar(b"null", pa.large_binary())


def _fragments(column: pa.ChunkedArray | pa.Array, embedded: bool) -> pa.Array:
    """Each value of a column as its JSON text (large_binary, no nulls).

    ``embedded``: the column already holds compact sorted-key JSON (null or "" = null).
    Strings that need no escaping are quoted in Arrow; the rest, and any other type, go
    through orjson value by value, so the bytes equal ``orjson.dumps`` of the value.
    """
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    kind = array.type
    if embedded:
        raw = array.cast(pa.large_binary())
        empty = pc.fill_null(pc.equal(pc.binary_length(raw), 0), True)
        return pc.if_else(empty, _NULL, raw) if pc.any(empty).as_py() else raw
    if pa.types.is_boolean(kind):
        return pc.if_else(array, pa.scalar(b"true", pa.large_binary()),
                          pa.scalar(b"false", pa.large_binary())).fill_null(_NULL)
    if pa.types.is_integer(kind):
        return array.cast(pa.large_string()).cast(pa.large_binary()).fill_null(_NULL)
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        text = array.cast(pa.large_string())
        escape = pc.fill_null(pc.match_substring_regex(text, _ESCAPE), False)
        quote = pa.scalar('"', pa.large_string())
        quoted = pc.binary_join_element_wise(quote, text, quote, pa.scalar("", pa.large_string()))
        quoted = quoted.cast(pa.large_binary())
        if pc.any(escape).as_py():
            rows = pc.indices_nonzero(escape).to_pylist()
            dumped = pa.array([orjson.dumps(v) for v in text.take(rows).to_pylist()], pa.large_binary())
            quoted = pc.replace_with_mask(quoted, escape, dumped)
        return quoted.fill_null(_NULL)
    return pa.array([orjson.dumps(v) for v in array.to_pylist()], pa.large_binary())


def render_jsonl(table: pa.Table, json_fields: Sequence[str]) -> pa.Buffer:
    """One sorted-key object a line; JSON-string columns embedded as real JSON.

    Byte-identical to ``orjson.dumps(row, OPT_SORT_KEYS)`` per row with the JSON columns
    parsed, but built column-wise in Arrow: the stored JSON goes in verbatim, scalar
    columns are encoded once per column, and the lines are joined by one kernel whose
    output buffer is the file (no per-row Python objects for the large columns).
    """
    if table.num_rows == 0:
        return pa.py_buffer(b"")
    parts: list[pa.Array | str] = []
    for i, name in enumerate(sorted(table.column_names)):
        parts.append(("{" if i == 0 else ",") + orjson.dumps(name).decode() + ":")
        parts.append(_fragments(table[name], name in json_fields))
    pieces = [pa.scalar(p.encode(), pa.large_binary()) if isinstance(p, str) else p for p in parts]
    lines = pc.binary_join_element_wise(*pieces, pa.scalar(b"}\n", pa.large_binary()),
                                       pa.scalar(b"", pa.large_binary()))
    return _values_buffer(lines)


def _values_buffer(array: pa.Array) -> pa.Buffer:
    """The concatenated values of a (large_)binary array without nulls, as one buffer."""
    offsets = np.frombuffer(array.buffers()[1], dtype=np.int64)[array.offset : array.offset + len(array) + 1]
    data = array.buffers()[2]
    return data.slice(int(offsets[0]), int(offsets[-1] - offsets[0]))


def binary_rows(column: pa.ChunkedArray | pa.Array) -> Iterator[memoryview | None]:
    """Each value of a string column as a view of its UTF-8 bytes (None for nulls), chunk
    by chunk from the Arrow buffers: no Python string, no combined copy."""
    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    for chunk in chunks:
        array = chunk.cast(pa.large_binary())
        if len(array) == 0:
            continue
        offsets = np.frombuffer(array.buffers()[1], dtype=np.int64)[array.offset : array.offset + len(array) + 1]
        buffer = array.buffers()[2]
        data = memoryview(buffer) if buffer is not None else memoryview(b"")
        bounds = offsets.tolist()
        valid = array.is_valid().to_pylist() if array.null_count else None
        for i in range(len(array)):
            yield data[bounds[i] : bounds[i + 1]] if valid is None or valid[i] else None


def value_digests(column: pa.ChunkedArray | pa.Array) -> list[str | None]:
    """xxh3-128 of each value's UTF-8 bytes (None for nulls), read from the Arrow
    buffers: large JSON columns are never turned into Python strings to be hashed."""
    digest = xxhash.xxh3_128_hexdigest
    return [None if v is None else digest(v) for v in binary_rows(column)]


BATCH_ROWS = 1024  # rows a streamed table is read, rendered and compared in


def table_batches(path: Path, rows: int = BATCH_ROWS) -> Iterator[pa.Table]:
    """A Parquet file as tables of ``rows`` rows. Large JSON tables are streamed: one
    whole-table copy of them costs more in fresh memory (page faults) than in work."""
    for batch in pq.ParquetFile(path).iter_batches(batch_size=rows):
        yield pa.Table.from_batches([batch])


def write_stream(path: Path, parts: Iterable[pa.Buffer | bytes]) -> None:
    """Atomic write of consecutive buffers (a rendering produced batch by batch)."""
    from pipeline.core.store import atomic_path

    with atomic_path(path) as tmp, tmp.open("wb") as handle:
        for part in parts:
            handle.write(part)


class StreamMatch:
    """Compares a file with a rendering fed to it in consecutive buffers, reading the
    file alongside (never whole); ``matches()`` once everything was fed."""

    def __init__(self, path: Path) -> None:
        self._handle = path.open("rb") if path.exists() else None
        self._ok = self._handle is not None

    def feed(self, expected: pa.Buffer | bytes) -> None:
        if not self._ok or self._handle is None:
            return
        data = self._handle.read(len(expected))
        wanted = expected if isinstance(expected, pa.Buffer) else pa.py_buffer(expected)
        self._ok = len(data) == len(expected) and pa.py_buffer(data).equals(wanted)

    def matches(self) -> bool:
        if self._handle is None:
            return False
        with self._handle:
            return self._ok and self._handle.read(1) == b""


def write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> int:
    """Atomic JSONL write (sorted keys, one object a line); returns the row count.

    Each line is copied out of orjson's output at once (adding its newline): orjson's
    bytes keep a worst-case buffer of up to ~10x the text, so a list of them would not."""
    lines = [orjson.dumps(row, option=orjson.OPT_SORT_KEYS) + b"\n" for row in rows]
    write_bytes(path, b"".join(lines))
    return len(lines)


def write_bytes(path: Path, data: pa.Buffer | bytes) -> None:
    from pipeline.core.store import atomic_write_bytes

    atomic_write_bytes(path, data)  # type: ignore[arg-type,unused-ignore]  # any buffer: Path.write_bytes


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    for line in path.read_bytes().splitlines():
        if line.strip():
            rows.append(orjson.loads(line))
    return rows


def file_matches(path: Path, expected: pa.Buffer | bytes) -> bool:
    """The written file holds exactly the canonical rendering of the table."""
    if path.stat().st_size != len(expected):
        return False
    wanted = pa.py_buffer(expected) if isinstance(expected, bytes) else expected
    return bool(pa.py_buffer(path.read_bytes()).equals(wanted))


def screen_quarantine(
    ids: list[tuple[str, str]], kinds: list[list[str]], tokens: list[str | None], quarantine: Quarantine
) -> list[bool]:
    """Quarantine rows with a template token or a secret; returns the keep mask."""
    keep = []
    for (task_id, session_id), k, token in zip(ids, kinds, tokens, strict=True):
        if token:
            quarantine.add("template_token_in_content", task_id, session_id, token)
        elif k:
            quarantine.add("secret_detected", task_id, session_id, ",".join(k))
        keep.append(not token and not k)
    return keep
