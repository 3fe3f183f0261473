"""Codex CLI rollout reader: one ``rollout-*.jsonl`` -> shard rows.

Each line is ``{timestamp, type, payload}``. Conversation content is read from
``response_item`` only; ``event_msg`` mirrors it, except that ``event_msg/user_message``
is the cleanest record of what the human typed, so prompts come from there (falling
back to filtered ``response_item`` user messages in files without those events).
Consecutive assistant-side items (reasoning, calls, assistant text) form one assistant
message, like one Claude API message; calls pair with outputs on ``call_id`` file-wide.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Any

import orjson

from pipeline.collect.content import (
    capped_dumps,
    cut_text,
    dumps,
    result_text,
    str_field,
    strip_blobs,
)
from pipeline.collect.errors import codex_exit_code, codex_is_error, error_kind
from pipeline.collect.lines import NestingTooDeep
from pipeline.collect.redact import reveals_secret
from pipeline.collect.shard import Shard

PREAMBLES = (
    "<environment_context>", "<user_instructions>", "# AGENTS.md instructions",
    "<user_shell_command>", "<turn_aborted>", "<permissions instructions>",
)
CALL_TYPES = frozenset({"function_call", "custom_tool_call", "local_shell_call", "web_search_call"})
OUTPUT_TYPES = frozenset({"function_call_output", "custom_tool_call_output", "local_shell_call_output"})
ITEM_TYPES = CALL_TYPES | OUTPUT_TYPES | {"message", "reasoning"}


@dataclass
class _Message:
    message_id: str
    role: str
    timestamp: str | None
    line_no: int
    is_meta: bool = False
    model: str | None = None
    blocks: list[Any] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    thinkings: list[str] = field(default_factory=list)
    n_calls: int = 0


@dataclass
class _Call:
    message: _Message
    call_id: str
    subindex: int
    name: str
    input_json: str
    input_cut: int
    line_no: int
    timestamp: str | None


@dataclass
class _Prompt:
    anchor: int  # first line whose rows belong to this prompt
    line_no: int
    text: str
    timestamp: str | None
    message_id: str


class CodexFile:
    def __init__(self, shard: Shard) -> None:
        self.shard = shard
        self.redactor = shard.redactor
        self.settings = shard.settings
        self.session_id: str | None = None
        self.parent_thread: str | None = None
        self.cwd: str | None = None
        self.git_branch: str | None = None
        self.version: str | None = None
        self.model: str | None = None
        self.first_ts: str | None = None
        self.last_ts: str | None = None
        self.group: _Message | None = None
        self.messages: list[_Message] = []
        self.calls: dict[str, _Call] = {}
        self.results: dict[str, tuple[Any, int]] = {}
        self.event_prompts: list[tuple[int, str, str | None]] = []
        self.item_users: list[_Message] = []

    def feed(self, line_no: int, obj: dict[str, Any]) -> tuple[str | None, str | None]:
        kind: str | None = str_field(obj, "type")
        payload = obj.get("payload")
        if payload is None and kind in ITEM_TYPES:  # pre-2025 flat rollouts
            payload, kind = obj, "response_item"
        ts = obj.get("timestamp") if isinstance(obj.get("timestamp"), str) else None
        if kind == "session_meta":
            return self._session_meta(line_no, payload), self.session_id
        if kind == "turn_context":
            if isinstance(payload, dict):
                if self.model is None and isinstance(payload.get("model"), str):
                    self.model = payload["model"]
                if self.cwd is None and isinstance(payload.get("cwd"), str):
                    self.cwd = payload["cwd"]
            return "counted:turn_context", self.session_id
        if kind in ("response_item", "event_msg"):
            if not isinstance(payload, dict):
                self.shard.quarantine(line_no, "invalid_record", f"{kind} without a payload object")
                return None, None
            item = str_field(payload, "type")
            label = item[:40] if item is not None else "none"
            mapped = (kind == "response_item" and item in ITEM_TYPES) or (
                kind == "event_msg" and item == "user_message"
            )
            if not mapped:
                return f"counted:{kind}:{label}", self.session_id
            if self.session_id is None:
                self.shard.quarantine(line_no, "missing_session_id", f"{kind}/{label} before any session_meta")
                return None, None
            self._stamp(ts)
            if kind == "event_msg":
                self._user_event(line_no, payload, ts)
            else:
                self._item(line_no, payload, str(item), ts)  # mapped: one of ITEM_TYPES
            return "mapped", self.session_id
        if kind in ("compacted", "state") or obj.get("record_type") == "state":
            return f"counted:{kind if isinstance(kind, str) else 'state'}", self.session_id
        shown = kind[:40] if isinstance(kind, str) else repr(kind)[:40]
        self.shard.quarantine(line_no, "unknown_entry_type", f"type={shown}")
        return None, None

    def _stamp(self, ts: str | None) -> None:
        if ts is None:
            return
        if self.first_ts is None or ts < self.first_ts:
            self.first_ts = ts
        if self.last_ts is None or ts > self.last_ts:
            self.last_ts = ts

    def _session_meta(self, line_no: int, payload: Any) -> str | None:
        if not isinstance(payload, dict) or not isinstance(payload.get("id"), str) or not payload["id"]:
            self.shard.quarantine(line_no, "missing_session_id", "session_meta without payload.id")
            return None
        if self.session_id is not None:
            return "counted:session_meta"  # the first one defines the session
        self.session_id = payload["id"]
        self._stamp(payload.get("timestamp") if isinstance(payload.get("timestamp"), str) else None)
        if isinstance(payload.get("cwd"), str):
            self.cwd = payload["cwd"]
        if isinstance(payload.get("cli_version"), str):
            self.version = payload["cli_version"]
        git = payload.get("git")
        if isinstance(git, dict) and isinstance(git.get("branch"), str):
            self.git_branch = git["branch"]
        source = payload.get("source")
        if isinstance(source, dict):
            spawn = (source.get("subagent") or {}).get("thread_spawn") if isinstance(source.get("subagent"), dict) else None
            if isinstance(spawn, dict) and isinstance(spawn.get("parent_thread_id"), str):
                self.parent_thread = spawn["parent_thread_id"]
        return "mapped"

    def _user_event(self, line_no: int, payload: dict[str, Any], ts: str | None) -> None:
        message = payload.get("message")
        if isinstance(message, str):
            text = message.strip()
            if text and not text.startswith(PREAMBLES):
                self.group = None  # a new turn: the reply that follows is a message of its own
                self.event_prompts.append((line_no, self.redactor.redact(text), ts))

    def _item(self, line_no: int, payload: dict[str, Any], item: str, ts: str | None) -> None:
        if item == "message":
            role = payload.get("role")
            content = payload.get("content")
            blocks: list[Any] = self.redactor.redact_obj(strip_blobs(content if isinstance(content, list) else []))
            texts = [str(b.get("text") or "") for b in blocks
                     if isinstance(b, dict) and b.get("type") in ("input_text", "output_text", "text")]
            if role == "assistant":
                group = self._group(line_no, ts)
                group.blocks.extend(blocks)
                group.texts.extend(texts)
                return
            self.group = None
            text = "\n".join(texts).strip()
            row = self._message(line_no, "user" if role == "user" else "system", ts)
            row.blocks, row.texts = blocks, texts
            row.is_meta = role != "user" or text.startswith(PREAMBLES)
            if role == "user" and text and not row.is_meta:
                self.item_users.append(row)
            return
        if item == "reasoning":
            group = self._group(line_no, ts)
            block = dict(payload)
            if isinstance(block.get("encrypted_content"), str):
                block["encrypted_content"] = f"[encrypted: {len(block['encrypted_content'])} chars]"
            block = self.redactor.redact_obj(block)
            group.blocks.append(block)
            for key in ("summary", "content"):
                parts = block.get(key)
                if isinstance(parts, list):
                    group.thinkings.extend(str(p.get("text") or "") for p in parts if isinstance(p, dict))
            return
        if item in CALL_TYPES:
            self._call(line_no, payload, item, ts)
            return
        self._output(line_no, payload, ts)

    def _message(self, line_no: int, role: str, ts: str | None) -> _Message:
        row = _Message(message_id=f"L{line_no}", role=role, timestamp=ts, line_no=line_no)
        self.messages.append(row)
        return row

    def _group(self, line_no: int, ts: str | None) -> _Message:
        if self.group is None:
            self.group = self._message(line_no, "assistant", ts)
            self.group.model = self.model
        return self.group

    def _call(self, line_no: int, payload: dict[str, Any], item: str, ts: str | None) -> None:
        group = self._group(line_no, ts)
        raw_id = payload.get("call_id")
        call_id = raw_id if isinstance(raw_id, str) and raw_id else f"L{line_no}"
        if item == "function_call":
            args = payload.get("arguments")
            tool_input: Any = args
            if isinstance(args, str):
                try:
                    tool_input = orjson.loads(args)
                except orjson.JSONDecodeError:
                    tool_input = args
            name = str(payload.get("name") or "")
        elif item == "custom_tool_call":
            tool_input = {"input": payload.get("input")}
            name = str(payload.get("name") or "")
        else:
            tool_input = payload.get("action")
            name = item.removesuffix("_call")
        tool_input = self.redactor.redact_obj(tool_input)
        block = self.redactor.redact_obj({k: v for k, v in payload.items() if k not in ("arguments", "input")})
        block["input"] = tool_input
        group.blocks.append(block)
        if call_id in self.calls:
            self.shard.quarantine(line_no, "duplicate_tool_use_id", "call_id reused; first call kept",
                                  record_id=call_id, session_id=self.session_id)
            return
        input_json, cut = cut_text(dumps(tool_input if tool_input is not None else {}),
                                   self.settings.max_input_bytes)
        self.calls[call_id] = _Call(group, call_id, group.n_calls, name, input_json, cut, line_no, ts)
        group.n_calls += 1

    def _output(self, line_no: int, payload: dict[str, Any], ts: str | None) -> None:
        self.group = None
        row = self._message(line_no, "tool", ts)
        output = payload.get("output")
        if isinstance(output, list):
            output = strip_blobs(output)
        call_id = payload.get("call_id")
        call = self.calls.get(call_id) if isinstance(call_id, str) else None
        if call is not None and reveals_secret(call.input_json):
            output = self.redactor.redact_revealed(output)
        else:
            output = self.redactor.redact_obj(output)
        row.blocks = [{**{k: v for k, v in payload.items() if k != "output"}, "output": output}]
        raw_id = payload.get("call_id")
        if not isinstance(raw_id, str) or not raw_id:
            self.shard.quarantine(line_no, "tool_result_without_id", None, session_id=self.session_id)
            return
        if raw_id in self.results:
            self.shard.quarantine(line_no, "duplicate_tool_result", "second output for one call; first kept",
                                  record_id=raw_id, session_id=self.session_id)
            return
        self.results[raw_id] = (output, line_no)

    # -- end of file -------------------------------------------------------------------

    def _prompts(self) -> list[_Prompt]:
        """Event prompts linked to their response_item twin; else the filtered items.

        Clients differ in where they write the twin: the CLI just before the event, the
        Desktop app and newer TUIs after the turn or not at all. A twin is looked for
        only in the prompt's own turn: after the previous prompt's event and before its
        own (the nearest), else after its event and before the next one. A prompt with
        no twin before it gets a user message of its own at the event's line, and a twin
        written later is kept as a meta message (a mirror, not a second turn), so every
        prompt is a message that score can find.
        """
        if not self.event_prompts:
            return [_Prompt(m.line_no, m.line_no, "\n".join(m.texts).strip(), m.timestamp, m.message_id)
                    for m in self.item_users]
        prompts = []
        events = [line for line, _, _ in self.event_prompts]
        taken: set[int] = set()
        for index, (line_no, text, ts) in enumerate(self.event_prompts):
            low = events[index - 1] if index else 0
            high = events[index + 1] if index + 1 < len(events) else None
            before = [r for r in self.item_users
                      if low < r.line_no < line_no and r.line_no not in taken and _twin(r, text)]
            if before:
                row = before[-1]
                taken.add(row.line_no)
                prompts.append(_Prompt(row.line_no, line_no, text, ts, row.message_id))
                continue
            after = next((r for r in self.item_users if r.line_no > line_no and (high is None or r.line_no < high)
                          and r.line_no not in taken and _twin(r, text)), None)
            if after is not None:  # a mirror written after the turn
                taken.add(after.line_no)
                after.is_meta = True
            row = _Message(message_id=f"L{line_no}", role="user", timestamp=ts, line_no=line_no,
                           blocks=[{"type": "input_text", "text": text}], texts=[text])
            bisect.insort(self.messages, row, key=lambda m: m.line_no)
            prompts.append(_Prompt(line_no, line_no, text, ts, row.message_id))
        return prompts

    def finish(self) -> None:
        if self.session_id is None:
            return
        shard, sid = self.shard, self.session_id
        prompts = self._prompts()
        anchors = [p.anchor for p in prompts]

        def prompt_line(line_no: int) -> int | None:
            index = bisect.bisect_right(anchors, line_no) - 1
            return prompts[index].line_no if index >= 0 else None

        for p in prompts:
            shard.add("prompts", session_id=sid, text=p.text, timestamp=p.timestamp,
                      message_id=p.message_id, line_no=p.line_no)
        limit = self.settings.max_result_bytes
        for call in self.calls.values():
            found = self.results.pop(call.call_id, None)
            full = result_text(found[0]) if found is not None else None
            text, cut = cut_text(full, limit) if full is not None else (None, 0)
            code = codex_exit_code(full) if full is not None else None
            is_error = codex_is_error(full, code) if found is not None else None
            shard.add(
                "tool_calls", session_id=sid, tool_use_id=call.call_id,
                message_id=call.message.message_id, turn_subindex=call.subindex, name=call.name,
                input_json=call.input_json, input_truncated_bytes=call.input_cut,
                has_result=found is not None, is_error=is_error, result_text=text,
                result_truncated_bytes=cut, error_kind=error_kind(is_error, full), exit_code=code,
                is_sidechain=self.parent_thread is not None, timestamp=call.timestamp,
                line_no=call.line_no,
                _prompt_line=prompt_line(call.line_no), _agent_id=None, _spawn_digest=None,
            )
        for call_id, (_output, line_no) in self.results.items():
            shard.quarantine(line_no, "unpaired_tool_result", "output without a call in this file",
                             record_id=call_id, session_id=sid)
        content_limit = self.settings.max_content_bytes
        previous: str | None = None  # rollouts are linear: each message follows the last
        for m in self.messages:
            texts = [t for t in m.texts if t]
            thinking = [t for t in m.thinkings if t]
            shard.add(
                "messages", session_id=sid, message_id=m.message_id, parent_id=previous, role=m.role,
                text="\n".join(texts) if texts else None,
                thinking="\n".join(thinking) if thinking else None,
                content_json=_content_json(m, content_limit), timestamp=m.timestamp,
                is_sidechain=self.parent_thread is not None, is_meta=m.is_meta,
                is_compact_summary=False, model=m.model,
                line_no=m.line_no, _prompt_line=prompt_line(m.line_no),
            )
            previous = m.message_id
        redact = self.redactor.redact
        shard.add(
            "sessions", session_id=sid, source_kind="codex",
            agent_version=self.version, cwd=redact(self.cwd) if self.cwd else self.cwd,
            git_branch=redact(self.git_branch) if self.git_branch else self.git_branch,
            model=self.model, title=None, started_at=self.first_ts, ended_at=self.last_ts,
            is_subagent=self.parent_thread is not None, agent_id=None,
            _root_session_id=self.parent_thread, _meta_tool_use_id=None, _spawn_digest=None,
        )


def _twin(row: _Message, prompt: str) -> bool:
    """Whether a response_item user message carries this prompt: the same text, or the
    text ending with it (the Desktop app puts its IDE context before the request)."""
    text = "\n".join(row.texts).strip()
    return text == prompt or (bool(prompt) and text.endswith("\n" + prompt))


def _content_json(message: _Message, limit: int) -> str:
    try:
        return capped_dumps(message.blocks, limit)
    except NestingTooDeep as error:  # one level more than its records had: blame its first
        raise NestingTooDeep(message.line_no) from error
