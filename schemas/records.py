"""Rows of the lake's tables. Field descriptions are the data dictionary."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from schemas.tables import TableSpec


class _Row(BaseModel):
    model_config = ConfigDict(extra="forbid")


class QuarantineRow(_Row):
    """A record set aside with one reason; every stage has its own quarantine table."""

    stage: str
    source_file: str | None
    line_no: int | None = Field(description="1-based line in source_file, when one applies.")
    record_id: str | None
    session_id: str | None
    reason: str
    detail: str | None


class SessionRow(_Row):
    session_id: str
    source_kind: str = Field(description="claude-code or codex")
    source_file: str
    agent_version: str | None
    cwd: str | None
    git_branch: str | None
    model: str | None
    title: str | None
    started_at: str | None
    ended_at: str | None
    is_subagent: bool
    parent_session_id: str | None
    agent_id: str | None
    n_messages: int
    n_tool_calls: int
    n_prompts: int


class MessageRow(_Row):
    session_id: str
    message_id: str = Field(description="Claude: message.id for assistants, uuid otherwise.")
    parent_id: str | None
    seq: int = Field(description="Position of the message within its session (0-based).")
    role: str = Field(description="user, assistant, system, tool")
    text: str | None
    thinking: str | None
    content_json: str = Field(description="Canonical JSON of the merged content blocks.")
    timestamp: str | None
    is_sidechain: bool
    is_meta: bool
    is_compact_summary: bool
    model: str | None
    prompt_id: str | None = Field(description="The human prompt this message answers (line order).")
    source_file: str
    line_no: int = Field(description="1-based line of the message's first record.")


class ToolCallRow(_Row):
    session_id: str
    tool_use_id: str
    message_id: str
    turn_index: int = Field(description="Index of the calling assistant message in the session.")
    turn_subindex: int = Field(description="Index of the call within that message.")
    name: str
    input_json: str = Field(description="Canonical JSON of the input, cut above 16 KiB.")
    input_truncated_bytes: int
    has_result: bool
    is_error: bool | None = Field(description="Structural is_error flag; null without a result.")
    result_text: str | None
    result_truncated_bytes: int
    error_kind: str | None
    exit_code: int | None
    prompt_id: str | None
    is_sidechain: bool
    timestamp: str | None
    source_file: str
    line_no: int = Field(description="1-based line of the tool_use record.")


class PromptRow(_Row):
    session_id: str
    prompt_id: str = Field(description="H(session_id, prompt_number): positional identity.")
    prompt_number: int
    text: str
    timestamp: str | None
    message_id: str
    source_file: str
    line_no: int


class BranchRow(_Row):
    session_id: str
    parent_message_id: str
    child_message_id: str
    kind: str = Field(description="edit, retry or compaction")
    child_rank: int = Field(description="Order of the child among its siblings (file order).")
    is_active: bool = Field(description="True for the latest child in file order.")


class SubagentRow(_Row):
    session_id: str = Field(description="The subagent's own session id.")
    parent_session_id: str
    agent_id: str | None
    spawn_tool_use_id: str | None
    link_method: str = Field(description="tool_result_agent_id, meta_json, prompt_match, none")
    source_file: str



COLLECT_TABLES: dict[str, TableSpec] = {
    "sessions": TableSpec("sessions", SessionRow, ("session_id", "source_file")),
    "messages": TableSpec("messages", MessageRow, ("session_id", "seq", "message_id")),
    "tool_calls": TableSpec(
        "tool_calls", ToolCallRow, ("session_id", "turn_index", "turn_subindex", "tool_use_id")
    ),
    "prompts": TableSpec("prompts", PromptRow, ("session_id", "prompt_number")),
    "branches": TableSpec(
        "branches", BranchRow, ("session_id", "parent_message_id", "child_rank")
    ),
    "subagents": TableSpec("subagents", SubagentRow, ("parent_session_id", "session_id")),
}

QUARANTINE = TableSpec(
    "quarantine",
    QuarantineRow,
    ("stage", "reason", "source_file", "line_no", "record_id", "detail"),
)
