"""Shared vocabulary, text templates, ids, secrets and the per-line tally for synthetic corpora.

Everything here draws from a caller's ``random.Random`` so a corpus is a pure function
of its seed. Secret values are built so that one regex per kind finds exactly the
planted values and nothing else: filler such as thinking signatures uses the standard
base64 alphabet (no ``_``/``-``), which cannot form a prefixed token by accident.
"""

from __future__ import annotations

import base64
import datetime as dt
import random
import re
import string
import uuid
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

EPOCH_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z: fixed, never the wall clock.

ALNUM = string.ascii_letters + string.digits
B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
B64 = string.ascii_letters + string.digits + "+/"
URLSAFE = string.ascii_letters + string.digits + "_-"
UPPER32 = string.ascii_uppercase + "234567"
HEX = "0123456789abcdef"


# ---------------------------------------------------------------------------------------
# Output of a generator: lines plus the ground-truth tags each line carries.


@dataclass
class FileOut:
    """One JSONL file: raw line bytes (no newline) and, per line, what it plants.

    Tags travel with their line, so a file that copies a prefix of another file copies
    its ground truth too, and the manifest is a plain sum over every line written.
    """

    relpath: str
    lines: list[bytes] = field(default_factory=list)
    tags: list[tuple[str, ...]] = field(default_factory=list)
    trailing_newline: bool = True

    def add(self, line: bytes, tags: tuple[str, ...] = ()) -> None:
        self.lines.append(line)
        self.tags.append(tags)

    def size(self) -> int:
        return sum(len(b) + 1 for b in self.lines)


@dataclass
class SideFile:
    """A non-JSONL file (a subagent's ``.meta.json``)."""

    relpath: str
    data: bytes


# ---------------------------------------------------------------------------------------
# Ids and time.


def uuid4(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def uuid7(rng: random.Random, ms: int) -> str:
    """A UUIDv7 as Codex writes them, with the millisecond prefix taken from ``ms``."""
    value = (ms & ((1 << 48) - 1)) << 80
    value |= 0x7 << 76
    value |= rng.getrandbits(12) << 64
    value |= 0b10 << 62
    value |= rng.getrandbits(62)
    return str(uuid.UUID(int=value))


def rand_str(rng: random.Random, alphabet: str, k: int) -> str:
    return "".join(rng.choices(alphabet, k=k))


def toolu_id(rng: random.Random) -> str:
    return "toolu_01" + rand_str(rng, B58, 22)


def msg_id(rng: random.Random) -> str:
    return "msg_01" + rand_str(rng, B58, 22)


def req_id(rng: random.Random) -> str:
    return "req_011C" + rand_str(rng, B58, 20)


def call_id(rng: random.Random) -> str:
    return "call_" + rand_str(rng, ALNUM, 24)


def b64_blob(rng: random.Random, n: int) -> str:
    """Opaque base64-like filler (signatures, encrypted reasoning, key bodies).

    A ``+`` or ``/`` at least every 12 characters and no ``_``, ``-``, ``=`` or space: no
    secret pattern (``AIza`` + 35, ``AKIA`` + 16, ``hf_``...) can form inside it by chance.
    """
    out: list[str] = []
    size = 0
    while size < n:
        k = rng.randint(4, 11)
        out.append(rand_str(rng, ALNUM, k))
        out.append(rng.choice("+/"))
        size += k + 1
    return "".join(out)[:n]


def iso(ms: int) -> str:
    stamp = dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def file_stamp(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC).strftime("%Y-%m-%dT%H-%M-%S")


# ---------------------------------------------------------------------------------------
# People and projects.

USERS = ["alice", "bob", "carol", "dmitri", "eve", "farah", "gwen", "hiro"]
PROJECTS = [
    ("billing-api", "py"), ("web-dashboard", "ts"), ("ingest-worker", "go"), ("cli-tools", "rs"),
    ("ml-pipeline", "py"), ("auth-service", "go"), ("docs-site", "ts"), ("kv-store", "rs"),
    ("etl-jobs", "py"), ("mobile-backend", "ts"),
]
BRANCHES = ["main", "main", "main", "develop", "feature/retry-logic", "fix/flaky-tests",
            "refactor/config", "feat/export-csv"]
MODELS_CLAUDE = ["claude-opus-4-6", "claude-sonnet-4-5-20250929", "claude-opus-4-6"]
VERSIONS_CLAUDE = ["2.1.77", "2.1.77", "2.1.86", "2.1.92", "2.0.76"]
SLUG_WORDS = ["mossy", "forging", "flame", "quiet", "amber", "river", "silver", "lantern",
              "brisk", "falcon", "hollow", "meadow", "crimson", "pine", "drifting", "echo"]

SRC_DIRS = {
    "py": ["src/app", "src/app/api", "src/app/models", "tests"],
    "ts": ["src", "src/components", "src/lib", "test"],
    "go": ["cmd/server", "internal/store", "internal/api", "pkg/util"],
    "rs": ["src", "src/bin", "tests"],
}
FILE_STEMS = ["config", "handlers", "models", "client", "retry", "cache", "parser", "server",
              "utils", "auth", "export", "scheduler", "db", "metrics", "routes", "schema"]

CODE_LINES = {
    "py": [
        "import os", "import json", "from pathlib import Path", "from typing import Any",
        "def load_config(path: Path) -> dict[str, Any]:", "    with path.open() as fh:",
        "        return json.load(fh)", "class RetryPolicy:", "    def __init__(self, attempts: int = 3):",
        "        self.attempts = attempts", "    for attempt in range(self.attempts):",
        "        try:", "            return fn(*args, **kwargs)", "        except TimeoutError as exc:",
        "            last = exc", "    raise RuntimeError('retries exhausted') from last",
        "logger = logging.getLogger(__name__)", "    if not rows:", "        return []",
        "    return [normalize(r) for r in rows if r.get('id')]", "@dataclass(frozen=True)",
        "    total += item.amount * item.quantity", "    session.commit()", "", "",
        "    assert response.status_code == 200", "def test_invoice_total(client):",
        "    payload = {'customer_id': 42, 'items': []}", "    return Response(status=204)",
    ],
    "ts": [
        "import { useEffect, useState } from 'react';", "export function formatDate(d: Date): string {",
        "  return d.toISOString().slice(0, 10);", "}", "const [items, setItems] = useState<Item[]>([]);",
        "useEffect(() => {", "  fetchItems().then(setItems);", "}, []);", "export interface Item {",
        "  id: string;", "  title: string;", "  createdAt: number;", "  if (!res.ok) {",
        "    throw new Error(`request failed: ${res.status}`);", "  }", "", "",
        "export default function Dashboard() {", "  return <div className=\"grid\">{rows}</div>;",
        "const cache = new Map<string, Promise<Response>>();", "  await sleep(backoff * 2 ** attempt);",
        "describe('formatDate', () => {", "  it('pads months', () => {", "  expect(out).toBe('2026-01-05');",
    ],
    "go": [
        "package store", "import (", "\t\"context\"", "\t\"errors\"", ")",
        "func (s *Store) Get(ctx context.Context, key string) ([]byte, error) {",
        "\tif key == \"\" {", "\t\treturn nil, errors.New(\"empty key\")", "\t}",
        "\tval, ok := s.data[key]", "\tif !ok {", "\t\treturn nil, ErrNotFound", "\treturn val, nil", "}",
        "type Store struct {", "\tmu   sync.RWMutex", "\tdata map[string][]byte", "", "",
        "func TestGet(t *testing.T) {", "\tif err != nil {", "\t\tt.Fatalf(\"unexpected error: %v\", err)",
        "\tdefer s.mu.RUnlock()", "\tfor _, item := range items {",
    ],
    "rs": [
        "use std::collections::HashMap;", "use anyhow::Result;", "pub struct Cache {",
        "    entries: HashMap<String, Vec<u8>>,", "}", "impl Cache {", "    pub fn new() -> Self {",
        "        Self { entries: HashMap::new() }", "    }",
        "    pub fn get(&self, key: &str) -> Option<&Vec<u8>> {", "        self.entries.get(key)",
        "    let args = Args::parse();", "    match cmd {", "        Command::Run => run(&cfg)?,",
        "        _ => {}", "#[test]", "fn parses_empty_input() {", "    assert_eq!(parse(\"\"), None);",
        "", "", "    Ok(())", "#[derive(Debug, Clone, Serialize, Deserialize)]",
    ],
}

EXT = {"py": "py", "ts": "ts", "go": "go", "rs": "rs"}


def pick_file(rng: random.Random, lang: str) -> str:
    return f"{rng.choice(SRC_DIRS[lang])}/{rng.choice(FILE_STEMS)}.{EXT[lang]}"


def code_block(rng: random.Random, lang: str, n: int) -> list[str]:
    return rng.choices(CODE_LINES[lang], k=n)


def numbered(lines: list[str], start: int = 1) -> str:
    """Claude Code's Read output: ``cat -n`` numbering with an arrow separator."""
    return "\n".join(f"{i:>6}\u2192{line}" for i, line in enumerate(lines, start))


# ---------------------------------------------------------------------------------------
# Prompts.

TASKS = [
    "Add retry with exponential backoff to the HTTP client in {file}",
    "The tests in {file} are failing after the last refactor, can you fix them?",
    "Refactor {file} so the config loading is done once at startup",
    "Write unit tests for the parser in {file}",
    "Why does {file} throw a KeyError when the payload has no customer id?",
    "Add a --dry-run flag to the export command",
    "Can you find where we set the database pool size and make it configurable?",
    "Migrate the date handling in {file} to timezone-aware datetimes",
    "Implement pagination for the /invoices endpoint",
    "Speed up the slow query in {file}; it takes 4s on staging",
    "Add structured logging to {file} and remove the print statements",
    "Review {file} for race conditions around the cache",
    "Set up CI to run the linter and the tests on every push",
    "Rename `process_items` to `normalize_items` everywhere and update the callers",
    "The build fails with a type error in {file}, please take a look",
    "Add input validation to the signup handler and return 422 on bad emails",
    "Write a README section explaining how to run the project locally",
    "Bump the dependencies and make sure nothing breaks",
]
SHORT_PROMPTS = ["ok", "continue", "yes", "go on", "ok", "yes please", "continue", "thanks"]
CORRECTIONS = [
    "no, that's wrong", "undo that", "revert", "no, that's wrong, the old behaviour was correct",
    "undo that change, I want to keep the old API", "revert the last edit please",
    "that's not what I asked for", "stop, don't touch the migrations",
]
EDIT_SUFFIXES = [" (keep the public API unchanged)", ", but only for the v2 endpoints",
                 " and add a test for it", " without adding new dependencies"]
SYSTEM_REMINDER = (
    "<system-reminder>\nThe user opened the file {file} in the IDE. This may or may not be "
    "related to the current task.\n</system-reminder>"
)
INTERRUPT = "[Request interrupted by user]"
INTERRUPT_TOOL = "[Request interrupted by user for tool use]"
REJECTION = (
    "The user doesn't want to proceed with this tool use. The tool use was rejected (eg. if it "
    "was a file edit, the new_string was NOT written to the file). STOP what you are doing and "
    "wait for the user to tell you how to proceed."
)
CAVEAT = (
    "Caveat: The messages below were generated by the user while running local commands. DO NOT "
    "respond to these messages or otherwise consider them in your response unless the user "
    "explicitly asks you to."
)
SLASH_COMMANDS = [("/model", "Set model to opus (claude-opus-4-6)"), ("/cost", "Total cost: $1.27"),
                  ("/context", "Context usage: 41% of 200k tokens"), ("/status", "")]
COMPACT_SUMMARY = (
    "This session is being continued from a previous conversation that ran out of context. The "
    "conversation is summarized below:\nAnalysis:\nThe user asked to {task}. I inspected {file}, "
    "ran the test suite and made edits.\n\nSummary:\n1. Primary Request and Intent:\n   {task}\n"
    "2. Key Technical Concepts:\n{concepts}\n3. Files and Code Sections:\n   - {file}\n{code}\n"
    "4. Pending Tasks:\n   - Re-run the tests and confirm they pass\n\nPlease continue the "
    "conversation from where we left it off without asking the user any further questions."
)
THINKING = [
    "The user wants me to {task}. Let me look at the relevant file first.",
    "The test failure suggests the fixture is stale. I should check how it is constructed.",
    "That command failed. I need a different approach; maybe the tool isn't installed.",
    "I have enough context now. The fix is small: guard the missing key and add a test.",
    "Let me check the git history to see when this behaviour changed.",
    "There are two call sites. I'll update both and then run the full suite.",
]
TEXTS = [
    "Let me look at the current implementation.", "I'll run the tests to see the failure.",
    "Found it: the retry loop swallows the last exception.", "Let me check where this is configured.",
    "The command isn't available here, so I'll fall back to grep.",
    "Now I'll update the callers.", "Running the suite again to confirm.",
]
FINALS = [
    "Done. I {task_lc}. The test suite passes ({n} passed).\n\nChanges:\n- `{file}`: updated the logic\n- added tests covering the edge case",
    "I made the change in `{file}` and verified it with the tests. One thing to note: the old behaviour relied on an implicit default, which is now explicit.",
    "Summary of what changed:\n\n1. `{file}` now validates its input\n2. Added {n} tests\n3. Updated the README\n\nLet me know if you want the same treatment for the other handlers.",
]


def task_prompt(rng: random.Random, lang: str) -> tuple[str, str]:
    file = pick_file(rng, lang)
    return rng.choice(TASKS).format(file=file), file


# ---------------------------------------------------------------------------------------
# Tool outputs.


def _test_names(rng: random.Random, n: int) -> list[str]:
    return [f"test_{rng.choice(FILE_STEMS)}_{rng.choice(['ok', 'empty', 'retry', 'edge', 'large'])}_{i}"
            for i in range(n)]


def test_output(rng: random.Random, framework: str, passing: bool) -> tuple[str, str, int]:
    """(command, output, exit code) for a realistic test-runner summary."""
    n = rng.randint(4, 120)
    failed = 0 if passing else rng.randint(1, max(1, n // 6))
    names = _test_names(rng, min(n, 40))
    if framework == "pytest":
        cmd = rng.choice(["pytest -q", "python -m pytest tests/ -x", "pytest -q tests/test_api.py"])
        lines = ["============================= test session starts ==============================",
                 "platform linux -- Python 3.11.7, pytest-8.3.4, pluggy-1.5.0",
                 f"collected {n} items", ""]
        lines += [f"tests/test_{rng.choice(FILE_STEMS)}.py {'.' * rng.randint(3, 30)}" for _ in range(4)]
        if failed:
            lines += ["", "=================================== FAILURES ===================================",
                      f"____________________________ {names[0]} ____________________________",
                      "    def test_case():", ">       assert result == expected",
                      "E       AssertionError: assert 3 == 4", ""]
            lines.append(f"FAILED tests/test_api.py::{names[0]} - AssertionError: assert 3 == 4")
            lines.append(f"========================= {failed} failed, {n - failed} passed in {rng.uniform(0.2, 30):.2f}s =========================")
        else:
            lines.append(f"============================== {n} passed in {rng.uniform(0.2, 30):.2f}s ==============================")
        return cmd, "\n".join(lines), 1 if failed else 0
    if framework == "jest":
        cmd = rng.choice(["npm test", "npx jest", "npx jest src/lib"])
        lines = [f"{'FAIL' if failed else 'PASS'} src/lib/{rng.choice(FILE_STEMS)}.test.ts"]
        lines += [f"  \u2713 {t} ({rng.randint(1, 40)} ms)" for t in names[:8]]
        if failed:
            lines += [f"  \u2715 {names[0]} (12 ms)", "", "  \u25cf " + names[0], "",
                      "    expect(received).toBe(expected) // Object.is equality", "",
                      "    Expected: \"2026-01-05\"", "    Received: \"2026-1-5\""]
        lines += ["", f"Tests:       {f'{failed} failed, ' if failed else ''}{n - failed} passed, {n} total",
                  f"Time:        {rng.uniform(0.5, 20):.3f} s", "Ran all test suites."]
        return cmd, "\n".join(lines), 1 if failed else 0
    if framework == "go":
        cmd = rng.choice(["go test ./...", "go test ./internal/... -run TestGet", "go test -race ./..."])
        pkgs = ["internal/store", "internal/api", "pkg/util", "cmd/server"]
        lines = []
        if failed:
            lines += [f"--- FAIL: {names[0].title().replace('_', '')} (0.00s)",
                      "    store_test.go:42: unexpected error: key not found", "FAIL",
                      f"FAIL\texample.com/app/{pkgs[0]}\t0.{rng.randint(10, 99)}s"]
        lines += [f"ok  \texample.com/app/{p}\t0.{rng.randint(10, 99)}s" for p in pkgs[1 if failed else 0:]]
        if failed:
            lines.append("FAIL")
        return cmd, "\n".join(lines), 1 if failed else 0
    cmd = rng.choice(["cargo test", "cargo test --all", "cargo test parser"])
    lines = ["   Compiling kv-store v0.3.1 (/src)", f"    Finished test [unoptimized + debuginfo] target(s) in {rng.uniform(1, 40):.2f}s",
             "     Running unittests src/lib.rs", "", f"running {n} tests"]
    lines += [f"test {t} ... ok" for t in names[:10]]
    if failed:
        lines += [f"test {names[0]} ... FAILED", "", "failures:", "",
                  f"---- {names[0]} stdout ----", "thread 'main' panicked at src/lib.rs:88:9:",
                  "assertion `left == right` failed", "", f"test result: FAILED. {n - failed} passed; {failed} failed; 0 ignored; 0 measured; 0 filtered out"]
    else:
        lines.append(f"test result: ok. {n} passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.{rng.randint(10, 99)}s")
    return cmd, "\n".join(lines), 1 if failed else 0


FRAMEWORK = {"py": "pytest", "ts": "jest", "go": "go", "rs": "cargo"}

ERRORS: dict[str, list[tuple[str, str, int]]] = {
    # kind -> (command, output, exit code)
    "command_not_found": [("rg -n 'TODO' src/", "/bin/bash: line 1: rg: command not found", 127),
                          ("fd -e py", "/bin/bash: line 1: fd: command not found", 127),
                          ("jq '.items | length' out.json", "/bin/bash: line 1: jq: command not found", 127)],
    "file_not_found": [("cat config/settings.local.yaml", "cat: config/settings.local.yaml: No such file or directory", 1),
                       ("ls build/", "ls: cannot access 'build/': No such file or directory", 2)],
    "permission_denied": [("cat /var/log/app/error.log", "cat: /var/log/app/error.log: Permission denied", 1),
                          ("./scripts/deploy.sh", "/bin/bash: line 1: ./scripts/deploy.sh: Permission denied", 126)],
    "syntax_error": [("python scripts/migrate.py", "  File \"scripts/migrate.py\", line 14\n    if rows\n           ^\nSyntaxError: expected ':'", 1),
                     ("node scripts/seed.js", "/src/scripts/seed.js:3\n  const x = {\n            ^\nSyntaxError: Unexpected end of input", 1)],
    "connection_error": [("curl -s http://localhost:8080/health", "curl: (7) Failed to connect to localhost port 8080 after 0 ms: Connection refused", 7),
                         ("psql -h localhost -c 'select 1'", "psql: error: connection to server at \"localhost\" (127.0.0.1), port 5432 failed: Connection refused", 2)],
}
RECOVERY_TEXT = {
    "command_not_found": "That tool isn't installed; I'll use grep instead.",
    "file_not_found": "That path doesn't exist. Let me find the right file.",
    "permission_denied": "No permission there. I'll work with the files in the repository instead.",
    "syntax_error": "There's a syntax error on that line; fixing it.",
    "connection_error": "The service isn't running locally. Let me check the configuration instead.",
}

BASH_OK = [
    ("git status", "On branch {branch}\nChanges not staged for commit:\n  (use \"git add <file>...\" to update what will be committed)\n\tmodified:   {file}\n\nno changes added to commit (use \"git add\" and/or \"git commit -a\")"),
    ("git log --oneline -5", "a1c3f9e Fix flaky retry test\n9b2e7d1 Add export command\n4f0c2aa Bump deps\n77d1e02 Refactor config loading\n0e9f3b4 Initial import"),
    ("git diff --stat", " {file} | 14 ++++++++------\n 1 file changed, 8 insertions(+), 6 deletions(-)"),
    ("ls -la", "total 48\ndrwxr-xr-x  8 {user} {user} 4096 Jan  5 10:12 .\ndrwxr-xr-x 24 {user} {user} 4096 Jan  4 18:40 ..\n-rw-r--r--  1 {user} {user}  812 Jan  5 10:12 README.md\ndrwxr-xr-x  4 {user} {user} 4096 Jan  5 10:12 src\ndrwxr-xr-x  2 {user} {user} 4096 Jan  5 10:12 tests"),
    ("wc -l {file}", "{n} {file}"),
    ("npm run build", "\n> build\n> vite build\n\nvite v6.0.7 building for production...\n\u2713 214 modules transformed.\ndist/index.html   0.41 kB\ndist/assets/index.js   182.33 kB\n\u2713 built in 2.81s"),
]


def repeated_lines(rng: random.Random) -> tuple[str, int]:
    """An argument with one line repeated many times (a degenerate generation)."""
    line = rng.choice(["    pass", "console.log('debug');", "// TODO: handle error", "assert True"])
    n = rng.randint(40, 200)
    return "\n".join([line] * n), n


# ---------------------------------------------------------------------------------------
# Secrets: one generator per kind; each call returns a fresh value.

SECRET_KINDS = (
    "aws_access_key", "github_token", "anthropic_key", "openai_key", "slack_token", "gitlab_token",
    "google_api_key", "stripe_key", "huggingface_token", "jwt", "private_key", "bearer_token",
    "database_url", "password_assignment",
)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


SECRET_PATTERNS: dict[str, re.Pattern[str]] = {
    "aws_access_key": re.compile(r"AKIA[A-Z2-7]{16}"),
    "github_token": re.compile(r"ghp_[A-Za-z0-9]{36}"),
    "anthropic_key": re.compile(r"sk-ant-api03-[A-Za-z0-9_-]{93}AA"),
    "openai_key": re.compile(r"sk-proj-[A-Za-z0-9_-]{64}"),
    "slack_token": re.compile(r"xoxb-\d{11}-\d{13}-[A-Za-z0-9]{24}"),
    "gitlab_token": re.compile(r"glpat-[A-Za-z0-9_-]{20}"),
    "google_api_key": re.compile(r"AIza[A-Za-z0-9_-]{35}"),
    "stripe_key": re.compile(r"sk_live_[A-Za-z0-9]{32}"),
    "huggingface_token": re.compile(r"hf_[A-Za-z]{34}"),
    "jwt": re.compile(r"eyJ[A-Za-z0-9_-]+\.eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]{43}"),
    "private_key": re.compile(r"-----BEGIN OPENSSH PRIVATE KEY-----\n[A-Za-z0-9+/\n]+?\n-----END OPENSSH PRIVATE KEY-----"),
    "bearer_token": re.compile(r"Bearer [A-Za-z0-9]{40}"),
    "database_url": re.compile(r"postgres://\w+:[A-Za-z0-9]{16}@[\w.-]+:5432/\w+"),
    "password_assignment": re.compile(r"PASSWORD=[A-Za-z0-9+/]{32}"),
}


def make_secret(rng: random.Random, kind: str) -> str:
    """A fresh value of ``kind`` that contains no value of another kind by chance."""
    while True:
        value = _raw_secret(rng, kind)
        if not any(rx.search(value) for k, rx in SECRET_PATTERNS.items() if k != kind):
            return value


def _raw_secret(rng: random.Random, kind: str) -> str:
    if kind == "aws_access_key":
        return "AKIA" + rand_str(rng, UPPER32, 16)
    if kind == "github_token":
        return "ghp_" + rand_str(rng, ALNUM, 36)
    if kind == "anthropic_key":
        return "sk-ant-api03-" + rand_str(rng, URLSAFE, 93) + "AA"
    if kind == "openai_key":
        return "sk-proj-" + rand_str(rng, URLSAFE, 64)
    if kind == "slack_token":
        return f"xoxb-{rng.randint(10**10, 10**11 - 1)}-{rng.randint(10**12, 10**13 - 1)}-{rand_str(rng, ALNUM, 24)}"
    if kind == "gitlab_token":
        return "glpat-" + rand_str(rng, URLSAFE, 20)
    if kind == "google_api_key":
        return "AIza" + rand_str(rng, URLSAFE, 35)
    if kind == "stripe_key":
        return "sk_live_" + rand_str(rng, ALNUM, 32)
    if kind == "huggingface_token":
        return "hf_" + rand_str(rng, string.ascii_letters, 34)
    if kind == "jwt":
        payload = _b64url(f'{{"sub":"{rng.randint(1000, 99999)}","name":"{rng.choice(USERS)}","iat":{1767225600 + rng.randint(0, 10**6)}}}'.encode())
        return "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9." + payload + "." + rand_str(rng, URLSAFE, 43)
    if kind == "private_key":
        body = "\n".join(b64_blob(rng, 70) for _ in range(rng.randint(6, 25)))
        return f"-----BEGIN OPENSSH PRIVATE KEY-----\n{body}\n-----END OPENSSH PRIVATE KEY-----"
    if kind == "bearer_token":
        return "Bearer " + rand_str(rng, ALNUM, 40)
    if kind == "database_url":
        return f"postgres://{rng.choice(['app', 'admin', 'billing'])}:{rand_str(rng, ALNUM, 16)}@db-{rng.randint(1, 9)}.internal.example.com:5432/{rng.choice(['prod', 'app', 'billing'])}"
    if kind == "password_assignment":
        return "PASSWORD=" + rand_str(rng, B64, 32)
    raise ValueError(kind)


# Where a kind can be planted without changing its bytes (PEM keys hold newlines, so they
# only go where text is stored verbatim, never inside a shell command or a JSON string
# argument).
COMMAND_KINDS = tuple(k for k in SECRET_KINDS if k != "private_key")


def secret_command(rng: random.Random, kind: str, value: str) -> str:
    """A shell command that carries ``value``."""
    templates = {
        "aws_access_key": "AWS_ACCESS_KEY_ID={v} aws s3 ls s3://backups-{n}/",
        "github_token": "git remote set-url origin https://{v}@github.com/acme/app-{n}.git && git push",
        "anthropic_key": "ANTHROPIC_API_KEY={v} python scripts/eval.py --limit {n}",
        "openai_key": "export OPENAI_API_KEY={v} && python -m app.summarize --batch {n}",
        "slack_token": "curl -s -X POST -d 'channel=C0{n}' -d 'token={v}' https://slack.com/api/chat.postMessage",
        "gitlab_token": "curl -s --header 'PRIVATE-TOKEN: {v}' https://gitlab.example.com/api/v4/projects/{n}",
        "google_api_key": "curl -s 'https://maps.googleapis.com/maps/api/geocode/json?address=Berlin&key={v}' | head -c {n}",
        "stripe_key": "curl -s https://api.stripe.com/v1/charges?limit={n} -u {v}:",
        "huggingface_token": "HF_TOKEN={v} huggingface-cli download acme/model-{n}",
        "jwt": "curl -s -H 'Cookie: session={v}' http://localhost:3000/api/me?n={n}",
        "bearer_token": "curl -s -H 'Authorization: {v}' https://api.example.com/v1/items?page={n}",
        "database_url": "psql {v} -c 'select count(*) from invoices' # {n}",
        "password_assignment": "DB_{v} ./scripts/run-migrations.sh --step {n}",
    }
    return templates[kind].format(v=value, n=rng.randint(1, 999))


def secret_prompt(rng: random.Random, kind: str, value: str) -> str:
    templates = [
        "I'm getting a 401 with this key: {v} — can you check how the client sends it?",
        "Use this for the staging config: {v}\nand then rerun the integration tests",
        "here's the credential from the vault, wire it into the deploy script:\n{v}",
    ]
    return rng.choice(templates).format(v=value)


def env_file(rng: random.Random, kinds: list[str], values: list[str]) -> str:
    names = {
        "aws_access_key": "AWS_ACCESS_KEY_ID=", "github_token": "GITHUB_TOKEN=",
        "anthropic_key": "ANTHROPIC_API_KEY=", "openai_key": "OPENAI_API_KEY=",
        "slack_token": "SLACK_BOT_TOKEN=", "gitlab_token": "GITLAB_TOKEN=",
        "google_api_key": "GOOGLE_API_KEY=", "stripe_key": "STRIPE_SECRET_KEY=",
        "huggingface_token": "HF_TOKEN=", "jwt": "SESSION_TOKEN=", "bearer_token": "AUTH_HEADER=\"",
        "database_url": "DATABASE_URL=", "password_assignment": "DB_",
    }
    lines = ["# local development settings", "APP_ENV=development", f"PORT={rng.randint(3000, 9000)}"]
    for kind, value in zip(kinds, values, strict=True):
        suffix = '"' if kind == "bearer_token" else ""
        lines.append(names[kind] + value + suffix)
    lines.append("LOG_LEVEL=debug")
    return "\n".join(lines)


class SlotCorpus(ABC):
    """Session slots in order; slot ``i`` depends only on (seed, i, previous slot).

    Both formats share this: the per-slot rng, the project pool and the forced duplicate
    slots (2, 22, 42... continue and 5, 25, 45... copy their predecessor), so even a
    small corpus holds both kinds of duplicate.
    """

    fmt = ""
    continuation = ""  # what a forced slot 2, 22, 42... does: "resume" (Claude) or "fork" (Codex)
    prev: Any = None

    def __init__(self, seed: int, malformed_rate: float, oversized_lines: int) -> None:
        self.seed = seed
        self.malformed_rate = malformed_rate
        self.oversized_left = oversized_lines
        self.malformed_turn = 0
        pool_rng = random.Random(f"{self.fmt}:{seed}:projects")
        self.projects = [(pool_rng.choice(USERS), name, lang)
                         for name, lang in pool_rng.sample(PROJECTS, len(PROJECTS))]
        self.continuations: list[dict[str, Any]] = []
        self.copies: list[dict[str, Any]] = []

    def slot_rng(self, i: int) -> tuple[random.Random, float]:
        rng = random.Random(f"{self.fmt}:{self.seed}:{i}")
        return rng, rng.random()

    @staticmethod
    def duplicate_wish(i: int, roll: float, continuation: str) -> str:
        if i % 20 == 2 or roll < 0.03:
            return continuation
        return "copy" if i % 20 == 5 or roll < 0.06 else ""

    def slot(self, i: int) -> Any:
        rng, roll = self.slot_rng(i)
        prev = self.prev
        want = self.duplicate_wish(i, roll, self.continuation)
        if prev is not None and prev.kind == "normal" and want == self.continuation and self._can_continue(prev):
            out = self._continue(rng, prev)
        elif prev is not None and prev.kind == "normal" and want == "copy":
            out = self._copy(rng, prev)
        else:
            out = self._normal(rng)
            self._plant_malformed(rng, out)
        self.prev = out
        return out

    @abstractmethod
    def _can_continue(self, prev: Any) -> bool:
        """Supplied by each format."""

    @abstractmethod
    def _continue(self, rng: random.Random, prev: Any) -> Any:
        """Supplied by each format."""

    @abstractmethod
    def _copy(self, rng: random.Random, prev: Any) -> Any:
        """Supplied by each format."""

    @abstractmethod
    def _normal(self, rng: random.Random) -> Any:
        """Supplied by each format."""

    @abstractmethod
    def _plant_malformed(self, rng: random.Random, out: Any) -> None:
        """Supplied by each format."""
