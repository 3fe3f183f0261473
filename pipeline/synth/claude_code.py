"""Synthetic Claude Code 2.x transcripts (``~/.claude/projects`` layout).

Record shapes follow the real 2.1.77 sample: one record per content block sharing
``message.id``/``requestId``, tool results as user records with ``toolUseResult`` and
``sourceToolAssistantUUID``, subagents in ``<session>/subagents/agent-<id>.jsonl``.
Every line is tagged with what it plants (see ``FileOut``); the manifest sums the tags.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import orjson

from pipeline.synth import content as C
from pipeline.synth.content import FileOut, SideFile

MALFORMED_REASONS = (
    "malformed_json", "not_an_object", "invalid_utf8", "nul_byte", "missing_session_id",
    "unknown_entry_type",
)


@dataclass
class Call:
    """One tool call and the result Claude Code records for it."""

    name: str
    input: dict[str, Any]
    content: Any = ""
    result: Any = None
    is_error: bool = False
    use_tags: tuple[str, ...] = ()
    result_tags: tuple[str, ...] = ()
    answered: bool = True
    tool_use_id: str | None = None
    loop_member: bool = False


@dataclass
class SessionOut:
    """What one session slot produced, kept so the next slot can resume or copy it."""

    main: FileOut
    subagents: list[FileOut] = field(default_factory=list)
    side: list[SideFile] = field(default_factory=list)
    session_id: str = ""
    project_dir: str = ""
    turn_heads: dict[int, str] = field(default_factory=dict)  # line index of a turn start -> chain head before it
    end_ms: int = 0
    kind: str = "normal"
    ctx: dict[str, Any] = field(default_factory=dict)


class _Writer:
    """Builds the records of one Claude Code file (a session or a subagent)."""

    def __init__(self, rng: random.Random, out: FileOut, *, session_id: str, cwd: str, branch: str,
                 version: str, model: str, lang: str, user: str, start_ms: int,
                 agent_id: str | None = None) -> None:
        self.rng = rng
        self.out = out
        self.sid = session_id
        self.cwd = cwd
        self.branch = branch
        self.version = version
        self.model = model
        self.lang = lang
        self.username = user
        self.ms = start_ms
        self.agent_id = agent_id
        self.sidechain = agent_id is not None
        self.head: str | None = None
        self.prompt_id: str | None = None
        self.slug: str | None = None
        self.turn_heads: dict[int, str] = {}
        self.subagents: list[FileOut] = []
        self.side: list[SideFile] = []
        self.project_dir = ""
        self.allow_secrets = not self.sidechain
        self.last_sig = b""

    # -- envelope ---------------------------------------------------------------------
    def tick(self, lo: int = 80, hi: int = 2500) -> str:
        self.ms += self.rng.randint(lo, hi)
        return C.iso(self.ms)

    def tail(self, rec: dict[str, Any]) -> dict[str, Any]:
        rec["userType"] = "external"
        rec["cwd"] = self.cwd
        rec["sessionId"] = self.sid
        rec["version"] = self.version
        rec["gitBranch"] = self.branch
        if self.slug is not None:
            rec["slug"] = self.slug
        return rec

    def emit(self, rec: dict[str, Any], tags: tuple[str, ...] = ()) -> None:
        kind = rec["type"]
        base: tuple[str, ...] = ("rec:" + kind,)
        if kind == "system":
            base += ("sys:" + rec["subtype"],)
        self.out.add(orjson.dumps(rec), base + tags)

    def head_rec(self, parent: str | None) -> dict[str, Any]:
        rec: dict[str, Any] = {"parentUuid": parent, "isSidechain": self.sidechain}
        if self.agent_id is not None:
            rec["agentId"] = self.agent_id
        return rec

    def user(self, message_content: Any, *, parent: str | None, tags: tuple[str, ...] = (),
             result: Any = None, source: str | None = None, extra: dict[str, Any] | None = None,
             uid: str | None = None) -> str:
        uid = uid or C.uuid4(self.rng)
        rec = self.head_rec(parent)
        if self.prompt_id is not None and not self.sidechain:
            rec["promptId"] = self.prompt_id
        rec["type"] = "user"
        rec["message"] = {"role": "user", "content": message_content}
        if extra:
            rec.update(extra)
        rec["uuid"] = uid
        rec["timestamp"] = self.tick(5, 900)
        if source is not None:
            rec["toolUseResult"] = result
            rec["sourceToolAssistantUUID"] = source
        self.emit(self.tail(rec), tags)
        return uid

    def assistant(self, block: dict[str, Any], *, parent: str | None, mid: str, rid: str,
                  usage: dict[str, Any], stop: str | None, tags: tuple[str, ...] = ()) -> str:
        uid = C.uuid4(self.rng)
        rec = self.head_rec(parent)
        rec["message"] = {"model": self.model, "id": mid, "type": "message", "role": "assistant",
                          "content": [block], "stop_reason": stop, "stop_sequence": None, "usage": usage}
        rec["requestId"] = rid
        rec["type"] = "assistant"
        rec["uuid"] = uid
        rec["timestamp"] = self.tick(300, 6000)
        self.emit(self.tail(rec), tags)
        return uid

    def system(self, subtype: str, *, parent: str | None, fields: dict[str, Any],
               tags: tuple[str, ...] = (), extra_head: dict[str, Any] | None = None) -> str:
        uid = C.uuid4(self.rng)
        rec = self.head_rec(parent)
        if extra_head:
            rec.update(extra_head)
        rec["type"] = "system"
        rec["subtype"] = subtype
        rec.update(fields)
        rec["uuid"] = uid
        rec["timestamp"] = self.tick(50, 1500)
        self.emit(self.tail(rec), tags)
        return uid

    def usage(self) -> dict[str, Any]:
        r = self.rng
        cache = r.randint(0, 4000)
        return {"input_tokens": r.randint(1, 8), "cache_creation_input_tokens": cache,
                "cache_read_input_tokens": r.randint(10_000, 120_000),
                "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": cache},
                "output_tokens": r.randint(1, 900), "service_tier": "standard",
                "inference_geo": "not_available"}

    # -- messages -----------------------------------------------------------------------
    def message(self, calls: list[Call], *, thinking: str | None = None, text: str | None = None,
                final: bool = False, msg_tags: tuple[str, ...] = (), interleave: bool = False) -> None:
        """One API message: optional thinking and text, then tool_use blocks with results."""
        mid, rid, usage = C.msg_id(self.rng), C.req_id(self.rng), self.usage()
        blocks: list[tuple[dict[str, Any], tuple[str, ...]]] = []
        if thinking is not None:
            tags = ("thinking",) + (("thinking:empty",) if thinking == "" else ())
            sig = C.b64_blob(self.rng, self.rng.randint(200, 600))
            blocks.append(({"type": "thinking", "thinking": thinking, "signature": sig}, tags))
        if text is not None:
            blocks.append(({"type": "text", "text": text}, ("text",)))
        first_tags = msg_tags
        for i, (block, tags) in enumerate(blocks):
            last = i == len(blocks) - 1 and not calls
            stop = ("end_turn" if final else None) if last else None
            self.head = self.assistant(block, parent=self.head, mid=mid, rid=rid, usage=usage,
                                       stop=stop, tags=tags + first_tags)
            first_tags = ()
        calls = [self.unrepeated(call) for call in calls]
        if len(calls) > 1:
            first_tags += ("parallel",)
        ids = [call.tool_use_id or C.toolu_id(self.rng) for call in calls]
        use_uuids: list[str] = []
        pending: list[tuple[Call, str, str]] = []
        for i, call in enumerate(calls):
            block = {"type": "tool_use", "id": ids[i], "name": call.name, "input": call.input,
                     "caller": {"type": "direct"}}
            stop = "tool_use" if i == len(calls) - 1 else None
            tags = ("tool_call", "tool:" + call.name) + call.use_tags + first_tags
            first_tags = ()
            uu = self.assistant(block, parent=self.head, mid=mid, rid=rid, usage=usage, stop=stop, tags=tags)
            use_uuids.append(uu)
            self.head = uu
            pending.append((call, ids[i], uu))
            if interleave:
                self.result(*pending.pop())
        for item in pending:
            self.result(*item)

    def unrepeated(self, call: Call) -> Call:
        """Only planted loops may repeat the previous call, so loop counts stay exact."""
        while _sig(call) == self.last_sig and not call.loop_member and call.tool_use_id is None:
            call = self.read(C.pick_file(self.rng, self.lang), offset=self.rng.randint(2, 400))
        self.last_sig = _sig(call)
        return call

    def result(self, call: Call, tool_use_id: str, use_uuid: str) -> None:
        if not call.answered:
            return
        block: dict[str, Any] = {"tool_use_id": tool_use_id, "type": "tool_result", "content": call.content,
                                 "is_error": call.is_error}
        tags = ("tool_result",) + call.result_tags
        if call.is_error:
            tags += ("tool_error",)
        self.head = self.user([block], parent=use_uuid, tags=tags, result=call.result, source=use_uuid)

    # -- tool calls ---------------------------------------------------------------------
    def path(self, rel: str) -> str:
        return f"{self.cwd}/{rel}"

    def bash(self, command: str, output: str, code: int = 0, *, desc: str = "Run command",
             use_tags: tuple[str, ...] = (), result_tags: tuple[str, ...] = ()) -> Call:
        if code == 0:
            result = {"stdout": output, "stderr": "", "interrupted": False, "isImage": False,
                      "noOutputExpected": False}
            return Call("Bash", {"command": command, "description": desc}, output, result, False,
                        use_tags, result_tags)
        text = f"Exit code {code}\n{output}"
        return Call("Bash", {"command": command, "description": desc}, text, "Error: " + text, True,
                    use_tags, result_tags)

    def bash_ok(self, file: str) -> Call:
        cmd, out = self.rng.choice(C.BASH_OK)
        fill = {"branch": self.branch, "file": file, "user": self.username, "n": self.rng.randint(20, 900)}
        return self.bash(cmd.format(**fill), out.format(**fill), desc="Inspect the repository")

    def bash_test(self, passing: bool) -> Call:
        fw = C.FRAMEWORK[self.lang]
        cmd, out, code = C.test_output(self.rng, fw, passing)
        tag = f"test:{fw}:{'pass' if code == 0 else 'fail'}"
        extra = ("error:test_failure",) if code else ()
        return self.bash(cmd, out, code, desc="Run the tests", result_tags=(tag,) + extra)

    def bash_error(self, kind: str) -> Call:
        cmd, out, code = self.rng.choice(C.ERRORS[kind])
        return self.bash(cmd, out, code, result_tags=("error:" + kind,))

    def read(self, rel: str, *, n: int | None = None, offset: int | None = None) -> Call:
        n = n or self.rng.choice([12, 40, 80, 150, 300])
        lines = C.code_block(self.rng, self.lang, n)
        path = self.path(rel)
        body = "\n".join(lines)
        start = offset or 1
        result = {"type": "text", "file": {"filePath": path, "content": body, "numLines": n,
                                           "startLine": start, "totalLines": start + n - 1}}
        inp: dict[str, Any] = {"file_path": path}
        if offset is not None:
            inp.update(offset=offset, limit=n)
        return Call("Read", inp, C.numbered(lines, start), result)

    def read_missing(self) -> Call:
        path = self.path(f"{self.rng.choice(C.SRC_DIRS[self.lang])}/legacy_{self.rng.choice(C.FILE_STEMS)}.{C.EXT[self.lang]}")
        return Call("Read", {"file_path": path}, "<tool_use_error>File does not exist.</tool_use_error>",
                    "Error: File does not exist.", True, result_tags=("error:file_not_found",))

    def edit(self, rel: str) -> Call:
        lines = C.code_block(self.rng, self.lang, self.rng.randint(20, 120))
        old, new = lines[3] or "pass", (lines[3] or "pass") + "  # fixed"
        path = self.path(rel)
        patch = [{"oldStart": 4, "oldLines": 1, "newStart": 4, "newLines": 1, "lines": ["-" + old, "+" + new]}]
        result = {"filePath": path, "oldString": old, "newString": new, "originalFile": "\n".join(lines),
                  "structuredPatch": patch, "userModified": False, "replaceAll": False}
        snippet = C.numbered(lines[:8])
        text = f"The file {path} has been updated. Here's the result of running `cat -n` on a snippet of the edited file:\n{snippet}"
        return Call("Edit", {"file_path": path, "old_string": old, "new_string": new, "replace_all": False},
                    text, result)

    def write(self, rel: str, body: str, tags: tuple[str, ...] = ()) -> Call:
        path = self.path(rel)
        result = {"type": "create", "filePath": path, "content": body, "structuredPatch": []}
        return Call("Write", {"file_path": path, "content": body},
                    f"File created successfully at: {path}", result, use_tags=tags)

    def grep(self) -> Call:
        pattern = self.rng.choice(["retry", "TODO", "def load_", "ErrNotFound", "useState", "pool_size"])
        n = self.rng.randint(0, 40)
        hits = [f"{self.path(C.pick_file(self.rng, self.lang))}:{self.rng.randint(1, 400)}:{line}"
                for line in C.code_block(self.rng, self.lang, n)]
        body = "\n".join(hits) if hits else "No matches found"
        result = {"mode": "content", "numFiles": len({h.split(':')[0] for h in hits}), "filenames": [],
                  "content": body, "numLines": n}
        return Call("Grep", {"pattern": pattern, "path": self.cwd, "output_mode": "content", "-n": True},
                    body, result)

    def glob(self) -> Call:
        pattern = f"{self.rng.choice(C.SRC_DIRS[self.lang])}/**/*{self.rng.choice(C.FILE_STEMS)}*.{C.EXT[self.lang]}"
        files = sorted({self.path(C.pick_file(self.rng, self.lang)) for _ in range(self.rng.randint(1, 30))})
        result = {"filenames": files, "durationMs": self.rng.randint(3, 90), "numFiles": len(files),
                  "truncated": False}
        return Call("Glob", {"pattern": pattern}, "\n".join(files), result)

    def todo(self, task: str) -> Call:
        steps = ["Inspect the current implementation", task[:60], "Run the test suite", "Update docs"]
        todos = [{"content": s, "status": self.rng.choice(["pending", "in_progress", "completed"]),
                  "activeForm": s} for s in steps[: self.rng.randint(2, 4)]]
        text = ("Todos have been modified successfully. Ensure that you continue to use the todo list "
                "to track your progress. Please proceed with the current tasks if applicable")
        return Call("TodoWrite", {"todos": todos}, text, {"oldTodos": [], "newTodos": todos})

    def webfetch(self, ok: bool = True) -> Call:
        url = self.rng.choice(["https://docs.python.org/3/library/asyncio-task.html",
                               "https://go.dev/doc/effective_go", "https://doc.rust-lang.org/book/ch09-02-recoverable-errors-with-result.html",
                               "https://react.dev/reference/react/useEffect", "http://localhost:8080/api/status"])
        inp = {"url": url, "prompt": "Summarize the section about error handling."}
        if not ok:
            msg = "connect ECONNREFUSED 127.0.0.1:8080"
            return Call("WebFetch", inp, msg, "Error: " + msg, True, result_tags=("error:connection_error",))
        text = " ".join(self.rng.choices(C.THINKING + C.TEXTS, k=self.rng.randint(3, 12)))
        result = {"bytes": self.rng.randint(2000, 90000), "code": 200, "codeText": "OK", "result": text,
                  "durationMs": self.rng.randint(200, 4000), "url": url}
        return Call("WebFetch", inp, text, result)

    def empty_args(self) -> Call:
        name = self.rng.choice(["Bash", "Read", "Grep"])
        param = {"Bash": "command", "Read": "file_path", "Grep": "pattern"}[name]
        msg = (f"<tool_use_error>InputValidationError: {name} failed due to the following issue:\n"
               f"The required parameter `{param}` is missing</tool_use_error>")
        return Call(name, {}, msg, "Error: " + msg, True, use_tags=("empty_args",),
                    result_tags=("error:input_validation",))

    def rejected(self, rel: str) -> Call:
        call = self.edit(rel)
        call.content, call.result, call.is_error = C.REJECTION, "Error: " + C.REJECTION, True
        call.result_tags = ("error:rejected",)
        return call

    # -- secrets ------------------------------------------------------------------------
    def secret_call(self) -> Call:
        rng = self.rng
        if rng.random() < 0.55:
            kind = rng.choice(C.COMMAND_KINDS)
            cmd = C.secret_command(rng, kind, C.make_secret(rng, kind))
            call = self.bash(cmd, rng.choice(["", "ok", "200 OK", "done"]), desc="Call the service")
            call.use_tags = ("secret:" + kind,)
            return call
        if rng.random() < 0.25:
            key = C.make_secret(rng, "private_key")
            call = self.bash("cat ~/.ssh/id_ed25519", key, desc="Show the deploy key")
            call.result_tags = ("secret:private_key",)
            return call
        kinds = rng.sample(C.COMMAND_KINDS, rng.randint(1, 4))
        values = [C.make_secret(rng, k) for k in kinds]
        body = C.env_file(rng, kinds, values)
        lines = body.split("\n")
        result = {"type": "text", "file": {"filePath": self.path(".env"), "content": body,
                                           "numLines": len(lines), "startLine": 1, "totalLines": len(lines)}}
        return Call("Read", {"file_path": self.path(".env")}, C.numbered(lines), result,
                    result_tags=tuple("secret:" + k for k in kinds))

    # -- subagents ----------------------------------------------------------------------
    def task(self, task_text: str) -> Call:
        rng = self.rng
        agent_id = "a" + C.rand_str(rng, C.HEX, 16)
        desc = rng.choice(["Explore the codebase", "Find the config loader", "Audit error handling"])
        hint = f"{C.pick_file(rng, self.lang)}:{rng.randint(1, 400)}"
        prompt = (f"{desc}. Context: the user asked to {task_text[:120]}. Start from {hint}. "
                  "Report file paths and line numbers.")
        tool_use_id = C.toolu_id(rng)
        rel = f"{self.project_dir}/{self.sid}/subagents/agent-{agent_id}"
        sub_out = FileOut(rel + ".jsonl")
        sub = _Writer(rng, sub_out, session_id=self.sid, cwd=self.cwd, branch=self.branch,
                      version=self.version, model=self.model, lang=self.lang, user=self.username,
                      start_ms=self.ms, agent_id=agent_id)
        sub.head = sub.user(prompt, parent=None, tags=("subagent_prompt",))
        n_calls = 0
        for _ in range(rng.randint(1, 6)):
            pick = rng.random()
            call = sub.grep() if pick < 0.33 else sub.glob() if pick < 0.66 else sub.read(C.pick_file(rng, self.lang))
            sub.message([call], text=rng.choice(C.TEXTS) if rng.random() < 0.4 else None)
            n_calls += 1
        report = f"Findings:\n- `{C.pick_file(rng, self.lang)}` handles the config\n- retries are implemented in `{C.pick_file(rng, self.lang)}`"
        sub.message([], text=report, final=True)
        self.ms = sub.ms
        self.subagents.append(sub_out)
        meta = {"agentType": "general-purpose", "description": desc, "toolUseId": tool_use_id}
        self.side.append(SideFile(rel + ".meta.json", orjson.dumps(meta)))
        result = {"status": "completed", "prompt": prompt, "agentId": agent_id,
                  "content": [{"type": "text", "text": report}], "totalDurationMs": rng.randint(5000, 90000),
                  "totalTokens": rng.randint(5000, 60000), "totalToolUseCount": n_calls,
                  "usage": {"input_tokens": rng.randint(10, 90), "output_tokens": rng.randint(100, 2000)}}
        call = Call("Task", {"description": desc, "prompt": prompt, "subagent_type": "general-purpose"},
                    [{"type": "text", "text": report}], result)
        call.use_tags = ("spawns_subagent",)
        call.tool_use_id = tool_use_id
        return call


class ClaudeCorpus(C.SlotCorpus):
    fmt = "claude-code"
    continuation = "resume"

    def __init__(self, seed: int, malformed_rate: float, oversized_lines: int) -> None:
        super().__init__(seed, malformed_rate, oversized_lines)
        self.prev: SessionOut | None = None

    def _can_continue(self, prev: Any) -> bool:
        return bool(prev.turn_heads)

    def _continue(self, rng: random.Random, prev: Any) -> Any:
        return self._resume(rng, prev)

    # -- slot kinds ---------------------------------------------------------------------
    def _context(self, rng: random.Random) -> dict[str, Any]:
        user, name, lang = rng.choice(self.projects)
        cwd = f"/home/{user}/src/{name}"
        return {"user": user, "lang": lang, "cwd": cwd,
                "project_dir": "".join(ch if ch.isalnum() else "-" for ch in cwd),
                "branch": rng.choice(C.BRANCHES), "version": rng.choice(C.VERSIONS_CLAUDE),
                "model": rng.choice(C.MODELS_CLAUDE)}

    def _writer(self, rng: random.Random, ctx: dict[str, Any], sid: str, start_ms: int) -> _Writer:
        out = FileOut(f"{ctx['project_dir']}/{sid}.jsonl")
        w = _Writer(rng, out, session_id=sid, cwd=ctx["cwd"], branch=ctx["branch"], version=ctx["version"],
                    model=ctx["model"], lang=ctx["lang"], user=ctx["user"], start_ms=start_ms)
        w.project_dir = ctx["project_dir"]
        return w

    def _normal(self, rng: random.Random) -> SessionOut:
        ctx = self._context(rng)
        sid = C.uuid4(rng)
        w = self._writer(rng, ctx, sid, C.EPOCH_MS + rng.randint(0, 60 * 86_400_000))
        n_turns = rng.choice([1, 1, 2, 2, 3, 3, 4, 5, 6, 8, 12, 20])
        _conversation(w, n_turns)
        w.out.trailing_newline = rng.random() >= 0.25
        return SessionOut(w.out, w.subagents, w.side, sid, ctx["project_dir"], w.turn_heads, w.ms, "normal", ctx)

    def _resume(self, rng: random.Random, prev: SessionOut) -> SessionOut:
        """Claude Code's resume: history copied verbatim (old sessionId, same uuids) into a new file."""
        starts = sorted(prev.turn_heads)
        cut = rng.choice(starts)
        sid = C.uuid4(rng)
        w = self._writer(rng, prev.ctx, sid, prev.end_ms + rng.randint(600_000, 86_400_000))
        w.out.lines = prev.main.lines[:cut]
        w.out.tags = prev.main.tags[:cut]
        w.head = prev.turn_heads[cut]
        w.slug = None
        _conversation(w, rng.randint(1, 4))
        w.out.trailing_newline = rng.random() >= 0.25
        self.continuations.append({"file": w.out.relpath, "original_file": prev.main.relpath,
                                   "session_id": sid, "original_session_id": prev.session_id,
                                   "copied_lines": cut})
        return SessionOut(w.out, w.subagents, w.side, sid, prev.project_dir, w.turn_heads, w.ms, "resume", prev.ctx)

    def _copy(self, rng: random.Random, prev: SessionOut) -> SessionOut:
        """The same session under a different session id (a copied project folder)."""
        sid = C.uuid4(rng)
        old, new = prev.session_id.encode(), sid.encode()

        def clone(f: FileOut) -> FileOut:
            return FileOut(f.relpath.replace(prev.session_id, sid), [ln.replace(old, new) for ln in f.lines],
                           list(f.tags), f.trailing_newline)

        main = clone(prev.main)
        subs = [clone(f) for f in prev.subagents]
        side = [SideFile(s.relpath.replace(prev.session_id, sid), s.data) for s in prev.side]
        self.copies.append({"file": main.relpath, "original_file": prev.main.relpath,
                            "session_id": sid, "original_session_id": prev.session_id})
        return SessionOut(main, subs, side, sid, prev.project_dir, {}, prev.end_ms, "copy", prev.ctx)

    # -- malformed lines ----------------------------------------------------------------
    def _plant_malformed(self, rng: random.Random, out: SessionOut) -> None:
        lines: list[tuple[bytes, tuple[str, ...]]] = []
        if self.oversized_left > 0:
            self.oversized_left -= 1
            lines.append((self._oversized(rng, out), ("malformed:oversized_line",)))
        if rng.random() < self.malformed_rate:
            reason = MALFORMED_REASONS[self.malformed_turn % len(MALFORMED_REASONS)]
            self.malformed_turn += 1
            tag = "nul_byte" if reason == "nul_byte" else "malformed:" + reason
            lines.append((self._malformed(rng, out, reason), (tag,)))
        for line, tags in lines:
            _insert(out, rng.randint(1, len(out.main.lines)), line, tags)

    def _malformed(self, rng: random.Random, out: SessionOut, reason: str) -> bytes:
        sid, ts = out.session_id, C.iso(out.end_ms)
        base = {"parentUuid": None, "isSidechain": False, "type": "system", "subtype": "informational",
                "content": "placeholder", "level": "info", "uuid": C.uuid4(rng), "timestamp": ts,
                "userType": "external", "cwd": out.ctx["cwd"], "sessionId": sid}
        if reason == "malformed_json":
            rec = {"parentUuid": None, "isSidechain": False, "type": "assistant", "uuid": C.uuid4(rng),
                   "message": {"role": "assistant", "content": [{"type": "text", "text": rng.choice(C.TEXTS)}]},
                   "sessionId": sid, "timestamp": ts}
            text = orjson.dumps(rec).decode()
            return text[: rng.randint(20, len(text) - 2)].encode()
        if reason == "not_an_object":
            if rng.random() < 0.5:
                return orjson.dumps(["queue-operation", "enqueue", C.uuid4(rng), sid])
            return orjson.dumps(f"resumed session {C.uuid4(rng)}")
        if reason == "invalid_utf8":
            base["content"] = "@@BAD@@"
            return orjson.dumps(base).replace(b"@@BAD@@", b"caf\xe9 \xff\xfe truncated \xe2\x82")
        if reason == "nul_byte":
            message_id = C.uuid4(rng)
            snap = {"type": "file-history-snapshot", "messageId": message_id,
                    "snapshot": {"messageId": message_id, "trackedFileBackups": {"@@NUL@@": {"backupFileName": None}},
                                 "timestamp": ts}, "isSnapshotUpdate": True}
            return orjson.dumps(snap).replace(b"@@NUL@@", b"bin/\x00\x00core.dump")
        if reason == "missing_session_id":
            del base["sessionId"]
            base["content"] = "Session restored from backup"
            return orjson.dumps(base)
        if reason == "unknown_entry_type":
            return orjson.dumps({"type": "worktree-state", "worktreePath": out.ctx["cwd"] + "-wt",
                                 "sessionId": sid, "timestamp": ts})
        raise ValueError(reason)

    def _oversized(self, rng: random.Random, out: SessionOut) -> bytes:
        rec = {"parentUuid": None, "isSidechain": False, "type": "system", "subtype": "informational",
               "content": "x" * (5 * 1024 * 1024 + rng.randint(1, 1000)), "level": "info",
               "uuid": C.uuid4(rng), "timestamp": C.iso(out.end_ms), "sessionId": out.session_id}
        return orjson.dumps(rec)


def _insert(out: SessionOut, pos: int, line: bytes, tags: tuple[str, ...]) -> None:
    out.main.lines.insert(pos, line)
    out.main.tags.insert(pos, tags)
    out.turn_heads = {(k + 1 if k >= pos else k): v for k, v in out.turn_heads.items()}


# ---------------------------------------------------------------------------------------
# Conversation script.


def _conversation(w: _Writer, n_turns: int) -> None:
    rng = w.rng
    task, file = C.task_prompt(rng, w.lang)
    next_prompt: tuple[str, tuple[str, ...]] = (task, ())
    last_prompt = ""
    for t in range(n_turns):
        text, tags = next_prompt
        last_prompt = text
        if t > 0 and rng.random() < 0.06:
            _noise(w)
        if t > 1 and rng.random() < 0.08:
            _compact(w, task, file)
        edit = t > 0 and rng.random() < 0.07 and w.head is not None
        outcome = _turn(w, text, tags, task, file, edit_source=w.head if edit else None)
        if edit:
            # An edit/rewind: a second user prompt under the same parent as the first.
            edited = text + rng.choice(C.EDIT_SUFFIXES)
            outcome = _turn(w, edited, ("branch:edit",), task, file, edit_parent=outcome.parent)
            last_prompt = edited
        if t == 0:
            w.slug = "-".join(rng.sample(C.SLUG_WORDS, 3))
            w.emit({"type": "ai-title", "sessionId": w.sid, "aiTitle": task[:60]})
        next_prompt = _next_prompt(w, outcome)
        if rng.random() < 0.3:
            task, file = C.task_prompt(rng, w.lang)
    if last_prompt:
        shown = last_prompt if len(last_prompt) <= 200 else last_prompt[:200] + "\u2026"
        w.emit({"type": "last-prompt", "lastPrompt": shown, "sessionId": w.sid})


@dataclass
class _Outcome:
    parent: str | None
    interrupted: bool
    failed_last: bool


def _next_prompt(w: _Writer, outcome: _Outcome) -> tuple[str, tuple[str, ...]]:
    rng = w.rng
    r = rng.random()
    if outcome.failed_last or r < 0.12:
        return rng.choice(C.CORRECTIONS), ("prompt:correction",)
    if r < 0.32:
        return rng.choice(C.SHORT_PROMPTS), ("prompt:short",)
    if r < 0.38 and w.allow_secrets:
        kind = rng.choice(C.SECRET_KINDS)
        return C.secret_prompt(rng, kind, C.make_secret(rng, kind)), ("secret:" + kind,)
    return C.task_prompt(rng, w.lang)[0], ()


def _noise(w: _Writer) -> None:
    """The caveat / slash-command / stdout trio Claude Code injects as user records."""
    cmd, stdout = w.rng.choice(C.SLASH_COMMANDS)
    w.head = w.user(C.CAVEAT, parent=w.head, tags=("noise",), extra={"isMeta": True})
    w.head = w.user(f"<command-name>{cmd}</command-name>\n            <command-message>{cmd[1:]}</command-message>\n            <command-args></command-args>",
                    parent=w.head, tags=("noise",))
    w.head = w.user(f"<local-command-stdout>{stdout}</local-command-stdout>", parent=w.head, tags=("noise",))


def _compact(w: _Writer, task: str, file: str) -> None:
    rng = w.rng
    boundary = w.system("compact_boundary", parent=None, extra_head={"logicalParentUuid": w.head},
                        fields={"content": "Conversation compacted", "isMeta": False, "level": "info",
                                "compactMetadata": {"trigger": rng.choice(["auto", "manual"]),
                                                    "preTokens": rng.randint(120_000, 190_000)}},
                        tags=("compaction",))
    code = "\n".join("      " + ln for ln in C.code_block(rng, w.lang, rng.randint(10, 60)))
    concepts = "\n".join(f"   - {c}" for c in rng.sample(C.FILE_STEMS, 4))
    summary = C.COMPACT_SUMMARY.format(task=task, file=file, concepts=concepts, code=code)
    w.head = w.user(summary, parent=boundary, tags=("compact_summary",),
                    extra={"isVisibleInTranscriptOnly": True, "isCompactSummary": True})


def _turn(w: _Writer, prompt: str, prompt_tags: tuple[str, ...], task: str, file: str, *,
          edit_source: str | None = None, edit_parent: str | None = None) -> _Outcome:
    rng = w.rng
    turn_start = len(w.out.lines)
    parent = edit_parent if edit_parent is not None else w.head
    if parent is not None and edit_parent is None:
        w.turn_heads[turn_start] = parent
    w.prompt_id = C.uuid4(rng)
    prompt_uuid = C.uuid4(rng)
    first_tags: tuple[str, ...] = ("turn",)
    if rng.random() < 0.15:
        w.emit({"type": "queue-operation", "operation": "enqueue", "timestamp": w.tick(), "sessionId": w.sid,
                "content": prompt}, first_tags + prompt_tags_secret(prompt_tags))
        w.emit({"type": "queue-operation", "operation": "dequeue", "timestamp": w.tick(1, 5), "sessionId": w.sid})
        prompt_tags = tuple(t for t in prompt_tags if not t.startswith("secret:"))
        first_tags = ()
    if rng.random() < 0.4:
        w.emit({"type": "file-history-snapshot", "messageId": prompt_uuid,
                "snapshot": {"messageId": prompt_uuid, "trackedFileBackups": {}, "timestamp": C.iso(w.ms)},
                "isSnapshotUpdate": False}, first_tags)
        first_tags = ()
    message: Any = prompt
    extra_tags: tuple[str, ...] = ()
    if rng.random() < 0.1:
        reminder = C.SYSTEM_REMINDER.format(file=w.path(file))
        message = [{"type": "text", "text": prompt}, {"type": "text", "text": reminder}]
        extra_tags = ("prompt:system_reminder",)
    extra = {"permissionMode": "default"} if rng.random() < 0.5 else None
    w.head = w.user(message, parent=parent, uid=prompt_uuid, extra=extra,
                    tags=first_tags + ("prompt",) + prompt_tags + extra_tags)
    retries = rng.choice([0] * 18 + [1, 2])
    msg_tags: tuple[str, ...] = ()
    for k in range(retries):
        w.system("api_error", parent=prompt_uuid, tags=("api_error",), fields={
            "level": "error", "error": {"status": 529, "headers": {}, "requestID": C.req_id(rng),
                                        "error": {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}},
            "retryInMs": 500 * 2 ** k, "retryAttempt": k + 1, "maxRetries": 10})
        msg_tags = ("branch:retry",)
    if retries:
        w.head = prompt_uuid
    if edit_source is not None:
        # The first branch of an edit: a short answer the user then rewinds.
        w.message([], thinking=_thinking(w, task), text=rng.choice(C.TEXTS), final=True, msg_tags=msg_tags)
        return _Outcome(parent, False, False)

    failed_last = False
    n_steps = rng.choice([0, 1, 1, 2, 2, 3, 3, 4, 5, 6, 8, 12])
    interrupt = rng.random() < 0.07
    for s in range(n_steps):
        step_tags, msg_tags = msg_tags, ()
        if interrupt and s == n_steps - 1:
            return _interrupt(w, file, parent, step_tags)
        r = rng.random()
        thinking = _thinking(w, task) if rng.random() < 0.5 else None
        text = rng.choice(C.TEXTS) if rng.random() < 0.35 else None
        if r < 0.08:
            kind = rng.choice(list(C.ERRORS))
            w.message([w.bash_error(kind)], thinking=thinking, text=text, msg_tags=step_tags)
            _recover(w, kind, file)
        elif r < 0.11:
            call = w.read_missing() if rng.random() < 0.5 else w.webfetch(False)
            w.message([call], thinking=thinking, msg_tags=step_tags)
            _recover(w, "file_not_found" if call.name == "Read" else "connection_error", file)
        elif r < 0.14:
            _loop(w, file, step_tags)
        elif r < 0.16:
            w.message([w.empty_args()], thinking=thinking, msg_tags=step_tags)
        elif r < 0.18:
            body, _ = C.repeated_lines(rng)
            w.message([w.write(C.pick_file(rng, w.lang), body, ("repeated_line_args",))], text=text, msg_tags=step_tags)
        elif r < 0.30:
            call = w.bash_test(rng.random() < 0.6)
            w.message([call], thinking=thinking, text=text, msg_tags=step_tags)
            failed_last = call.is_error
            continue
        elif r < 0.36 and w.allow_secrets:
            w.message([w.secret_call()], thinking=thinking, msg_tags=step_tags)
        elif r < 0.42:
            calls = [_plain_call(w, file) for _ in range(rng.randint(2, 4))]
            w.message(calls, thinking=thinking, text=text, msg_tags=step_tags, interleave=rng.random() < 0.3)
        elif r < 0.44 and w.allow_secrets:
            w.message([w.task(task)], thinking=thinking, text=text, msg_tags=step_tags)
        else:
            w.message([_plain_call(w, file)], thinking=thinking, text=text, msg_tags=step_tags)
        failed_last = False
    final = rng.choice(C.FINALS).format(task_lc=task[0].lower() + task[1:], file=file, n=rng.randint(3, 200))
    w.message([], thinking=_thinking(w, task) if rng.random() < 0.3 else None, text=final, final=True,
              msg_tags=msg_tags)
    return _Outcome(parent, False, failed_last)


def prompt_tags_secret(tags: tuple[str, ...]) -> tuple[str, ...]:
    """A secret in a queued prompt first appears in the queue record; tag it there."""
    return tuple(t for t in tags if t.startswith("secret:"))


def _thinking(w: _Writer, task: str) -> str:
    if w.rng.random() < 0.2:
        return ""
    return w.rng.choice(C.THINKING).format(task=task[0].lower() + task[1:])


def _plain_call(w: _Writer, file: str) -> Call:
    rng = w.rng
    r = rng.random()
    if r < 0.3:
        return w.read(C.pick_file(rng, w.lang) if rng.random() < 0.5 else file)
    if r < 0.45:
        return w.bash_ok(file)
    if r < 0.6:
        return w.edit(file)
    if r < 0.7:
        return w.grep()
    if r < 0.78:
        return w.glob()
    if r < 0.86:
        return w.todo(file)
    if r < 0.92:
        return w.write(C.pick_file(rng, w.lang), "\n".join(C.code_block(rng, w.lang, rng.randint(10, 120))))
    return w.webfetch()


def _recover(w: _Writer, kind: str, file: str) -> None:
    # Empty thinking happens on recovery turns too; for SDPO an empty one is not an error site.
    thinking = "" if w.rng.random() < 0.3 else (
        f"The last call failed ({kind.replace('_', ' ')}). {C.RECOVERY_TEXT[kind]}")
    call = w.grep() if kind == "command_not_found" else w.glob() if kind == "file_not_found" else w.read(file)
    w.message([call], thinking=thinking, text=C.RECOVERY_TEXT[kind], msg_tags=("recovery",))


def _loop(w: _Writer, file: str, msg_tags: tuple[str, ...]) -> None:
    """3-5 identical consecutive calls: the looping failure mode."""
    rng = w.rng
    n = rng.randint(3, 5)
    template = w.read(file, n=rng.choice([10, 30])) if rng.random() < 0.5 else w.bash_ok(file)
    while _sig(template) == w.last_sig:  # must not merge with a run just before it
        template = w.read(file, offset=rng.randint(2, 400))
    for k in range(n):
        call = Call(template.name, template.input, template.content, template.result,
                    use_tags=("loop",) if k == 2 else (), loop_member=True)
        w.message([call], msg_tags=msg_tags if k == 0 else ())


def _sig(call: Call) -> bytes:
    return call.name.encode() + orjson.dumps(call.input, option=orjson.OPT_SORT_KEYS)


def _interrupt(w: _Writer, file: str, parent: str | None, msg_tags: tuple[str, ...]) -> _Outcome:
    rng = w.rng
    r = rng.random()
    if r < 0.4:
        w.message([w.rejected(file)], thinking=_thinking(w, file), msg_tags=msg_tags)
        text = C.INTERRUPT_TOOL
    elif r < 0.7:
        call = w.bash_ok(file)
        call.answered = False
        call.use_tags = ("unpaired",)
        w.message([call], msg_tags=msg_tags)
        text = C.INTERRUPT
    else:
        w.message([], thinking=_thinking(w, file), text=rng.choice(C.TEXTS), msg_tags=msg_tags)
        text = C.INTERRUPT
    w.head = w.user([{"type": "text", "text": text}], parent=w.head, tags=("interrupt",))
    return _Outcome(parent, True, False)
