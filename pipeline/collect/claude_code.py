"""Claude Code transcript reader: one ``<session>.jsonl`` (or subagent file) -> shard rows.

Claude Code 2.x writes one record per content block, chained by ``parentUuid`` and
sharing ``message.id``; tool results can sit between the records of one message. So
assistant records are merged by message id in line order, and tool calls are paired
with their results only once the whole file has been read.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.collect.content import (
    cut_text,
    dumps,
    joined_json,
    result_text,
    str_field,
    strip_blobs,
    text_digest,
)
from pipeline.collect.errors import claude_exit_code, error_kind
from pipeline.collect.lines import NestingTooDeep
from pipeline.collect.redact import reveals_secret
from pipeline.collect.shard import Shard

# Known entries that carry no conversation content: tallied, not mapped.
COUNTED_TYPES = frozenset(
    {
        "queue-operation", "file-history-snapshot", "last-prompt", "ai-title", "custom-title",
        "agent-name", "summary", "progress", "attachment", "permission-mode", "mode", "pr-link",
        "tag", "agent-setting", "content-replacement", "marble-origami-commit",
        "marble-origami-snapshot",
    }
)
MAPPED_SYSTEM_SUBTYPES = frozenset({"api_error"})
PROMPT_WRAPPERS = (
    "<command-name>", "<command-message>", "<command-args>", "<local-command-", "<bash-input>",
    "<bash-stdout>", "<bash-stderr>", "<task-notification>", "<user-memory-input>",
    "<ide_opened_file>", "<ide_selection>", "<teammate-message>", "Caveat: The messages below",
)
INTERRUPT_PREFIX = "[Request interrupted by user"
SYSTEM_REMINDER = re.compile(r"<system-reminder>.*?(?:</system-reminder>|$)", re.S)
SPAWN_TOOLS = frozenset({"Task", "Agent"})

# Child categories for branch detection.
_USER_TEXT, _TOOL_RESULT, _ASSISTANT, _API_ERROR, _STRUCTURE = "u", "r", "a", "e", "s"


@dataclass(slots=True)
class _Message:
    session_id: str
    message_id: str
    parent_uuid: str | None
    role: str
    timestamp: str | None
    line_no: int
    is_sidechain: bool
    is_meta: bool = False
    is_compact_summary: bool = False
    model: str | None = None
    prompt_line: int | None = None
    blocks: list[Any] = field(default_factory=list)
    # The canonical JSON of ``blocks`` (the redaction screen serialises them anyway): one
    # JSON list per record, joined at the end; None once any record's is unknown.
    json_parts: list[bytes] | None = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    thinkings: list[str] = field(default_factory=list)
    n_calls: int = 0


@dataclass(slots=True)
class _Call:
    message: _Message
    tool_use_id: str
    subindex: int
    name: str
    input_json: str
    input_cut: int
    line_no: int
    timestamp: str | None
    prompt_line: int | None
    spawn_digest: str | None


@dataclass(slots=True)
class _Result:
    is_error: bool
    text: str | None
    line_no: int
    session_id: str
    agent_id: str | None
    exit_code: int | None
    bash_exit_code: int | None  # the exit code, should a call in another file be a Bash call


@dataclass(slots=True)
class _Session:
    root_session_id: str | None
    agent_id: str | None
    is_sidechain_file: bool
    cwd: str | None = None
    git_branch: str | None = None
    version: str | None = None
    model: str | None = None
    first_ts: str | None = None
    last_ts: str | None = None
    spawn_digest: str | None = None


class ClaudeFile:
    def __init__(self, shard: Shard, path: Path, meta: dict[str, Any] | None) -> None:
        self.shard = shard
        self.redactor = shard.redactor
        self.settings = shard.settings
        self.meta = meta or {}
        stem = path.name[: -len(".jsonl")] if path.name.endswith(".jsonl") else path.stem
        self.agent_file_id = stem[len("agent-") :] if stem.startswith("agent-") else None
        self.is_agent_file = self.agent_file_id is not None or "subagents" in path.parts
        self.sessions: dict[str, _Session] = {}
        self.messages: dict[tuple[str, str], _Message] = {}
        self.message_order: list[_Message] = []
        self.calls: dict[str, _Call] = {}
        self.revealing: set[str] = set()  # calls whose output is a secret (redact.reveals_secret)
        self.results: dict[str, _Result] = {}
        # Later results for a tool_use_id that has one: (id, line, session, the first's
        # line), sorted out at the end (a duplicate of a paired result, or one more
        # unpaired result).
        self.extra_results: list[tuple[str, int, str, int]] = []
        self.parent_of: dict[str, str | None] = {}
        self.uuid_message: dict[str, str] = {}
        self.children: dict[str, list[tuple[str, str, str]]] = defaultdict(list)
        self.current_prompt: dict[str, int] = {}
        self.titles: dict[str | None, str] = {}

    # -- per line ---------------------------------------------------------------------

    def feed(self, line_no: int, obj: dict[str, Any]) -> tuple[str | None, str | None]:
        """Map or count one record; returns (line outcome, session id) or (None, None)."""
        raw_kind = obj.get("type")
        kind = raw_kind if isinstance(raw_kind, str) else None
        uuid = obj.get("uuid")
        if not isinstance(uuid, str):
            uuid = None
        parent = obj.get("parentUuid")
        if not isinstance(parent, str):
            parent = None
        if kind == "assistant" or kind == "user" or (kind == "system" and str_field(obj, "subtype") in MAPPED_SYSTEM_SUBTYPES):
            session_id = self._session(obj)
            if session_id is None:
                self.shard.quarantine(line_no, "missing_session_id", f"{kind} record without sessionId",
                                      record_id=uuid)
                return None, None
            message = obj.get("message")
            if kind != "system" and not isinstance(message, dict):
                self.shard.quarantine(line_no, "invalid_record", f"{kind} record without a message object",
                                      record_id=uuid, session_id=session_id)
                return None, None
            if uuid is not None:
                self.parent_of[uuid] = parent
            if kind == "assistant":
                self._assistant(line_no, obj, message, session_id, uuid, parent)  # type: ignore[arg-type]
            elif kind == "user":
                self._user(line_no, obj, message, session_id, uuid, parent)  # type: ignore[arg-type]
            else:
                self._api_error(line_no, obj, session_id, uuid, parent)
            return "mapped", session_id
        if uuid is not None:  # structure and unknown records stay in the DAG as pass-through
            self.parent_of[uuid] = parent
            if parent is not None:
                self.children[parent].append((uuid, _STRUCTURE, uuid))
        if kind == "system":
            session_id = self._session(obj, register=False)
            if session_id is None:
                self.shard.quarantine(line_no, "missing_session_id", "system record without sessionId",
                                      record_id=uuid)
                return None, None
            subtype = obj.get("subtype")
            label = subtype[:40] if isinstance(subtype, str) else "none"
            return f"counted:system:{label}", session_id
        if kind in COUNTED_TYPES:
            self._title(obj, kind)
            return f"counted:{kind}", self._session(obj, register=False)
        shown = kind[:40] if kind is not None else repr(raw_kind)[:40]
        self.shard.quarantine(line_no, "unknown_entry_type", f"type={shown}", record_id=uuid)
        return None, None

    def _session(self, obj: dict[str, Any], register: bool = True) -> str | None:
        """This record's session id (subagent files get ``<parent>/agent-<id>``)."""
        raw = obj.get("sessionId")
        if not isinstance(raw, str) or not raw:
            return None
        agent_id = None
        session_id = raw
        if self.is_agent_file:
            found = obj.get("agentId")
            agent_id = found if isinstance(found, str) and found else self.agent_file_id
            session_id = f"{raw}/agent-{agent_id}"
        if not register:
            return session_id
        info = self.sessions.get(session_id)
        if info is None:
            info = _Session(raw if self.is_agent_file else None, agent_id, self.is_agent_file)
            self.sessions[session_id] = info
        ts = obj.get("timestamp")
        if isinstance(ts, str):
            if info.first_ts is None or ts < info.first_ts:
                info.first_ts = ts
            if info.last_ts is None or ts > info.last_ts:
                info.last_ts = ts
        if info.cwd is None and isinstance(obj.get("cwd"), str):
            info.cwd = obj["cwd"]
        if info.git_branch is None and isinstance(obj.get("gitBranch"), str):
            info.git_branch = obj["gitBranch"]
        if info.version is None and isinstance(obj.get("version"), str):
            info.version = obj["version"]
        return session_id

    def _title(self, obj: dict[str, Any], kind: str) -> None:
        value = obj.get({"ai-title": "aiTitle", "custom-title": "customTitle", "summary": "summary"}.get(kind, ""))
        if isinstance(value, str) and value:
            sid = obj.get("sessionId") if isinstance(obj.get("sessionId"), str) else None
            if kind == "ai-title" and self.titles.get(sid, "").startswith("\x00custom:"):
                return  # a user-given title beats the generated one
            self.titles[sid] = ("\x00custom:" if kind == "custom-title" else "") + value

    def _new_message(self, line_no: int, obj: dict[str, Any], session_id: str, message_id: str,
                     parent: str | None, role: str) -> _Message:
        ts = obj.get("timestamp")
        message = _Message(
            session_id, message_id, parent, role, ts if isinstance(ts, str) else None, line_no,
            bool(obj.get("isSidechain")), prompt_line=self.current_prompt.get(session_id),
        )
        self.messages[(session_id, message_id)] = message
        self.message_order.append(message)
        return message

    def _blocks(self, content: Any) -> tuple[list[Any], bytes | None]:
        """Redacted content blocks and their canonical JSON when the redactor has it."""
        if isinstance(content, str):
            blocks: list[Any] = [{"type": "text", "text": content}]
        elif isinstance(content, list):
            blocks = strip_blobs(content)
        else:
            blocks = []
        redacted, data = self.redactor.redact_json(blocks)
        return redacted, data

    def _assistant(self, line_no: int, obj: dict[str, Any], message: dict[str, Any], session_id: str,
                   uuid: str | None, parent: str | None) -> None:
        raw_id = message.get("id")
        message_id = raw_id if isinstance(raw_id, str) and raw_id else (uuid or f"L{line_no}")
        merged = self.messages.get((session_id, message_id))
        if merged is None:
            merged = self._new_message(line_no, obj, session_id, message_id, parent, "assistant")
            if parent is not None and uuid is not None:
                self.children[parent].append((uuid, _ASSISTANT, message_id))
        if uuid is not None:
            self.uuid_message[uuid] = message_id
        model = message.get("model")
        if isinstance(model, str) and merged.model is None:
            merged.model = model
            info = self.sessions[session_id]
            if info.model is None and model != "<synthetic>":
                info.model = model
        blocks, data = self._blocks(message.get("content"))
        merged.blocks.extend(blocks)
        parts = merged.json_parts
        if parts is not None:
            if data is None:
                merged.json_parts = None
            else:
                parts.append(data)
        ts = obj.get("timestamp")
        for block in blocks:
            if not isinstance(block, dict):
                continue
            kind = block.get("type")
            if kind == "text":
                merged.texts.append(str(block.get("text") or ""))
            elif kind == "thinking":
                merged.thinkings.append(str(block.get("thinking") or ""))
            elif kind == "tool_use":
                self._call(merged, block, line_no, ts if isinstance(ts, str) else None)

    def _call(self, message: _Message, block: dict[str, Any], line_no: int, ts: str | None) -> None:
        raw_id = block.get("id")
        tool_use_id = raw_id if isinstance(raw_id, str) and raw_id else f"L{line_no}:{message.n_calls}"
        if tool_use_id in self.calls:
            self.shard.quarantine(line_no, "duplicate_tool_use_id", "tool_use id reused; first call kept",
                                  record_id=tool_use_id, session_id=message.session_id)
            return
        name = str(block.get("name") or "")
        tool_input = block.get("input")
        input_json, cut = cut_text(dumps(tool_input if tool_input is not None else {}),
                                   self.settings.max_input_bytes)
        spawn = None
        if name in SPAWN_TOOLS and isinstance(tool_input, dict) and isinstance(tool_input.get("prompt"), str):
            spawn = text_digest(tool_input["prompt"])
        if reveals_secret(input_json):
            self.revealing.add(tool_use_id)
        self.calls[tool_use_id] = _Call(
            message=message, tool_use_id=tool_use_id, subindex=message.n_calls, name=name,
            input_json=input_json, input_cut=cut, line_no=line_no, timestamp=ts,
            prompt_line=self.current_prompt.get(message.session_id), spawn_digest=spawn,
        )
        message.n_calls += 1

    def _unseen_or_revealing(self, block: Any) -> bool:
        """A tool_result block whose call printed a secret, or is not in this file (its id
        may be anything a log holds, a list included: then no call of ours)."""
        if not isinstance(block, dict) or block.get("type") != "tool_result":
            return False
        tool_use_id = block.get("tool_use_id")
        return not isinstance(tool_use_id, str) or tool_use_id in self.revealing or tool_use_id not in self.calls

    def _user(self, line_no: int, obj: dict[str, Any], message: dict[str, Any], session_id: str,
              uuid: str | None, parent: str | None) -> None:
        blocks, data = self._blocks(message.get("content"))
        # A result whose call is not in this file may answer a call that printed a secret
        # (`kubectl get secret ...`) in another file of the session: unseen here, so
        # every value in it goes, as for a call seen to reveal one (fail closed).
        if any(self._unseen_or_revealing(b) for b in blocks):
            blocks = [self.redactor.redact_revealed(b) if self._unseen_or_revealing(b) else b for b in blocks]
            data = None
        texts: list[str] = []
        has_result = False
        for block in blocks:
            if not isinstance(block, dict):
                continue
            kind = block.get("type")
            if kind == "text":
                texts.append(str(block.get("text") or ""))
            elif kind == "tool_result":
                has_result = True
                self._result(line_no, obj, block, session_id)
        role = "tool" if has_result and not texts else "user"
        message_id = uuid or f"L{line_no}"
        row = self._new_message(line_no, obj, session_id, message_id, parent, role)
        row.blocks = blocks
        row.json_parts = None if data is None else [data]
        row.texts = texts
        row.is_meta = bool(obj.get("isMeta"))
        row.is_compact_summary = bool(obj.get("isCompactSummary"))
        if uuid is not None:
            self.uuid_message[uuid] = message_id
        info = self.sessions[session_id]
        if info.is_sidechain_file and info.spawn_digest is None and texts and not has_result:
            info.spawn_digest = text_digest("\n".join(texts))
        category = _TOOL_RESULT if has_result else (_USER_TEXT if texts and not row.is_meta else _STRUCTURE)
        if parent is not None and uuid is not None:
            self.children[parent].append((uuid, category, message_id))
        if role != "user" or row.is_meta or row.is_compact_summary or row.is_sidechain:
            return
        text = SYSTEM_REMINDER.sub("", "\n".join(texts)).strip()
        if not text or text.startswith(PROMPT_WRAPPERS) or text.startswith(INTERRUPT_PREFIX):
            return
        self.shard.add("prompts", session_id=session_id, text=text, timestamp=row.timestamp,
                       message_id=message_id, line_no=line_no)
        self.current_prompt[session_id] = line_no
        row.prompt_line = line_no

    def _result(self, line_no: int, obj: dict[str, Any], block: dict[str, Any], session_id: str) -> None:
        tool_use_id = block.get("tool_use_id")
        if not isinstance(tool_use_id, str) or not tool_use_id:
            self.shard.quarantine(line_no, "tool_result_without_id", None, session_id=session_id)
            return
        if tool_use_id in self.results:
            self.extra_results.append((tool_use_id, line_no, session_id, self.results[tool_use_id].line_no))
            return
        structured = obj.get("toolUseResult")
        agent_id = None
        if isinstance(structured, dict) and isinstance(structured.get("agentId"), str):
            agent_id = structured["agentId"]
        is_error, text = bool(block.get("is_error")), result_text(block.get("content"))
        call = self.calls.get(tool_use_id)  # a call comes before its result
        self.results[tool_use_id] = _Result(
            is_error=is_error, text=text, line_no=line_no, session_id=session_id, agent_id=agent_id,
            exit_code=None if call is None else claude_exit_code(call.name, text, structured, is_error),
            bash_exit_code=None if call is not None else claude_exit_code("Bash", text, structured, is_error),
        )

    def _api_error(self, line_no: int, obj: dict[str, Any], session_id: str, uuid: str | None,
                   parent: str | None) -> None:
        message_id = uuid or f"L{line_no}"
        row = self._new_message(line_no, obj, session_id, message_id, parent, "system")
        body = {k: obj[k] for k in ("subtype", "error", "retryAttempt", "maxRetries", "content", "level")
                if k in obj}
        row.blocks = [self.redactor.redact_obj(body)]
        row.json_parts = None
        content = obj.get("content")
        row.texts = [self.redactor.redact(content)] if isinstance(content, str) else ["API error"]
        if uuid is not None:
            self.uuid_message[uuid] = message_id
            if parent is not None:
                self.children[parent].append((uuid, _API_ERROR, message_id))

    # -- end of file -------------------------------------------------------------------

    def finish(self) -> None:
        self._emit_calls()
        self._emit_messages()
        self._emit_branches()
        self._emit_sessions()

    def _emit_calls(self) -> None:
        shard, limit = self.shard, self.settings.max_result_bytes
        rows = shard.rows["tool_calls"]
        for call in self.calls.values():
            result = self.results.pop(call.tool_use_id, None)
            text: str | None = None
            cut = 0
            is_error: bool | None = None
            if result is not None:
                is_error = result.is_error
                if result.text is not None:
                    text, cut = cut_text(result.text, limit)
            message = call.message
            rows.append((  # SHARD_SCHEMAS["tool_calls"] order
                message.session_id, call.tool_use_id, message.message_id, call.subindex, call.name,
                call.input_json, call.input_cut, result is not None, is_error, text, cut,
                error_kind(is_error, result.text if result is not None else None),
                None if result is None else result.exit_code,
                message.is_sidechain, call.timestamp, call.line_no, call.prompt_line,
                result.agent_id if result is not None else None, call.spawn_digest,
            ))
        # A result whose call is not in this file may answer a call in another file of its
        # session (a resumed session): the merge pairs it, or sets it aside.
        loose = shard.rows["loose_results"]
        for tool_use_id, result in self.results.items():
            text, cut = cut_text(result.text, limit) if result.text is not None else (None, 0)
            loose.append((  # SHARD_SCHEMAS["loose_results"] order
                result.session_id, tool_use_id, result.is_error, text, cut, error_kind(result.is_error, result.text),
                result.bash_exit_code, result.agent_id, result.line_no,
            ))
        for tool_use_id, line_no, session_id, first in self.extra_results:  # each its own row
            if tool_use_id in self.calls:
                shard.quarantine(line_no, "duplicate_tool_result",
                                 f"another result for this call; the one on line {first} kept",
                                 record_id=tool_use_id, session_id=session_id)
            else:  # a later copy: never the one paired
                loose.append((session_id, tool_use_id, None, None, 0, None, None, None, line_no))

    def _resolve(self, uuid: str | None, own: str | None = None) -> str | None:
        """Nearest message above ``uuid``, walking through structure records (cycle-safe)."""
        if uuid is None:
            return None
        found = self.uuid_message.get(uuid)
        if found is not None and found != own:  # the common case: the parent is a message
            return found
        seen: set[str] = set()
        while uuid is not None and uuid not in seen:
            seen.add(uuid)
            found = self.uuid_message.get(uuid)
            if found is not None and found != own:
                return found
            uuid = self.parent_of.get(uuid)
        return None

    def _emit_messages(self) -> None:
        shard, limit, resolve = self.shard, self.settings.max_content_bytes, self._resolve
        rows = shard.rows["messages"]
        for m in self.message_order:
            texts = [t for t in m.texts if t]
            thinking = [t for t in m.thinkings if t] if m.thinkings else None
            rows.append((  # SHARD_SCHEMAS["messages"] order
                m.session_id, m.message_id, resolve(m.parent_uuid, m.message_id), m.role,
                "\n".join(texts) if texts else None, "\n".join(thinking) if thinking else None,
                _content_json(m, limit), m.timestamp, m.is_sidechain, m.is_meta,
                m.is_compact_summary, m.model, m.line_no, m.prompt_line,
            ))

    def _emit_branches(self) -> None:
        """Parents with several non-structural children: edits and retries."""
        owner = {mid: sid for (sid, mid) in self.messages}
        for parent_uuid, kids in self.children.items():
            if len(kids) < 2:
                continue
            parent_message = self._resolve(parent_uuid)
            if parent_message is None:
                continue
            distinct: dict[str, str] = {}
            for _uuid, category, message_id in kids:
                if category in (_STRUCTURE, _TOOL_RESULT) or message_id == parent_message:
                    continue
                distinct.setdefault(message_id, category)
            if len(distinct) < 2:
                continue
            categories = set(distinct.values())
            kind = "edit" if _USER_TEXT in categories else "retry"
            session_id = owner.get(next(iter(distinct)))
            if session_id is None:
                continue
            last = len(distinct) - 1
            for rank, child in enumerate(distinct):
                self.shard.add("branches", session_id=session_id, parent_message_id=parent_message,
                               child_message_id=child, kind=kind, child_rank=rank, is_active=rank == last)

    def _emit_sessions(self) -> None:
        shard, redact = self.shard, self.redactor.redact
        meta_tool_use = self.meta.get("toolUseId") or self.meta.get("tool_use_id")
        for session_id, info in self.sessions.items():
            title = self.titles.get(info.root_session_id or session_id) or self.titles.get(None)
            if title is not None:
                title = redact(title.removeprefix("\x00custom:"))
            shard.add(
                "sessions", session_id=session_id, source_kind="claude-code",
                agent_version=info.version,
                cwd=redact(info.cwd) if info.cwd is not None else None,
                git_branch=redact(info.git_branch) if info.git_branch is not None else None,
                model=info.model, title=title if not info.is_sidechain_file else None,
                started_at=info.first_ts, ended_at=info.last_ts,
                is_subagent=info.is_sidechain_file, agent_id=info.agent_id,
                _root_session_id=info.root_session_id,
                _meta_tool_use_id=meta_tool_use if isinstance(meta_tool_use, str) else None,
                _spawn_digest=info.spawn_digest,
            )


def _content_json(message: _Message, limit: int) -> str | bytes:
    try:
        return joined_json(message.json_parts, message.blocks, limit)
    except NestingTooDeep as error:  # one level more than its records had: blame its first
        raise NestingTooDeep(message.line_no) from error
