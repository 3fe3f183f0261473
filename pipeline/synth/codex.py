"""Synthetic Codex CLI rollouts (``~/.codex/sessions/YYYY/MM/DD/rollout-*.jsonl``).

Shapes follow the real 0.130.0 sample: ``{timestamp, type, payload}`` lines, event_msg
mirrors of response items, ``function_call.arguments`` as a JSON string, exec output as
"Chunk ID / Wall time / Process exited with code N / Output:" text, and apply_patch as a
custom tool call whose output is a JSON string with ``metadata.exit_code``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import orjson

from pipeline.synth import content as C
from pipeline.synth.content import FileOut

MALFORMED_REASONS = ("malformed_json", "not_an_object", "invalid_utf8", "nul_byte", "unknown_entry_type")
BASE_INSTRUCTIONS = (
    "You are Codex, a coding agent based on GPT-5. You and the user share one workspace, and your "
    "job is to collaborate with them until their goal is genuinely handled.\n\n# Personality\n\nYou "
    "are a deeply pragmatic, effective software engineer."
)
PERMISSIONS = (
    "<permissions instructions>\nFilesystem sandboxing defines which files can be read or written. "
    "`sandbox_mode` is `workspace-write`.\nApproval policy is currently on-request.\n</permissions instructions>"
)
ABORTED = (
    "<turn_aborted>\nThe user interrupted the previous turn on purpose. Any running unified exec "
    "processes were terminated.\n</turn_aborted>"
)
RATE_LIMITS = {"limit_id": "codex", "limit_name": None, "primary": None, "secondary": None,
               "credits": None, "plan_type": None, "rate_limit_reached_type": None}
MODELS = ["gpt-5.5", "gpt-5.3-codex", "gpt-5.5"]
CLI_VERSIONS = ["0.130.0", "0.128.0", "0.125.0"]


@dataclass
class FnCall:
    """A function or custom tool call with the output Codex records for it."""

    name: str
    arguments: Any  # dict for function calls (serialised to a string), str for apply_patch
    output: str
    custom: bool = False
    use_tags: tuple[str, ...] = ()
    out_tags: tuple[str, ...] = ()
    answered: bool = True
    loop_member: bool = False


@dataclass
class CodexOut:
    main: FileOut
    session_id: str
    start_ms: int
    end_ms: int
    turn_starts: list[int] = field(default_factory=list)
    kind: str = "normal"
    ctx: dict[str, Any] = field(default_factory=dict)


def _sig(call: FnCall) -> bytes:
    return call.name.encode() + orjson.dumps(call.arguments, option=orjson.OPT_SORT_KEYS)


def rollout_path(ms: int, sid: str) -> str:
    day = C.iso(ms)[:10].replace("-", "/")
    return f"{day}/rollout-{C.file_stamp(ms)}-{sid}.jsonl"


class _Writer:
    def __init__(self, rng: random.Random, out: FileOut, *, sid: str, ctx: dict[str, Any], start_ms: int) -> None:
        self.rng = rng
        self.out = out
        self.sid = sid
        self.ctx = ctx
        self.cwd: str = ctx["cwd"]
        self.lang: str = ctx["lang"]
        self.ms = start_ms
        self.turn_id = ""
        self.totals = {"input_tokens": 0, "cached_input_tokens": 0, "output_tokens": 0,
                       "reasoning_output_tokens": 0, "total_tokens": 0}
        self.turn_starts: list[int] = []
        self.first_turn = True
        self.last_sig = b""

    def tick(self, lo: int = 1, hi: int = 900) -> str:
        self.ms += self.rng.randint(lo, hi)
        return C.iso(self.ms)

    def emit(self, kind: str, payload: dict[str, Any], tags: tuple[str, ...] = (), lo: int = 1, hi: int = 900) -> None:
        name = kind if kind not in ("response_item", "event_msg") else f"{kind}/{payload['type']}"
        line = orjson.dumps({"timestamp": self.tick(lo, hi), "type": kind, "payload": payload})
        self.out.add(line, ("rec:" + name,) + tags)

    def meta(self, forked_from: str | None = None) -> None:
        payload: dict[str, Any] = {
            "id": self.sid, "timestamp": C.iso(self.ms), "cwd": self.cwd, "originator": "codex_cli_rs",
            "cli_version": self.ctx["cli_version"], "source": "cli", "model_provider": "openai",
            "base_instructions": {"text": BASE_INSTRUCTIONS},
            "git": {"commit_hash": C.rand_str(self.rng, C.HEX, 40), "branch": self.ctx["branch"],
                    "repository_url": f"git@github.com:acme/{self.ctx['name']}.git"},
        }
        if forked_from is not None:
            payload["forked_from_id"] = forked_from
        self.emit("session_meta", payload)

    def token_count(self, spend: bool = True) -> None:
        if not spend:
            self.emit("event_msg", {"type": "token_count", "info": None, "rate_limits": RATE_LIMITS})
            return
        r = self.rng
        last = {"input_tokens": r.randint(8000, 40000), "cached_input_tokens": r.randint(0, 30000),
                "output_tokens": r.randint(20, 900), "reasoning_output_tokens": r.randint(0, 300)}
        last["total_tokens"] = last["input_tokens"] + last["output_tokens"]
        for key, value in last.items():
            self.totals[key] += value
        info = {"total_token_usage": dict(self.totals), "last_token_usage": last, "model_context_window": 258400}
        self.emit("event_msg", {"type": "token_count", "info": info, "rate_limits": RATE_LIMITS})

    # -- items --------------------------------------------------------------------------
    def reasoning(self, text: str) -> None:
        enc = "gAAAAAB" + C.b64_blob(self.rng, self.rng.randint(300, 1200))
        if text:
            self.emit("event_msg", {"type": "agent_reasoning", "text": text})
            summary = [{"type": "summary_text", "text": text}]
            tags: tuple[str, ...] = ("thinking",)
        else:
            summary, tags = [], ("thinking", "thinking:empty")
        self.emit("response_item", {"type": "reasoning", "summary": summary, "content": None,
                                    "encrypted_content": enc}, tags)

    def say(self, text: str, phase: str) -> None:
        self.emit("event_msg", {"type": "agent_message", "message": text, "phase": phase, "memory_citation": None},
                  lo=200, hi=4000)
        self.emit("response_item", {"type": "message", "role": "assistant",
                                    "content": [{"type": "output_text", "text": text}], "phase": phase}, ("text",))

    def user_item(self, text: str) -> None:
        self.emit("response_item", {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]})

    def calls(self, calls: list[FnCall], msg_tags: tuple[str, ...] = ()) -> None:
        """Parallel calls first, outputs after them (as Codex writes them)."""
        calls = [self.unrepeated(call) for call in calls]
        ids = [C.call_id(self.rng) for _ in calls]
        first = msg_tags + (("parallel",) if len(calls) > 1 else ())
        for cid, call in zip(ids, calls, strict=True):
            tags = ("tool_call", "tool:" + call.name) + call.use_tags + first
            first = ()
            if call.custom:
                self.emit("response_item", {"type": "custom_tool_call", "status": "completed", "call_id": cid,
                                            "name": call.name, "input": call.arguments}, tags, 300, 6000)
            else:
                args = orjson.dumps(call.arguments).decode()
                self.emit("response_item", {"type": "function_call", "name": call.name, "arguments": args,
                                            "call_id": cid}, tags, 300, 6000)
        self.token_count()
        for cid, call in zip(ids, calls, strict=True):
            if not call.answered:
                continue
            kind = "custom_tool_call_output" if call.custom else "function_call_output"
            tags = ("tool_result",) + call.out_tags
            self.emit("response_item", {"type": kind, "call_id": cid, "output": call.output}, tags, 5, 3000)

    def unrepeated(self, call: FnCall) -> FnCall:
        """Only planted loops may repeat the previous call, so loop counts stay exact."""
        while _sig(call) == self.last_sig and not call.loop_member:
            a = self.rng.randint(1, 500)
            lines = C.code_block(self.rng, self.lang, 40)
            call = self.exec(f"sed -n '{a},{a + 39}p' {C.pick_file(self.rng, self.lang)}", "\n".join(lines))
        self.last_sig = _sig(call)
        return call

    # -- tools --------------------------------------------------------------------------
    def exec(self, cmd: str, output: str, code: int = 0, *, use_tags: tuple[str, ...] = (),
             out_tags: tuple[str, ...] = ()) -> FnCall:
        r = self.rng
        text = (f"Chunk ID: {C.rand_str(r, C.HEX, 6)}\nWall time: {r.uniform(0, 30):.4f} seconds\n"
                f"Process exited with code {code}\nOriginal token count: {max(1, len(output) // 4)}\nOutput:\n{output}\n")
        if code:
            out_tags += ("tool_error",)
        args = {"cmd": cmd, "workdir": self.cwd, "yield_time_ms": 1000, "max_output_tokens": 12000}
        return FnCall("exec_command", args, text, use_tags=use_tags, out_tags=out_tags)

    def exec_ok(self, file: str) -> FnCall:
        r = self.rng
        if r.random() < 0.4:
            lines = C.code_block(r, self.lang, r.choice([20, 60, 150, 300]))
            return self.exec(f"sed -n '1,{len(lines)}p' {file}", "\n".join(lines))
        if r.random() < 0.3:
            hits = [f"{C.pick_file(r, self.lang)}:{r.randint(1, 400)}:{ln}" for ln in C.code_block(r, self.lang, r.randint(1, 40))]
            return self.exec(f"grep -rn '{r.choice(C.FILE_STEMS)}' .", "\n".join(hits))
        cmd, out = r.choice(C.BASH_OK)
        fill = {"branch": self.ctx["branch"], "file": file, "user": self.ctx["user"], "n": r.randint(20, 900)}
        return self.exec(cmd.format(**fill), out.format(**fill))

    def exec_test(self, passing: bool) -> FnCall:
        fw = C.FRAMEWORK[self.lang]
        cmd, out, code = C.test_output(self.rng, fw, passing)
        tags = (f"test:{fw}:{'pass' if code == 0 else 'fail'}",) + (("error:test_failure",) if code else ())
        return self.exec(cmd, out, code, out_tags=tags)

    def exec_error(self, kind: str) -> FnCall:
        cmd, out, code = self.rng.choice(C.ERRORS[kind])
        return self.exec(cmd, out, code, out_tags=("error:" + kind,))

    def patch(self, file: str, body: str | None = None, ok: bool = True, use_tags: tuple[str, ...] = ()) -> FnCall:
        r = self.rng
        if body is None:
            old = C.code_block(r, self.lang, r.randint(2, 12))
            new = C.code_block(r, self.lang, r.randint(2, 30))
            hunk = "\n".join([" " + x for x in old[:2]] + ["-" + x for x in old[2:]] + ["+" + x for x in new])
            text = f"*** Begin Patch\n*** Update File: {file}\n@@\n{hunk}\n*** End Patch"
            action = "M"
        else:
            text = f"*** Begin Patch\n*** Add File: {file}\n" + "\n".join("+" + x for x in body.split("\n")) + "\n*** End Patch"
            action = "A"
        if ok:
            out = {"output": f"Success. Updated the following files:\n{action} {file}\n",
                   "metadata": {"exit_code": 0, "duration_seconds": round(r.uniform(0, 0.5), 1)}}
            out_tags: tuple[str, ...] = ()
        else:
            out = {"output": f"apply_patch verification failed: Failed to find expected lines in {self.cwd}/{file}",
                   "metadata": {"exit_code": 1, "duration_seconds": 0.0}}
            out_tags = ("tool_error", "error:patch_failed")
        return FnCall("apply_patch", text, orjson.dumps(out).decode(), True, use_tags, out_tags)

    def plan(self, task: str) -> FnCall:
        steps = [{"step": s, "status": self.rng.choice(["pending", "in_progress", "completed"])}
                 for s in ["Inspect the code", task[:50], "Run the tests"]]
        return FnCall("update_plan", {"plan": steps}, "Plan updated")

    def empty_args(self) -> FnCall:
        return FnCall("exec_command", {}, "failed to parse function arguments: missing field `cmd` at line 1 column 2",
                      use_tags=("empty_args",), out_tags=("tool_error", "error:input_validation"))

    def secret_call(self) -> FnCall:
        r = self.rng
        if r.random() < 0.55:
            kind = r.choice(C.COMMAND_KINDS)
            return self.exec(C.secret_command(r, kind, C.make_secret(r, kind)), r.choice(["", "ok", "200 OK"]),
                             use_tags=("secret:" + kind,))
        if r.random() < 0.25:
            return self.exec("cat ~/.ssh/id_ed25519", C.make_secret(r, "private_key"), out_tags=("secret:private_key",))
        kinds = r.sample(C.COMMAND_KINDS, r.randint(1, 4))
        body = C.env_file(r, kinds, [C.make_secret(r, k) for k in kinds])
        return self.exec("cat .env", body, out_tags=tuple("secret:" + k for k in kinds))


class CodexCorpus(C.SlotCorpus):
    fmt = "codex"
    continuation = "fork"

    def __init__(self, seed: int, malformed_rate: float, oversized_lines: int) -> None:
        super().__init__(seed, malformed_rate, oversized_lines)
        self.prev: CodexOut | None = None

    def _can_continue(self, prev: Any) -> bool:
        return bool(len(prev.turn_starts) >= 2)

    def _continue(self, rng: random.Random, prev: Any) -> Any:
        return self._fork(rng, prev)

    def _context(self, rng: random.Random) -> dict[str, Any]:
        user, name, lang = rng.choice(self.projects)
        return {"user": user, "name": name, "lang": lang, "cwd": f"/home/{user}/src/{name}",
                "branch": rng.choice(C.BRANCHES), "model": rng.choice(MODELS),
                "cli_version": rng.choice(CLI_VERSIONS), "effort": rng.choice(["low", "medium", "high"])}

    def _normal(self, rng: random.Random) -> CodexOut:
        ctx = self._context(rng)
        start = C.EPOCH_MS + rng.randint(0, 60 * 86_400_000)
        sid = C.uuid7(rng, start)
        w = _Writer(rng, FileOut(rollout_path(start, sid)), sid=sid, ctx=ctx, start_ms=start)
        w.meta()
        _conversation(w, rng.choice([1, 1, 2, 2, 3, 3, 4, 5, 6, 8, 12, 20]))
        w.out.trailing_newline = rng.random() >= 0.25
        return CodexOut(w.out, sid, start, w.ms, w.turn_starts, "normal", ctx)

    def _fork(self, rng: random.Random, prev: CodexOut) -> CodexOut:
        """A forked thread: new session_meta, then the parent's records copied verbatim."""
        cut = rng.choice(prev.turn_starts[1:])
        start = prev.end_ms + rng.randint(600_000, 86_400_000)
        sid = C.uuid7(rng, start)
        w = _Writer(rng, FileOut(rollout_path(start, sid)), sid=sid, ctx=prev.ctx, start_ms=start)
        w.meta(forked_from=prev.session_id)
        w.out.lines += prev.main.lines[1:cut]
        w.out.tags += prev.main.tags[1:cut]
        w.first_turn = False
        _conversation(w, rng.randint(1, 4))
        w.out.trailing_newline = rng.random() >= 0.25
        self.continuations.append({"file": w.out.relpath, "original_file": prev.main.relpath, "session_id": sid,
                                   "original_session_id": prev.session_id, "copied_lines": cut - 1})
        return CodexOut(w.out, sid, start, w.ms, w.turn_starts, "fork", prev.ctx)

    def _copy(self, rng: random.Random, prev: CodexOut) -> CodexOut:
        sid = C.uuid7(rng, prev.start_ms)
        old, new = prev.session_id.encode(), sid.encode()
        main = FileOut(rollout_path(prev.start_ms, sid), [ln.replace(old, new) for ln in prev.main.lines],
                       list(prev.main.tags), prev.main.trailing_newline)
        self.copies.append({"file": main.relpath, "original_file": prev.main.relpath, "session_id": sid,
                            "original_session_id": prev.session_id})
        return CodexOut(main, sid, prev.start_ms, prev.end_ms, [], "copy", prev.ctx)

    def _plant_malformed(self, rng: random.Random, out: CodexOut) -> None:
        planted: list[tuple[bytes, tuple[str, ...]]] = []
        if self.oversized_left > 0:
            self.oversized_left -= 1
            big = {"timestamp": C.iso(out.end_ms), "type": "event_msg",
                   "payload": {"type": "background_event", "message": "x" * (5 * 1024 * 1024 + rng.randint(1, 999))}}
            planted.append((orjson.dumps(big), ("malformed:oversized_line",)))
        if rng.random() < self.malformed_rate:
            reason = MALFORMED_REASONS[self.malformed_turn % len(MALFORMED_REASONS)]
            self.malformed_turn += 1
            tag = "nul_byte" if reason == "nul_byte" else "malformed:" + reason
            planted.append((_malformed(rng, out, reason), (tag,)))
        for line, tags in planted:
            pos = rng.randint(1, len(out.main.lines))
            out.main.lines.insert(pos, line)
            out.main.tags.insert(pos, tags)
            out.turn_starts = [k + 1 if k >= pos else k for k in out.turn_starts]


def _malformed(rng: random.Random, out: CodexOut, reason: str) -> bytes:
    ts = C.iso(out.end_ms)
    if reason == "malformed_json":
        text = orjson.dumps({"timestamp": ts, "type": "response_item", "payload": {
            "type": "message", "role": "assistant", "content": [{"type": "output_text", "text": rng.choice(C.TEXTS)}]}}).decode()
        return text[: rng.randint(20, len(text) - 2)].encode()
    if reason == "not_an_object":
        if rng.random() < 0.5:
            return orjson.dumps([ts, "event_msg", C.uuid4(rng)])
        return orjson.dumps(f"rollout truncated {C.uuid4(rng)}")
    if reason == "invalid_utf8":
        rec = {"timestamp": ts, "type": "event_msg", "payload": {"type": "background_event", "message": "@@BAD@@"}}
        return orjson.dumps(rec).replace(b"@@BAD@@", b"caf\xe9 \xff\xfe \xe2\x82")
    if reason == "nul_byte":
        rec = {"timestamp": ts, "type": "event_msg", "payload": {"type": "background_event", "message": "@@NUL@@"}}
        return orjson.dumps(rec).replace(b"@@NUL@@", b"binary output \x00\x00 skipped")
    if reason == "unknown_entry_type":
        return orjson.dumps({"timestamp": ts, "type": "inter_agent_note", "payload": {"note": C.uuid4(rng)}})
    raise ValueError(reason)


# ---------------------------------------------------------------------------------------
# Conversation script.


def _conversation(w: _Writer, n_turns: int) -> None:
    rng = w.rng
    task, file = C.task_prompt(rng, w.lang)
    prompt: tuple[str, tuple[str, ...]] = (task, ())
    for t in range(n_turns):
        if t > 1 and rng.random() < 0.06:
            _compact(w, task)
        failed = _turn(w, prompt[0], prompt[1], task, file)
        if t < n_turns - 1 and rng.random() < 0.05:
            w.emit("event_msg", {"type": "thread_rolled_back", "num_turns": 1}, ("branch:rollback",))
        r = rng.random()
        if failed or r < 0.12:
            prompt = (rng.choice(C.CORRECTIONS), ("prompt:correction",))
        elif r < 0.32:
            prompt = (rng.choice(C.SHORT_PROMPTS), ("prompt:short",))
        elif r < 0.38:
            kind = rng.choice(C.SECRET_KINDS)
            prompt = (C.secret_prompt(rng, kind, C.make_secret(rng, kind)), ("secret:" + kind,))
        else:
            task, file = C.task_prompt(rng, w.lang)
            prompt = (task, ())


def _compact(w: _Writer, task: str) -> None:
    history = [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": task}]},
               {"type": "message", "role": "assistant", "content": [{"type": "output_text",
                                                                     "text": "Summary of progress so far: inspected the code and ran the tests."}]}]
    w.emit("compacted", {"message": "", "replacement_history": history}, ("compaction",))
    w.emit("event_msg", {"type": "context_compacted"})


def _turn(w: _Writer, prompt: str, prompt_tags: tuple[str, ...], task: str, file: str) -> bool:
    rng = w.rng
    w.turn_id = C.uuid7(rng, w.ms)
    w.turn_starts.append(len(w.out.lines))
    started = w.ms
    w.emit("event_msg", {"type": "task_started", "turn_id": w.turn_id, "started_at": w.ms // 1000,
                         "model_context_window": 258400, "collaboration_mode_kind": "default"}, ("turn",))
    if w.first_turn:
        w.emit("response_item", {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": PERMISSIONS}]})
        env = (f"<environment_context>\n  <cwd>{w.cwd}</cwd>\n  <shell>bash</shell>\n  <current_date>{C.iso(w.ms)[:10]}</current_date>\n"
               "  <timezone>Etc/UTC</timezone>\n</environment_context>")
        w.user_item(env)
        w.first_turn = False
    w.emit("turn_context", {"turn_id": w.turn_id, "cwd": w.cwd, "current_date": C.iso(w.ms)[:10], "timezone": "Etc/UTC",
                            "approval_policy": "on-request", "sandbox_policy": {"type": "workspace-write"},
                            "model": w.ctx["model"], "effort": w.ctx["effort"], "summary": "auto",
                            "truncation_policy": {"mode": "tokens", "limit": 10000}})
    w.user_item(prompt)
    w.emit("event_msg", {"type": "user_message", "message": prompt, "images": [], "local_images": [], "text_elements": []},
           ("prompt",) + prompt_tags)
    w.token_count(spend=False)
    if rng.random() < 0.08:
        for k in range(rng.randint(1, 2)):
            w.emit("event_msg", {"type": "stream_error", "message": f"Reconnecting... {k + 1}/5",
                                 "additional_details": "stream disconnected before completion"}, ("api_error",))
    failed = False
    n_steps = rng.choice([0, 1, 1, 2, 2, 3, 3, 4, 5, 6, 8, 12])
    interrupt = rng.random() < 0.07
    for s in range(n_steps):
        if rng.random() < 0.55:
            w.reasoning("" if rng.random() < 0.2 else rng.choice(C.THINKING).format(task=task.lower()))
        if rng.random() < 0.35:
            w.say(rng.choice(C.TEXTS), "commentary")
        r = rng.random()
        failed = False
        if interrupt and s == n_steps - 1:
            call = w.exec_ok(file)
            if rng.random() < 0.5:
                call.answered = False
                call.use_tags = ("unpaired",)
            w.calls([call])
            w.emit("event_msg", {"type": "turn_aborted", "turn_id": w.turn_id, "reason": "interrupted"}, ("interrupt",))
            w.user_item(ABORTED)
            return False
        elif r < 0.1:
            kind = rng.choice(list(C.ERRORS))
            w.calls([w.exec_error(kind)])
            w.say(C.RECOVERY_TEXT[kind], "commentary")
            w.calls([w.exec_ok(file)], ("recovery",))
        elif r < 0.13:
            w.calls([w.patch(file, ok=False)])
            w.calls([w.exec_ok(file)], ("recovery",))
        elif r < 0.16:
            template = w.exec_ok(file)
            while _sig(template) == w.last_sig:  # must not merge with a run just before it
                template = w.exec_ok(file)
            for k in range(rng.randint(3, 5)):
                w.calls([FnCall(template.name, template.arguments, template.output,
                                use_tags=("loop",) if k == 2 else (), loop_member=True)])
        elif r < 0.18:
            w.calls([w.empty_args()])
        elif r < 0.20:
            body, _ = C.repeated_lines(rng)
            w.calls([w.patch(C.pick_file(rng, w.lang), body, use_tags=("repeated_line_args",))])
        elif r < 0.32:
            call = w.exec_test(rng.random() < 0.6)
            w.calls([call])
            failed = "tool_error" in call.out_tags
        elif r < 0.38:
            w.calls([w.secret_call()])
        elif r < 0.45:
            w.calls([w.exec_ok(file) for _ in range(rng.randint(2, 4))])
        elif r < 0.6:
            w.calls([w.patch(file)])
        elif r < 0.65:
            w.calls([w.plan(task)])
        else:
            w.calls([w.exec_ok(file)])
    final = rng.choice(C.FINALS).format(task_lc=task[0].lower() + task[1:], file=file, n=rng.randint(3, 200))
    w.say(final, "final_answer")
    w.token_count()
    w.emit("event_msg", {"type": "task_complete", "turn_id": w.turn_id, "last_agent_message": final,
                         "completed_at": w.ms // 1000, "duration_ms": w.ms - started,
                         "time_to_first_token_ms": rng.randint(300, 4000)})
    return failed
