"""Deterministic synthetic Claude Code and Codex corpora with exact ground truth.

``synthesize(out, sessions, seed)`` writes a corpus laid out like ``~/.claude/projects``
(or ``~/.codex/sessions``) plus ``synth-manifest.json``. The bytes are a pure function of
(sessions, seed, format, options): no wall clock, one seeded ``random.Random`` per
session slot (``"<format>:<seed>:<i>"``), so a larger corpus starts with the smaller one.

Counting convention for every count below: **per-file totals over every JSONL file
written** (top-level sessions, subagent files, resumed/forked and copied sessions alike),
i.e. what parsing each file on its own yields, before any cross-file dedupe. The
``continuations`` and ``copies`` lists say which files repeat which, for dedupe tests.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import xxhash
from pydantic import BaseModel, Field

from pipeline.synth.claude_code import ClaudeCorpus
from pipeline.synth.codex import CodexCorpus
from pipeline.synth.content import FileOut, SideFile

FORMATS = ("claude-code", "codex")
MANIFEST_NAME = "synth-manifest.json"
MB = 1_000_000


class Continuation(BaseModel):
    """A file that starts with a verbatim copy of another file's lines."""

    file: str = Field(description="Path of the new file, relative to the corpus root.")
    original_file: str
    session_id: str = Field(description="Session id of the new lines (Claude) / session_meta id (Codex).")
    original_session_id: str
    copied_lines: int = Field(
        description="Claude resume: the first N lines are byte-identical copies (old sessionId, same "
        "uuids). Codex fork: lines 2..N+1 copy the parent's lines after its session_meta."
    )


class SessionCopy(BaseModel):
    """A whole session (and its subagent files) rewritten under a new session id."""

    file: str
    original_file: str
    session_id: str
    original_session_id: str


class SynthManifest(BaseModel):
    """Ground truth for one synthetic corpus. See the module docstring for the counting convention."""

    format: str
    seed: int
    sessions_requested: int | None
    target_mb: float | None
    malformed_rate: float
    oversized_lines_requested: int

    session_files: int = Field(description="Top-level session files (one per slot, copies included).")
    subagent_files: int = Field(description="Claude subagents/agent-<id>.jsonl files (lines isSidechain, agentId, parent sessionId).")
    subagent_meta_files: int = Field(description="Claude agent-<id>.meta.json files; their toolUseId names the spawning Task call.")
    jsonl_files: int = Field(description="session_files + subagent_files.")
    lines: int = Field(description="Lines over all JSONL files, malformed ones included; a last line without a newline counts.")
    bytes: int = Field(description="Bytes over all JSONL files.")
    files_without_trailing_newline: int
    exact_duplicate_lines: int = Field(description="lines minus the number of distinct line byte-strings (newline excluded), corpus-wide.")

    records_by_type: dict[str, int] = Field(
        description="Well-formed lines by kind. Claude: top-level `type`. Codex: `type`, or "
        "`type/payload.type` for response_item and event_msg. Malformed, oversized and NUL lines "
        "are not included."
    )
    system_subtypes: dict[str, int] = Field(description="Claude `system` records by subtype (compact_boundary, api_error).")
    turns: int = Field(description="Human turns started (Claude: prompt turns incl. both sides of an edit; Codex: task_started).")

    prompts: int = Field(
        description="Human prompts, each occurrence separately (repeated 'ok'/'continue' stay separate). "
        "Claude: non-sidechain `user` records whose content is human text: not isMeta, not "
        "isCompactSummary, not tool_result, not an interrupt marker, not a <command-name>/"
        "<local-command-stdout> wrapper. A trailing <system-reminder> block is part of such a "
        "prompt. Both prompts of an edit branch count. Codex: event_msg/user_message."
    )
    short_prompts: int = Field(description="Prompts like 'ok', 'yes', 'continue'.")
    correction_prompts: int = Field(description="Prompts like 'no, that's wrong', 'undo that', 'revert'.")
    prompts_with_system_reminder: int = Field(description="Claude prompts whose content list ends with a <system-reminder> text block.")
    subagent_prompts: int = Field(description="Spawn prompts: the first user record of each subagent file (not human prompts).")
    noise_user_records: int = Field(description="Claude user records that are injected, never prompts: isMeta caveats, <command-name>, <local-command-stdout>.")
    compact_summaries: int = Field(description="Claude user records with isCompactSummary true.")
    interrupts: int = Field(description="Claude '[Request interrupted by user]' / '...for tool use]' user records; Codex event_msg/turn_aborted.")

    thinking_blocks: int = Field(description="Claude thinking blocks; Codex response_item/reasoning items.")
    empty_thinking_blocks: int = Field(description="Of those, thinking == '' (Claude) or summary == [] (Codex).")
    text_blocks: int = Field(description="Claude assistant text blocks; Codex assistant response_item messages.")

    tool_calls: int = Field(description="Claude tool_use blocks; Codex function_call + custom_tool_call items.")
    tool_calls_by_name: dict[str, int]
    tool_results: int = Field(description="Claude tool_result blocks; Codex function_call_output + custom_tool_call_output.")
    tool_errors: int = Field(
        description="Claude: tool_result with is_error true (structural). Codex (no is_error on disk): "
        "outputs with 'Process exited with code N', N != 0; apply_patch outputs with "
        "metadata.exit_code != 0; outputs starting 'failed to parse function arguments'."
    )
    tool_errors_by_kind: dict[str, int] = Field(
        description="command_not_found, file_not_found, permission_denied, syntax_error, "
        "connection_error, test_failure, input_validation, rejected (user declined), patch_failed."
    )
    unpaired_tool_calls: int = Field(description="Calls left without a result (interrupted).")
    parallel_tool_messages: int = Field(description="Assistant messages (Claude message.id) / Codex call batches with 2+ calls.")
    loops: int = Field(description="Runs of 3-5 identical consecutive calls (same name and input).")
    empty_argument_calls: int = Field(description="Calls with input {} (Codex arguments '{}'); each gets an error result.")
    repeated_line_arguments: int = Field(description="Write / apply_patch calls whose content repeats one line 40-200 times.")
    error_recoveries: int = Field(description="Assistant messages / call batches directly after an error that take another route.")
    subagent_spawns: int = Field(description="Claude Task calls whose result's toolUseResult.agentId names a subagent file.")
    test_runs: dict[str, int] = Field(description="Test-runner Bash/exec calls by '<framework>:<pass|fail>'; failing ones are tool errors.")

    secrets_by_kind: dict[str, int] = Field(
        description="Planted secret values by kind, counted as distinct values per file, summed over "
        "files. Each planting uses a fresh value; a value may repeat inside one file (tool "
        "output in content and toolUseResult, queued prompt and last-prompt, Codex event_msg "
        "mirrors) but counts once there. Planted in Bash commands, tool outputs and prompts."
    )
    malformed_lines: dict[str, int] = Field(
        description="Lines a parser must quarantine, by reason: malformed_json (torn line), "
        "not_an_object (JSON array or string), invalid_utf8, oversized_line (> 5 MiB, valid JSON), "
        "missing_session_id (Claude system record without sessionId; file-history-snapshot "
        "lines never carry one and are not malformed), unknown_entry_type (Claude "
        "'worktree-state', Codex 'inter_agent_note'; no uuid). Their content is in no other count."
    )
    nul_byte_lines: int = Field(
        description="Lines with raw NUL bytes inside a string: valid JSON once NULs are removed "
        "(Claude file-history-snapshot, Codex event_msg/background_event). Counted nowhere else."
    )
    branches: dict[str, int] = Field(
        description="Claude: edit = a second user prompt under the same parent; retry = a parent "
        "with system/api_error children and the assistant answer. Parallel tool calls (a "
        "tool_use record with a tool_result child and the next tool_use child) are not "
        "branches. Codex: rollback = event_msg/thread_rolled_back."
    )
    api_errors: int = Field(description="Claude system/api_error records; Codex event_msg/stream_error.")
    compactions: int = Field(description="Claude system/compact_boundary (parentUuid null, logicalParentUuid set); Codex `compacted` lines.")

    continuations: list[Continuation]
    copies: list[SessionCopy]


def _tally(tags: Counter[str], prefix: str) -> dict[str, int]:
    n = len(prefix)
    return {k[n:]: v for k, v in sorted(tags.items()) if k.startswith(prefix)}


class _Sink:
    """Writes files and keeps the corpus-wide line statistics."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.dirs: set[Path] = set()
        self.tags: Counter[str] = Counter()
        self.seen: set[int] = set()
        self.lines = 0
        self.bytes = 0
        self.dups = 0
        self.no_newline = 0
        self.jsonl = 0
        self.side = 0

    def _path(self, rel: str) -> Path:
        path = self.root / rel
        if path.parent not in self.dirs:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.dirs.add(path.parent)
        return path

    def write(self, f: FileOut) -> None:
        data = b"\n".join(f.lines)
        if f.trailing_newline:
            data += b"\n"
        else:
            self.no_newline += 1
        self._path(f.relpath).write_bytes(data)
        self.jsonl += 1
        self.lines += len(f.lines)
        self.bytes += len(data)
        seen, digest = self.seen, xxhash.xxh3_128_intdigest
        for line in f.lines:
            h = digest(line)
            if h in seen:
                self.dups += 1
            else:
                seen.add(h)
        update = self.tags.update
        for tags in f.tags:
            update(tags)

    def write_side(self, f: SideFile) -> None:
        self._path(f.relpath).write_bytes(f.data)
        self.side += 1


def synthesize(out: Path, sessions: int | None, seed: int, fmt: str = "claude-code", *,
               target_mb: float | None = None, malformed_rate: float = 0.05,
               oversized_lines: int = 0) -> SynthManifest:
    """Write a corpus of ``sessions`` session slots (or until ``target_mb`` MB) into ``out``.

    ``malformed_rate`` is the chance that a normal session file gets one malformed line;
    reasons rotate so that every reason appears once enough files have one.
    ``oversized_lines`` plants that many > 5 MiB lines (one per file, first files first).
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    if sessions is None and target_mb is None:
        raise ValueError("give sessions, target_mb or both")
    if not 0.0 <= malformed_rate <= 1.0:
        raise ValueError("malformed_rate must be within [0, 1]")
    out.mkdir(parents=True, exist_ok=True)
    sink = _Sink(out)
    corpus: ClaudeCorpus | CodexCorpus
    corpus = ClaudeCorpus(seed, malformed_rate, oversized_lines) if fmt == "claude-code" else CodexCorpus(seed, malformed_rate, oversized_lines)
    n_sessions = n_sub = 0
    i = 0
    while True:
        if sessions is not None and i >= sessions:
            break
        if target_mb is not None and sink.bytes >= target_mb * MB:
            break
        slot: Any = corpus.slot(i)
        sink.write(slot.main)
        n_sessions += 1
        for sub in getattr(slot, "subagents", []):
            sink.write(sub)
            n_sub += 1
        for side in getattr(slot, "side", []):
            sink.write_side(side)
        i += 1
    manifest = _manifest(sink, fmt, seed, sessions, target_mb, malformed_rate, oversized_lines,
                         n_sessions, n_sub, corpus)
    (out / MANIFEST_NAME).write_bytes(orjson.dumps(manifest.model_dump(), option=orjson.OPT_INDENT_2) + b"\n")
    return manifest


def _manifest(sink: _Sink, fmt: str, seed: int, sessions: int | None, target_mb: float | None,
              malformed_rate: float, oversized: int, n_sessions: int, n_sub: int,
              corpus: ClaudeCorpus | CodexCorpus) -> SynthManifest:
    t = sink.tags
    return SynthManifest(
        format=fmt, seed=seed, sessions_requested=sessions, target_mb=target_mb,
        malformed_rate=malformed_rate, oversized_lines_requested=oversized,
        session_files=n_sessions, subagent_files=n_sub, subagent_meta_files=sink.side,
        jsonl_files=sink.jsonl, lines=sink.lines, bytes=sink.bytes,
        files_without_trailing_newline=sink.no_newline, exact_duplicate_lines=sink.dups,
        records_by_type=_tally(t, "rec:"), system_subtypes=_tally(t, "sys:"), turns=t["turn"],
        prompts=t["prompt"], short_prompts=t["prompt:short"], correction_prompts=t["prompt:correction"],
        prompts_with_system_reminder=t["prompt:system_reminder"], subagent_prompts=t["subagent_prompt"],
        noise_user_records=t["noise"], compact_summaries=t["compact_summary"], interrupts=t["interrupt"],
        thinking_blocks=t["thinking"], empty_thinking_blocks=t["thinking:empty"], text_blocks=t["text"],
        tool_calls=t["tool_call"], tool_calls_by_name=_tally(t, "tool:"), tool_results=t["tool_result"],
        tool_errors=t["tool_error"], tool_errors_by_kind=_tally(t, "error:"),
        unpaired_tool_calls=t["unpaired"], parallel_tool_messages=t["parallel"], loops=t["loop"],
        empty_argument_calls=t["empty_args"], repeated_line_arguments=t["repeated_line_args"],
        error_recoveries=t["recovery"], subagent_spawns=t["spawns_subagent"], test_runs=_tally(t, "test:"),
        secrets_by_kind=_tally(t, "secret:"), malformed_lines=_tally(t, "malformed:"),
        nul_byte_lines=t["nul_byte"], branches=_tally(t, "branch:"), api_errors=t["api_error"],
        compactions=t["compaction"],
        continuations=[Continuation(**c) for c in corpus.continuations],
        copies=[SessionCopy(**c) for c in corpus.copies],
    )


def load_manifest(root: Path) -> SynthManifest:
    return SynthManifest.model_validate_json((root / MANIFEST_NAME).read_bytes())


__all__ = ["FORMATS", "MANIFEST_NAME", "Continuation", "SessionCopy", "SynthManifest", "load_manifest", "synthesize"]
