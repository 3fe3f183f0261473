"""The firewall's independent scanner: Yelp's detect-secrets rules, which neither
collect's redactor nor the catalogue uses.

The export firewall fails a stage on any secret it finds in what the stage wrote. With
only the redactor's own engines, a secret both engines miss would pass the firewall
too (the blind spots of the redactor and of its rescan were the same). detect-secrets'
regex detectors are a separate rule set from a separate project; the firewall runs
them beside the redactor's engines, so a secret reaches an export only if all three
miss it. Its entropy and keyword detectors are left out (they flag hashes and any
`password = x`, which would fail every export), and so is its public-IP detector (an
address is not a credential).

Speed: the detectors are Python regexes (~1.5 MB/s over all of them), so their
patterns are compiled into one Hyperscan database (prefilter mode: a superset) and the
detectors run only on strings it flags. Where Hyperscan is not installed every string
is run through them.
"""

from __future__ import annotations

import bisect
import importlib
import inspect
import pkgutil
import re
import threading
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from pipeline.secrets.documented import documented

SOURCE = "detect_secrets"
_EXCLUDED = frozenset({"IPPublicDetector"})
_TOKEN_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.+/=")

try:  # the same optional wheel collect's screens use
    import hyperscan as _hyperscan
except ImportError:  # pragma: no cover - depends on the platform
    _hyperscan = None  # type: ignore[assignment]


@dataclass(frozen=True)
class _Rules:
    plugins: tuple[Any, ...]
    database: Any  # Hyperscan database, or None: run every plugin on every string


@lru_cache(maxsize=1)
def _rules() -> _Rules:
    import detect_secrets.plugins as package
    from detect_secrets.plugins.base import RegexBasedDetector

    plugins: list[Any] = []
    expressions: list[tuple[bytes, int]] = []
    for module_info in pkgutil.iter_modules(package.__path__):
        module = importlib.import_module(f"{package.__name__}.{module_info.name}")
        for name, cls in sorted(vars(module).items()):
            if (inspect.isclass(cls) and issubclass(cls, RegexBasedDetector) and cls is not RegexBasedDetector
                    and cls.__module__ == module.__name__ and name not in _EXCLUDED):
                plugin = cls()
                plugins.append(plugin)
                expressions.extend((_hyperscan_pattern(p), p.flags) for p in plugin.denylist)
    return _Rules(tuple(plugins), _database(expressions))


def _hyperscan_pattern(pattern: re.Pattern[str]) -> bytes:
    """Hyperscan has no flag for Python's VERBOSE, but reads the inline `(?x)`."""
    prefix = "(?x)" if pattern.flags & re.VERBOSE else ""
    return (prefix + pattern.pattern).encode()


def _database(expressions: list[tuple[bytes, int]]) -> Any:
    if _hyperscan is None:
        return None
    flags = []
    for _, flag in expressions:
        value = _hyperscan.HS_FLAG_PREFILTER
        if flag & re.IGNORECASE:
            value |= _hyperscan.HS_FLAG_CASELESS
        if flag & re.DOTALL:
            value |= _hyperscan.HS_FLAG_DOTALL
        if flag & re.MULTILINE:
            value |= _hyperscan.HS_FLAG_MULTILINE
        flags.append(value)
    database = _hyperscan.Database()
    try:
        database.compile(expressions=[e for e, _ in expressions], ids=list(range(len(expressions))),
                         flags=flags)
    except _hyperscan.error:
        return None
    return database


_LOCAL = threading.local()
_BATCH_BYTES = 16 << 20


def _flagged(rules: _Rules, texts: list[str]) -> list[int]:
    """Indices of the texts the prefilter may match: the texts go to Hyperscan joined by
    newlines, a batch at a time, and each match is credited to the text its end falls
    in (a real match lies inside one text, so its text is flagged)."""
    if rules.database is None:
        return list(range(len(texts)))
    scratch = getattr(_LOCAL, "scratch", None)
    if scratch is None:
        scratch = _LOCAL.scratch = _hyperscan.Scratch(rules.database)
    flagged: set[int] = set()
    start = 0
    while start < len(texts):
        parts: list[bytes] = []
        ends: list[int] = []
        size = 0
        index = start
        while index < len(texts) and (size < _BATCH_BYTES or not parts):
            data = texts[index].encode("utf-8", "surrogatepass")
            parts.append(data)
            size += len(data) + 1
            ends.append(size)
            index += 1

        def on_match(_id: int, _from: int, to: int, _flags: int, _context: Any,
                     ends: list[int] = ends, base: int = start) -> None:
            flagged.add(base + bisect.bisect_left(ends, to))

        rules.database.scan(b"\n".join(parts) + b"\n", match_event_handler=on_match, scratch=scratch)
        start = index
    return sorted(i for i in flagged if i < len(texts))


def kind_of(secret_type: str) -> str:
    return f"{SOURCE}:" + re.sub(r"[^a-z0-9]+", "_", secret_type.lower()).strip("_")


def find(text: str) -> list[str]:
    """Sorted distinct kinds (``detect_secrets:<type>``) of what its detectors find in
    ``text``, documented examples left out."""
    return find_many([text])[0]


def find_many(texts: list[str]) -> list[list[str]]:
    """``find`` for each text; the prefilter runs over all of them in a few calls."""
    rules = _rules()
    out: list[list[str]] = [[] for _ in texts]
    for index in _flagged(rules, texts):
        text = texts[index]
        kinds = set()
        for plugin in rules.plugins:
            for value in plugin.analyze_string(text):
                if isinstance(value, str) and value and not documented(_token_around(text, value)):
                    kinds.add(kind_of(plugin.secret_type))
        out[index] = sorted(kinds)
    return out


def _token_around(text: str, value: str) -> str:
    """The whole token a detector's capture sits in (`ghp` captured from `ghp_xxxx...`)."""
    at = text.find(value)
    if at < 0:
        return value
    start, end = at, at + len(value)
    while start > 0 and text[start - 1] in _TOKEN_CHARS:
        start -= 1
    while end < len(text) and text[end] in _TOKEN_CHARS:
        end += 1
    return text[start:end]


def prepare() -> None:
    _rules()
