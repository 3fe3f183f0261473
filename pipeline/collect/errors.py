"""Tool-error kinds and Codex exit codes, read from result text.

``is_error`` itself always comes from structure (Claude's ``is_error`` flag, Codex exit
codes); these patterns only name the kind of an error already known to be one. The
order follows the reference error-site detector: the first kind that matches wins.
"""

from __future__ import annotations

import re

import orjson

from pipeline.collect.redact import _Screen

ERROR_KINDS: tuple[tuple[str, re.Pattern[str]], ...] = (
    (
        "command_not_found",
        re.compile(r"command not found|: not found\b|is not recognized as an internal or external command|"
                   r"No such command|executable file not found", re.I),
    ),
    (
        "file_not_found",
        re.compile(r"No such file or directory|File does not exist|FileNotFoundError|ENOENT|"
                   r"does not exist|cannot find the (?:file|path)|file not found|Path not found", re.I),
    ),
    (
        "permission_denied",
        re.compile(r"Permission denied|EACCES|EPERM|Operation not permitted|PermissionError|"
                   r"Access is denied|not allowed|permission to use", re.I),
    ),
    (
        "syntax_error",
        re.compile(r"SyntaxError|syntax error|IndentationError|parse error|ParseError|"
                   r"unexpected token|Unexpected end of", re.I),
    ),
    (
        "connection_error",
        re.compile(r"Connection refused|ECONNREFUSED|ECONNRESET|ETIMEDOUT|Could not resolve host|"
                   r"Network is unreachable|ConnectionError|Connection reset|Name or service not known|"
                   r"getaddrinfo|timed out", re.I),
    ),
)

# One pass that fails wherever every kind fails (the same alternatives, same flags), so
# the common "no known kind" result costs one scan instead of one per kind.
_ANY_KIND = re.compile("|".join(f"(?:{pattern.pattern})" for _, pattern in ERROR_KINDS), re.I)
# The same union as an RE2 screen (linear time; ``re`` has no literal prefix to skip to
# in a case-insensitive alternation: ~80 µs per 4 KB sample). RE2 admits at least what
# ``re`` does: its ``\b`` is ASCII (a Unicode boundary is an ASCII one) and it folds
# every non-ASCII character ``re`` folds onto an ASCII letter except the Turkish dotted
# and dotless i, so samples holding those go to ``re``.
_ANY_KIND_SCREEN = _Screen(f"(?i:{_ANY_KIND.pattern})")
prepare_screen = _ANY_KIND_SCREEN.prepare
_TURKISH_I = ("\u0130", "\u0131")
_SCAN_CHARS = 4096
_EXIT_CODE = re.compile(r"(?:^|\n)\s*(?:Exit code:|Process exited with code)\s*(-?\d+)")
_RUNNING = re.compile(r"Process running with session ID \d+")
_FAILED_MARKERS = re.compile(
    r"command timed out after \d+ milliseconds|aborted by user after|^failed to parse function arguments", re.I
)


def error_kind(is_error: bool | None, text: str | None) -> str | None:
    """Kind of a failed call; null unless the call is known to have failed."""
    if not is_error:
        return None
    sample = (text or "")[:_SCAN_CHARS]
    if sample.isascii() or not any(c in sample for c in _TURKISH_I):
        if not _ANY_KIND_SCREEN.hit(sample):
            return "tool_error"
    elif _ANY_KIND.search(sample) is None:
        return "tool_error"
    for kind, pattern in ERROR_KINDS:
        if pattern.search(sample):
            return kind
    return "tool_error"


def codex_exit_code(text: str) -> int | None:
    """Exit code from a Codex tool output: JSON metadata.exit_code, or the text forms."""
    stripped = text.lstrip()
    if stripped.startswith("{") and '"exit_code"' in stripped:
        try:
            obj = orjson.loads(stripped)
        except orjson.JSONDecodeError:
            obj = None
        if isinstance(obj, dict):
            meta = obj.get("metadata")
            if isinstance(meta, dict) and isinstance(meta.get("exit_code"), int):
                return int(meta["exit_code"])
    match = _EXIT_CODE.search(text[:_SCAN_CHARS])
    return int(match.group(1)) if match else None


# Claude Code leads a failed Bash result with it: "Exit code 127\n/bin/sh: ...".
_CLAUDE_EXIT_LEAD = re.compile(r"Exit code (-?\d+)(?:\n|$)")


def claude_exit_code(tool: str, text: str | None, structured: object, is_error: bool) -> int | None:
    """A Claude Code Bash call's exit code: the "Exit code N" lead of a failed result; 0
    for a result Claude Code reported as a finished, successful command (its structured
    ``toolUseResult`` holds stdout and stderr, and it was not interrupted); else unknown."""
    if tool != "Bash":
        return None
    if text is not None:
        lead = _CLAUDE_EXIT_LEAD.match(text)
        if lead:
            return int(lead.group(1))
    if (not is_error and isinstance(structured, dict) and "stdout" in structured and "stderr" in structured
            and structured.get("interrupted") is False):
        return 0
    return None


def codex_is_error(text: str | None, exit_code: int | None) -> bool | None:
    """Non-zero exit, timeout or abort = error; a still-running command is undetermined."""
    if exit_code is not None:
        return exit_code != 0
    if text is None:
        return None
    sample = text[:_SCAN_CHARS]
    if _FAILED_MARKERS.search(sample):
        return True
    if _RUNNING.search(sample):
        return None
    return False
