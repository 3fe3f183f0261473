"""Tool knowledge: JSON Schemas derived from observed calls, key arguments, categories.

Neither Claude Code nor Codex logs its tool schemas, yet chat templates and trainers
need them (``tools=``). Schemas are therefore derived from the arguments actually seen,
with the required arguments of the well-known tools fixed by hand: a required list
inferred from data alone would call any always-present optional argument required.
"""

from __future__ import annotations

import re
import shlex
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import orjson

# Required arguments of the agents' built-in tools (Claude Code 2.x, Codex CLI).
KNOWN_REQUIRED: dict[str, tuple[str, ...]] = {
    "Bash": ("command",),
    "Read": ("file_path",),
    "Write": ("file_path", "content"),
    "Edit": ("file_path", "old_string", "new_string"),
    "MultiEdit": ("file_path", "edits"),
    "NotebookEdit": ("notebook_path", "new_source"),
    "Glob": ("pattern",),
    "Grep": ("pattern",),
    "WebFetch": ("url", "prompt"),
    "WebSearch": ("query",),
    "Task": ("prompt",),
    "Agent": ("prompt",),
    "TodoWrite": ("todos",),
    "BashOutput": ("bash_id",),
    "KillShell": ("shell_id",),
    "ExitPlanMode": ("plan",),
    "shell": ("command",),
    "container.exec": ("command",),
    "exec_command": ("cmd",),
    "write_stdin": ("session_id",),
    "apply_patch": ("input",),
    "update_plan": ("plan",),
    "view_image": ("path",),
}

DESCRIPTIONS: dict[str, str] = {
    "Bash": "Run a shell command.",
    "Read": "Read a file from the local filesystem.",
    "Write": "Write a file to the local filesystem.",
    "Edit": "Replace an exact string in a file.",
    "MultiEdit": "Apply several string replacements to one file.",
    "NotebookEdit": "Edit a cell of a Jupyter notebook.",
    "Glob": "Find files by glob pattern.",
    "Grep": "Search file contents with a regular expression.",
    "WebFetch": "Fetch a URL and process its content with a prompt.",
    "WebSearch": "Search the web.",
    "Task": "Launch a subagent for a task.",
    "Agent": "Launch a subagent for a task.",
    "TodoWrite": "Update the todo list.",
    "shell": "Run a command (argv list).",
    "exec_command": "Run a command in a PTY.",
    "write_stdin": "Write to a running command's stdin and poll its output.",
    "apply_patch": "Apply a patch in the apply_patch format.",
    "update_plan": "Update the plan.",
}

SHELL_TOOLS = frozenset({"Bash", "shell", "exec_command", "local_shell", "container.exec"})
EDIT_TOOLS = frozenset({"Edit", "Write", "MultiEdit", "NotebookEdit"})

# The argument(s) that say what a call did, for RAG steps.
KEY_ARGS: dict[str, tuple[str, ...]] = {
    "Bash": ("command",),
    "Read": ("file_path",),
    "Write": ("file_path",),
    "Edit": ("file_path",),
    "MultiEdit": ("file_path",),
    "NotebookEdit": ("notebook_path",),
    "Glob": ("pattern", "path"),
    "Grep": ("pattern", "path"),
    "WebFetch": ("url",),
    "WebSearch": ("query",),
    "Task": ("description", "subagent_type"),
    "Agent": ("description", "subagent_type"),
    "shell": ("command",),
    "exec_command": ("cmd",),
    "apply_patch": (),
    "update_plan": (),
}

# Also matches inside a truncated (still JSON-escaped) input, where newlines are "\\n".
_PATCH_FILE = re.compile(r"\*\*\* (?:Add|Update|Delete) File: ([^\n\\\"]+)")
_ENV_ASSIGN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
_SHELLS = frozenset({"bash", "sh", "zsh", "/bin/bash", "/bin/sh", "/bin/zsh"})


def parse_args(input_json: str | None) -> dict[str, Any]:
    """Arguments as a JSON object; a non-object input (free-text tools) becomes {input}."""
    if not input_json:
        return {}
    try:
        value = orjson.loads(input_json)
    except orjson.JSONDecodeError:
        return {"input": input_json}
    return value if isinstance(value, dict) else {"input": value}


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return "null"


@dataclass
class _Observed:
    n_calls: int = 0
    n_nonempty: int = 0
    types: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    key_counts: dict[str, int] = field(default_factory=lambda: defaultdict(int))


def parse_all(inputs: list[str | None]) -> list[dict[str, Any]]:
    """parse_args of each input; equal inputs share one parsed (read-only) object, so
    per-call work can be done once per distinct input (resumed and forked sessions repeat
    their calls: 84k calls, 18k distinct inputs at 500 MB)."""
    memo: dict[str | None, dict[str, Any]] = {}
    out = []
    for text in inputs:
        parsed = memo.get(text)
        if parsed is None:
            parsed = memo[text] = parse_args(text)
        out.append(parsed)
    return out


def derive_schemas(calls: Iterable[tuple[str, str, dict[str, Any]]]) -> dict[tuple[str, str], dict[str, Any]]:
    """(source_kind, name) -> {"schema": OpenAI function schema, "required", "n_calls"}."""
    counts: dict[tuple[str, str, int], int] = defaultdict(int)
    distinct: dict[tuple[str, str, int], dict[str, Any]] = {}
    for source_kind, name, args in calls:  # shared parsed objects (parse_all) are observed once
        ident = (source_kind, name, id(args))
        counts[ident] += 1
        distinct[ident] = args
    observed: dict[tuple[str, str], _Observed] = defaultdict(_Observed)
    for (source_kind, name, _), args in distinct.items():
        n = counts[(source_kind, name, id(args))]
        seen = observed[(source_kind, name)]
        seen.n_calls += n
        if args:
            seen.n_nonempty += n
        for key, value in args.items():
            seen.types[key].add(_json_type(value))
            seen.key_counts[key] += n
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for (source_kind, name), seen in sorted(observed.items()):
        required = required_args(name, seen)
        properties: dict[str, Any] = {}
        for key in sorted(set(seen.types) | set(required)):
            types = sorted(seen.types.get(key, {"string"}) - {"null"}) or ["string"]
            properties[key] = {"type": types[0] if len(types) == 1 else types}
        schema = {
            "type": "function",
            "function": {
                "name": name,
                "description": DESCRIPTIONS.get(name, f"The {name} tool (schema derived from observed calls)."),
                "parameters": {"type": "object", "properties": properties, "required": required},
            },
        }
        out[(source_kind, name)] = {"schema": schema, "required": required, "n_calls": seen.n_calls}
    return out


def required_args(name: str, seen: _Observed) -> list[str]:
    if name in KNOWN_REQUIRED:
        return list(KNOWN_REQUIRED[name])
    # Unknown tool: a key every non-empty call carried (needs two calls to say so).
    if seen.n_nonempty < 2:
        return []
    return sorted(k for k, n in seen.key_counts.items() if n == seen.n_nonempty)


def missing_required(args: dict[str, Any], required: Iterable[str]) -> bool:
    """`{}` for a tool with required arguments, or any required argument absent/empty."""
    for key in required:
        value = args.get(key)
        if value is None or value == "" or value == [] or value == {}:
            return True
    return False


def _string_values(value: Any) -> list[str]:
    """Every string value (not key) inside a JSON value; iterative, no generator frames."""
    if type(value) is dict:  # most tool arguments: one level of strings
        flat = list(value.values())
        for item in flat:
            if type(item) is not str:
                break
        else:
            return flat
    out: list[str] = []
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            out.append(item)
        elif isinstance(item, dict):
            stack.extend(reversed(list(item.values())))
        elif isinstance(item, list):
            stack.extend(reversed(item))
    return out


def max_repeated_line(args: dict[str, Any]) -> int:
    """Highest count of one non-blank line inside any string argument value."""
    return _max_repeat(_string_values(args))


def arg_stats(args: dict[str, Any]) -> tuple[int, int]:
    """(max_value_chars, max_repeated_line) in one walk over the argument values."""
    texts = _string_values(args)
    return max((len(t) for t in texts), default=0), _max_repeat(texts)


def _max_repeat(texts: list[str]) -> int:
    best = 0
    for text in texts:
        if text.count("\n") < 3:
            continue
        counts: dict[str, int] = defaultdict(int)
        for line in text.splitlines():
            line = line.strip()
            if line:
                counts[line] += 1
        if counts:
            best = max(best, max(counts.values()))
    return best


def max_value_chars(args: dict[str, Any]) -> int:
    return max((len(t) for t in _string_values(args)), default=0)


def shell_command_text(name: str, args: dict[str, Any]) -> str | None:
    """The command line of a shell-like call, unwrapping ``bash -lc "..."`` argv lists."""
    if name not in SHELL_TOOLS:
        return None
    cmd = args.get("command", args.get("cmd"))
    if isinstance(cmd, list):
        parts = [str(p) for p in cmd]
        if len(parts) >= 3 and parts[0] in _SHELLS and parts[1].startswith("-"):
            return parts[2]
        return shlex.join(parts)
    return cmd if isinstance(cmd, str) else None


_SHLEX_SPECIAL = re.compile(r"[\"'\\#\x0b\x0c\x1c-\x1f\x85\xa0]|[^\x00-\x7f]")


def _split_words(segment: str) -> list[str]:
    """``shlex.split(segment, comments=True)``; plain ASCII without quotes, escapes or
    comments splits the same on whitespace, which is most commands and far cheaper."""
    if _SHLEX_SPECIAL.search(segment) is None:
        return segment.split()
    try:
        return shlex.split(segment, comments=True)
    except ValueError:
        return segment.split()


@lru_cache(maxsize=1 << 16)
def first_command_token(command: str) -> str:
    """First non-flag, non-assignment token of the first command (``cd x &&`` skipped)."""
    for segment in re.split(r"&&|\|\||;|\n", command):
        tokens = _split_words(segment)
        tokens = [t for t in tokens if not t.startswith("-") and not _ENV_ASSIGN.match(t)]
        if not tokens:
            continue
        head = tokens[0].rsplit("/", 1)[-1]
        if head in ("cd", "sudo", "env", "time", "source", "export") and len(tokens) == 1:
            continue
        if head in ("sudo", "env", "time") and len(tokens) > 1:
            head = tokens[1].rsplit("/", 1)[-1]
        if head == "cd":
            continue
        return head
    return "(empty)"


def call_category(name: str, args: dict[str, Any]) -> str:
    """Tool name, or for shell tools the first command token (``Bash:pytest``)."""
    command = shell_command_text(name, args)
    if command is None:
        return name
    return f"{name}:{first_command_token(command)}"


def key_args(name: str, args: dict[str, Any], limit: int = 200) -> dict[str, Any]:
    keys = KEY_ARGS.get(name)
    if keys is None:
        keys = tuple(k for k, v in sorted(args.items()) if isinstance(v, (str, int, float)))[:2]
    out: dict[str, Any] = {}
    for key in keys:
        if key not in args:
            continue
        value = args[key]
        if key in ("command", "cmd"):
            value = shell_command_text(name, args) or value
        if isinstance(value, str) and len(value) > limit:
            value = value[:limit] + "…"
        out[key] = value
    return out


def files_touched(name: str, args: dict[str, Any], values: list[str] | None = None) -> list[str]:
    """Files a call wrote: edit tools' paths and apply_patch headers (also via shell).
    ``values`` = ``_string_values(args)`` when the caller already has them."""
    if name in EDIT_TOOLS:
        path = args.get("file_path", args.get("notebook_path"))
        return [path] if isinstance(path, str) and path else []
    texts = [t for t in (values if values is not None else _string_values(args)) if "*** " in t]
    return [m.strip() for text in texts for m in _PATCH_FILE.findall(text) if m.strip()]


def call_stats(name: str, args: dict[str, Any]) -> tuple[int, int, list[str]]:
    """(max_value_chars, max_repeated_line, files_touched) in one walk over the values."""
    texts = _string_values(args)
    return max(map(len, texts), default=0), _max_repeat(texts), files_touched(name, args, texts)
