"""The maintained secret catalogue: Kingfisher's rules (betterleaks, Kingfisher and Google's
Veles families), scanned in process by its Rust engine.

Why a catalogue: a private list of patterns grows one leak at a time (letters-only
Hugging Face tokens, SendGrid, Slack webhooks...); the catalogue holds hundreds of
provider formats with tests per rule, versioned with the package.

How it is used: the engine costs ~10 µs a call and 100-180 MB/s, too much for every
string of a corpus, so the rules' own patterns also go into the redactor's Hyperscan
screen (``screen_patterns``, a superset in prefilter mode) and the engine runs only on
strings that screen flags (about 1% of real log text). Findings are spans of the string
scanned; a secret found inside base64 text covers the whole encoded run.

Rules load from Kingfisher's compiled-rule cache in the user's cache folder (never the
lake, which others may write), ~0.4 s warm, ~4.5 s the first time on a machine: in the
background (``prefetch``) from the CLI's start on a root's first run, else once collect
finds files to parse (a run whose files all come from collect's caches never loads
them), or else when a screen first flags a string that holds more than this package's
detectors found there (``redact._masked``).
"""

from __future__ import annotations

import contextlib
import json
import re
import threading
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pipeline.secrets.warm import warm_text

CONFIDENCE: Literal["low", "medium", "high"] = "medium"
_NAMED_GROUP = re.compile(r"\(\?P<[A-Za-z_][A-Za-z0-9_]*>")
_KIND_CHARS = re.compile(r"[^a-z0-9]+")


@dataclass(frozen=True)
class Finding:
    kind: str  # placeholder label, e.g. "github_pat"
    rule: str  # the catalogue's rule id, e.g. "betterleaks.github-pat"
    start: int  # character offsets in the scanned text
    end: int


def kind_of(rule_id: str) -> str:
    """``betterleaks.github-pat`` -> ``github_pat``; ``veles.secrets/sendgrid`` -> ``sendgrid``."""
    name = rule_id.rsplit("/", 1)[-1]
    name = name.split(".", 1)[1] if "." in name else name
    return _KIND_CHARS.sub("_", name.lower()).strip("_")


class _Engine:
    """One scanner per process (a forked worker inherits its parent's, which is safe)."""

    def __init__(self) -> None:
        from kingfisher_sdk import Rules, Scanner

        self.rules = Rules(confidence=CONFIDENCE)
        self.scanner = Scanner(self.rules, base64=True)
        self.version = _version()
        self.warmed = False

    def warm(self) -> None:
        """Scan a text that fires every rule (see pipeline.secrets.warm), in the thread
        that will scan: the engine's regexes keep a fast path for the first thread that
        uses them (Rust's regex pools), and every other thread takes a shared one, about
        twice the cost a call. So ``prefetch``'s thread only loads."""
        self.scanner.scan(warm_text(_rule_patterns(self.rules)))
        self.warmed = True


_ENGINE: _Engine | None = None
_LOCK = threading.Lock()
_LOADING: threading.Thread | None = None


def _engine() -> _Engine:
    """Loaded by the first caller that needs it (or by ``prefetch``'s thread, which a
    caller then waits for), and warmed by that caller."""
    global _ENGINE
    loading = _LOADING
    if loading is not None and loading is not threading.current_thread():
        loading.join()
    if _ENGINE is None or not _ENGINE.warmed:
        with _LOCK:
            if _ENGINE is None:
                _ENGINE = _Engine()
            if not _ENGINE.warmed and threading.current_thread() is not loading:
                _ENGINE.warm()
    return _ENGINE


def prefetch() -> None:
    """Start loading the rules in a thread, so that a run's set-up and its first parsing
    hide the load (native code, without the GIL). A process must not fork while it runs
    (``loading``): collect parses in-process until it ends. Not a daemon thread, so a
    process that ends first waits for it rather than cutting native code short."""
    global _LOADING
    with _LOCK:
        if _ENGINE is not None or _LOADING is not None or not available():
            return
        _LOADING = threading.Thread(target=_load_quietly, name="secret-catalogue", daemon=False)
        _LOADING.start()


def loading() -> bool:
    """Whether ``prefetch``'s thread is still loading the rules."""
    return _LOADING is not None and _LOADING.is_alive()


def loaded() -> bool:
    """Whether this process has loaded the rules (tests pin when it must not)."""
    return _ENGINE is not None


def _load_quietly() -> None:
    with contextlib.suppress(Exception):  # the caller's own load raises it again
        _engine()


def _version() -> str:
    from kingfisher_sdk import _native

    return str(getattr(_native, "__version__", "?"))


def available() -> bool:
    try:
        import kingfisher_sdk  # noqa: F401
    except ImportError:
        return False
    return True


@lru_cache(maxsize=4)
def screen_patterns(saved: Path | None = None) -> tuple[str, ...]:
    """Every rule's pattern, in a form Hyperscan and RE2 take (named groups unnamed).
    Each matches wherever its rule can find something outside base64 text.

    Read from ``saved`` (a folder ``save_patterns`` wrote, for this engine version and
    confidence) when it holds them: then the rules need not be loaded to build screens.
    """
    if saved is not None:
        with contextlib.suppress(OSError, ValueError, TypeError):
            listed = json.loads((saved / _saved_name()).read_text())
            if isinstance(listed, list) and all(isinstance(p, str) for p in listed):
                return tuple(listed)
    return _rule_patterns(_engine().rules)


def _rule_patterns(rules: Any) -> tuple[str, ...]:
    return tuple(_NAMED_GROUP.sub("(", rules.detail(meta["id"])["pattern"]) for meta in rules.metadata())


def save_patterns(folder: Path) -> None:
    """Write ``screen_patterns`` into ``folder`` (part of the installation, by the build)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / _saved_name()).write_text(json.dumps(list(screen_patterns()), indent=0) + "\n")


def _saved_name() -> str:
    return f"catalogue-{identity()}.json"


def identity() -> str:
    """What the catalogue's findings depend on: the engine version and confidence. Part
    of collect's shard key, so new rules re-redact what old ones left."""
    return f"kingfisher-{_version()}-{CONFIDENCE}"


def find(text: str) -> list[Finding]:
    """Visible findings in ``text``, as character spans of the secret (the whole encoded
    run for a secret found in base64)."""
    data = text.encode("utf-8", "surrogatepass")
    findings = _engine().scanner.scan(data)
    if not findings:
        return []
    ascii_only = len(data) == len(text)
    out = []
    for f in findings:
        if not f.visible:
            continue
        start, end = _span(data, f)
        if ascii_only:
            out.append(Finding(kind_of(f.rule_id), f.rule_id, start, end))
        else:
            out.append(Finding(kind_of(f.rule_id), f.rule_id, _chars(data, start, forward=False), _chars(data, end, forward=True)))
    return out


def _span(data: bytes, finding: Any) -> tuple[int, int]:
    location = finding.location
    start, end = int(location["start_offset"]), int(location["end_offset"])
    if not finding.is_base64_encoded:
        secret = finding.secret.encode("utf-8", "surrogatepass")
        at = data.find(secret, start, max(end, start + len(secret)))
        if at < 0:
            at = data.find(secret)
        if at >= 0:
            return at, at + len(secret)
    return start, end


def _chars(data: bytes, offset: int, forward: bool) -> int:
    """The character offset of a byte offset. The engine reads bytes, so a match may
    start or end inside a character (a ``.`` took one byte of an emoji): a span's start
    moves back and its end forward to whole characters, the safe side for a redaction."""
    while 0 < offset < len(data) and 0x80 <= data[offset] < 0xC0:  # a continuation byte
        offset += 1 if forward else -1
    return len(data[:offset].decode("utf-8", "surrogatepass"))
