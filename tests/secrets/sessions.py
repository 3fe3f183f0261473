"""Plant the positive corpus into realistic Claude Code and Codex CLI session files.

Why: a redactor is only proven if secrets reach it through every field tracelake reads:
prompts, thinking, tool inputs (Bash commands, Write contents, Edit strings), tool
outputs, Codex function-call arguments (JSON inside JSON), file paths, and lines so
broken that collect quarantines them. Record shapes follow ``pipeline/synth`` and
``/work/shared/research/formats.md`` (Claude Code 2.1.77, Codex 0.130.0). Every draw
comes from a stream seeded by ``seed`` (and distinct from the credential stream), so the
files are byte-identical for one seed.
"""

from __future__ import annotations

import datetime as dt
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from tests.secrets.credentials import ALNUM, HEX, Credential, positive, rand

EPOCH_MS = 1_767_603_600_000  # 2026-01-05T09:00:00Z, fixed.
B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
CLAUDE_MALFORMED = 3  # deliberately broken lines per Claude file
CODEX_MALFORMED = 2  # ... per Codex file

COMMANDS = {
    "export", "curl", "docker", "gh", "npm", "git", "psql", "mysql", "redis-cli", "stripe", "echo", "heroku",
    "vercel", "doctl", "doppler", "twine", "huggingface-cli", "netlify", "fly", "flyctl", "vault", "az",
    "sshpass", "gitlab-runner", "sentry-cli", "supabase", "snyk", "cargo", "dotnet", "tailscale", "ngrok",
    "linode-cli", "wandb", "claude", "mvn", "yarn", "aws", "go",
}
PROMPT_LEADS = (
    "The deploy is failing with 401, here is what I have in the env:",
    "use this for staging and rerun the integration tests",
    "I pasted the config below, wire it into the settings loader",
    "why does this not authenticate?",
    "here's the credential from the vault:",
)
THINKING_LEADS = (
    "The user's environment has this set:",
    "Looking at the config the user pasted, the relevant part is",
    "The failing request uses",
    "I should not echo secrets back, but the file currently holds",
)
ENV_DUMPS = (
    ("cat .env", "# local settings\nAPP_ENV=development\nPORT=8080\n", "\nLOG_LEVEL=debug"),
    ("printenv | sort", "HOME=/home/alice\nLANG=C.UTF-8\n", "\nPATH=/usr/local/bin:/usr/bin:/bin"),
    ("cat ~/.npmrc ~/.netrc ~/.pypirc 2>/dev/null", "", ""),
    ("git show HEAD~1:.env.production", "NODE_ENV=production\n", "\nSENTRY_ENVIRONMENT=production"),
)


def iso(ms: int) -> str:
    stamp = dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def uuid4(rng: random.Random) -> str:
    h = rand(rng, HEX, 32)
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{'89ab'[rng.randint(0, 3)]}{h[17:20]}-{h[20:]}"


def uuid7(rng: random.Random, ms: int) -> str:
    h = f"{ms:012x}" + rand(rng, HEX, 20)
    return f"{h[:8]}-{h[8:12]}-7{h[13:16]}-{'89ab'[rng.randint(0, 3)]}{h[17:20]}-{h[20:32]}"


def is_command(ctx: str) -> bool:
    """A one-line context that already reads as a shell command."""
    first = ctx.split(None, 1)[0] if ctx.strip() else ""
    return "\n" not in ctx and (first in COMMANDS or bool(re.match(r"^[A-Z_][A-Z0-9_]*=\S+ [a-z]", ctx)))


def as_command(rng: random.Random, ctx: str) -> str:
    """A shell command carrying ``ctx`` intact: itself when it already is one, else a
    heredoc or echo into a config file (how agents write env files)."""
    if is_command(ctx):
        return ctx
    target = rng.choice([".env.local", "config/secrets.env", "deploy/values.yaml", "/tmp/creds.txt"])
    if "\n" in ctx or "'" in ctx:
        return f"cat >> {target} <<'EOF'\n{ctx}\nEOF"
    return f"echo '{ctx}' >> {target}"


def as_output(rng: random.Random, ctx: str) -> tuple[str, str]:
    """A (command, output) pair whose output shows ``ctx`` the way it would appear: a
    ``$ cmd`` transcript keeps its command, a command shows up in shell history, JSON and
    YAML in a ``cat`` of a config file, anything else in an env dump."""
    if ctx.startswith("$ ") and "\n" in ctx:
        cmd, out = ctx[2:].split("\n", 1)
        return cmd, out
    if is_command(ctx):
        n = rng.randint(200, 1900)
        return "history | tail -3", f"  {n}  cd ~/src/webapp\n  {n + 1}  {ctx}\n  {n + 2}  history | tail -3"
    if ctx.lstrip().startswith(("{", '"')):
        return rng.choice(["cat config/credentials.json", "cat ~/.config/acme/settings.json"]), ctx
    if ctx.startswith("apiVersion:") or re.match(r"^\s*[\w.-]+: ", ctx):
        return rng.choice(["cat deploy/values.yaml", "kubectl get secret -o yaml", "docker compose config"]), ctx
    cmd, head, tail = rng.choice(ENV_DUMPS)
    return cmd, head + ctx + tail


def path_safe(secret: str) -> bool:
    """Secrets that can stand as a file or folder name."""
    return bool(re.fullmatch(r"[A-Za-z0-9_.\-]{16,120}", secret))


# ---------------------------------------------------------------------------------------
# Claude Code.


@dataclass
class Call:
    """One tool_use with the tool_result Claude Code writes for it."""

    name: str
    input: dict[str, Any]
    content: Any
    result: Any


@dataclass
class ClaudeWriter:
    rng: random.Random
    sid: str
    cwd: str
    ms: int
    lines: list[bytes] = field(default_factory=list)
    head: str | None = None
    last_prompt: str = ""

    def tick(self, lo: int = 50, hi: int = 3000) -> str:
        self.ms += self.rng.randint(lo, hi)
        return iso(self.ms)

    def emit(self, rec: dict[str, Any]) -> None:
        self.lines.append(orjson.dumps(rec))

    def envelope(self, kind: str, uid: str, parent: str | None) -> dict[str, Any]:
        return {"parentUuid": parent, "isSidechain": False, "type": kind, "uuid": uid, "timestamp": self.tick(),
                "userType": "external", "cwd": self.cwd, "sessionId": self.sid, "version": "2.1.77",
                "gitBranch": "main"}

    def user(self, content: Any, *, result: Any = None, source: str | None = None) -> None:
        uid = uuid4(self.rng)
        rec = self.envelope("user", uid, self.head)
        rec["message"] = {"role": "user", "content": content}
        if source is not None:
            rec["toolUseResult"] = result
            rec["sourceToolAssistantUUID"] = source
        self.emit(rec)
        self.head = uid

    def prompt(self, text: str, *, blocks: bool = False, queued: bool = False) -> None:
        if queued:
            self.emit({"type": "queue-operation", "operation": "enqueue", "timestamp": self.tick(),
                       "sessionId": self.sid, "content": text})
            self.emit({"type": "queue-operation", "operation": "dequeue", "timestamp": self.tick(1, 5),
                       "sessionId": self.sid})
        self.user([{"type": "text", "text": text}] if blocks else text)
        self.last_prompt = text

    def message(self, *, thinking: str | None = None, text: str | None = None,
                calls: tuple[Call, ...] = ()) -> None:
        """One API message: one record per block sharing message.id, then the results."""
        rng = self.rng
        mid, rid = "msg_01" + rand(rng, B58, 22), "req_011C" + rand(rng, B58, 20)
        usage = {"input_tokens": rng.randint(1, 8), "cache_read_input_tokens": rng.randint(10_000, 90_000),
                 "output_tokens": rng.randint(20, 900), "service_tier": "standard"}
        blocks: list[dict[str, Any]] = []
        if thinking is not None:
            blocks.append({"type": "thinking", "thinking": thinking, "signature": rand(rng, ALNUM + "+/", 344)})
        if text is not None:
            blocks.append({"type": "text", "text": text})
        ids = ["toolu_01" + rand(rng, B58, 22) for _ in calls]
        blocks += [{"type": "tool_use", "id": i, "name": c.name, "input": c.input} for i, c in zip(ids, calls, strict=True)]
        sources = []
        for k, block in enumerate(blocks):
            last = k == len(blocks) - 1
            uid = uuid4(rng)
            rec = self.envelope("assistant", uid, self.head)
            rec["message"] = {"model": "claude-opus-4-6", "id": mid, "type": "message", "role": "assistant",
                              "content": [block], "stop_reason": ("tool_use" if calls else "end_turn") if last else None,
                              "stop_sequence": None, "usage": usage}
            rec["requestId"] = rid
            self.emit(rec)
            self.head = uid
            if block["type"] == "tool_use":
                sources.append(uid)
        for call, tool_id, source in zip(calls, ids, sources, strict=True):
            block = {"tool_use_id": tool_id, "type": "tool_result", "content": call.content, "is_error": False}
            self.user([block], result=call.result, source=source)

    # -- tools ------------------------------------------------------------------------
    def bash(self, command: str, output: str = "") -> Call:
        result = {"stdout": output, "stderr": "", "interrupted": False, "isImage": False}
        return Call("Bash", {"command": command, "description": "Run command"}, output, result)

    def write(self, path: str, body: str) -> Call:
        result = {"type": "create", "filePath": path, "content": body, "structuredPatch": []}
        return Call("Write", {"file_path": path, "content": body}, f"File created successfully at: {path}", result)

    def edit(self, path: str, old: str, new: str) -> Call:
        original = f"# settings\n{old}\nLOG_LEVEL=info\n"
        patch = [{"oldStart": 2, "oldLines": 1, "newStart": 2, "newLines": new.count("\n") + 1,
                  "lines": ["-" + old] + ["+" + ln for ln in new.split("\n")]}]
        result = {"filePath": path, "oldString": old, "newString": new, "originalFile": original,
                  "structuredPatch": patch, "userModified": False, "replaceAll": False}
        text = f"The file {path} has been updated. Here's the result of running `cat -n` on a snippet of the edited file:\n     1\t# settings"
        return Call("Edit", {"file_path": path, "old_string": old, "new_string": new, "replace_all": False}, text, result)

    def read(self, path: str, body: str) -> Call:
        lines = body.split("\n")
        numbered = "\n".join(f"{i:>6}\t{ln}" for i, ln in enumerate(lines, 1))
        result = {"type": "text", "file": {"filePath": path, "content": body, "numLines": len(lines),
                                           "startLine": 1, "totalLines": len(lines)}}
        return Call("Read", {"file_path": path}, numbered, result)

    def grep(self, path: str, line: str) -> Call:
        content = f"{path}:{self.rng.randint(2, 80)}:{line}"
        result = {"mode": "content", "numFiles": 1, "filenames": [], "content": content, "numLines": 1}
        return Call("Grep", {"pattern": "TOKEN|KEY|SECRET|PASSWORD", "path": self.cwd, "output_mode": "content", "-n": True},
                    content, result)


def _claude_place(w: ClaudeWriter, how: str, cred: Credential) -> None:
    """Plant ``cred`` one way; ways that would split the secret fall back to a Bash output."""
    rng, ctx = w.rng, cred.context
    single = "\n" not in ctx
    if how in ("read", "grep") and not single:
        how = "bash_output"
    if how == "prompt":
        w.prompt(f"{rng.choice(PROMPT_LEADS)}\n\n{ctx}")
        w.message(text="Thanks, I'll look at how the client reads it.")
    elif how == "prompt_blocks":
        w.prompt(f"{rng.choice(PROMPT_LEADS)}\n{ctx}", blocks=True, queued=rng.random() < 0.5)
        w.message(text="Got it.")
    elif how == "thinking":
        w.message(thinking=f"{rng.choice(THINKING_LEADS)}\n{ctx}\nI'll check the loader next.",
                  calls=(w.bash("git status --short", " M src/config.py"),))
    elif how == "text":
        w.message(text=f"Your current setting is:\n\n```\n{ctx}\n```\n\nIt is loaded before the override, so the old value wins.")
    elif how == "bash_command":
        w.message(calls=(w.bash(as_command(rng, ctx), rng.choice(["", "ok", "200 OK", "Login Succeeded"])),))
    elif how == "bash_output":
        cmd, out = as_output(rng, ctx)
        w.message(thinking="Let me look at the current configuration.", calls=(w.bash(cmd, out),))
    elif how == "bash_output_blocks":
        cmd, out = as_output(rng, ctx)
        call = w.bash(cmd, out)
        call.content = [{"type": "text", "text": out}]
        w.message(calls=(call,))
    elif how == "write":
        path = f"{w.cwd}/{rng.choice(['.env', 'config/local.yaml', 'deploy/secret.yaml', 'settings.json', '.npmrc'])}"
        w.message(text="Writing the config.", calls=(w.write(path, f"# generated by setup\n{ctx}\n"),))
    elif how == "edit":
        path = f"{w.cwd}/{rng.choice(['.env', 'config/settings.py', 'docker-compose.yml'])}"
        w.message(calls=(w.edit(path, "API_KEY=changeme", ctx),))
    elif how == "read":
        w.message(calls=(w.read(f"{w.cwd}/.env", f"APP_ENV=production\n{ctx}\nLOG_LEVEL=warn"),))
    elif how == "grep":
        w.message(calls=(w.grep(f"{w.cwd}/config/.env.production", ctx),))
    else:
        raise ValueError(how)


CLAUDE_WAYS = ("prompt", "thinking", "bash_command", "bash_output", "write", "edit", "read", "grep",
               "bash_output_blocks", "prompt_blocks", "text")


def _claude_malformed(w: ClaudeWriter, creds: list[Credential]) -> list[bytes]:
    """Three broken lines, each holding a whole secret: a truncated prompt whose secret
    straddles byte 120 (where quarantine snippets were cut), a truncated tool_use, and a
    line with invalid UTF-8."""
    rng = w.rng
    singles = [c for c in creds if path_safe(c.secret) and 30 <= len(c.secret) <= 90] or creds[:1]
    a, b, c = singles[0], singles[len(singles) // 2], creds[-1]
    head = b'{"type":"user","message":{"role":"user","content":"'
    pad = "the deploy fails, I think this token is wrong: ".ljust(100 - len(head), " ")
    rec = {"type": "user", "message": {"role": "user", "content": pad + a.secret + " please rotate it"},
           "uuid": uuid4(rng), "sessionId": w.sid, "timestamp": iso(w.ms)}
    line = orjson.dumps(rec)
    end = line.index(a.secret.encode()) + len(a.secret)
    straddle = line[: end + 10]
    use = {"parentUuid": w.head, "isSidechain": False, "type": "assistant", "uuid": uuid4(rng), "timestamp": iso(w.ms),
           "sessionId": w.sid, "message": {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_01" + rand(rng, B58, 22),
                                                                           "name": "Bash", "input": {"command": as_command(rng, b.context)}}]}}
    line = orjson.dumps(use)
    cut = line.index(orjson.dumps(b.secret)[1:-1]) + len(orjson.dumps(b.secret)) - 2
    truncated = line[: cut + rng.randint(1, max(1, len(line) - cut - 2))]
    bad = {"parentUuid": None, "isSidechain": False, "type": "system", "subtype": "informational",
           "content": "@@BAD@@ " + c.context, "level": "info", "uuid": uuid4(rng), "timestamp": iso(w.ms),
           "userType": "external", "cwd": w.cwd, "sessionId": w.sid}
    invalid = orjson.dumps(bad).replace(b"@@BAD@@", b"caf\xe9 \xff\xfe")
    return [straddle, truncated, invalid]


def write_claude_session(folder: Path, creds: list[Credential], seed: int) -> Path:
    """One Claude Code session file planting every credential (every other one twice)."""
    rng = random.Random(f"claude:{seed}")
    cwd = "/home/alice/src/webapp"
    w = ClaudeWriter(rng, uuid4(rng), cwd, EPOCH_MS)
    w.prompt("Set up the staging deploy for the web app and make the integration tests pass.")
    w.emit({"type": "ai-title", "sessionId": w.sid, "aiTitle": "Set up the staging deploy"})
    w.message(thinking="Start by looking at the repository layout.", calls=(w.bash("ls -la", "total 48\ndrwxr-xr-x  9 alice alice 4096 ."),))
    for i, cred in enumerate(creds):
        _claude_place(w, CLAUDE_WAYS[i % len(CLAUDE_WAYS)], cred)
        if i % 2 == 0:
            again = (i * 5 + 3) % len(CLAUDE_WAYS)
            again += again == i % len(CLAUDE_WAYS)  # a second, different place
            _claude_place(w, CLAUDE_WAYS[again % len(CLAUDE_WAYS)], cred)
        if i % 9 == 8:
            w.message(text="Done with that part; continuing with the next service.")
            w.prompt(rng.choice(["continue", "ok, next one", "go on"]))
    for cred in [c for c in creds if "\n" not in c.secret][::3]:
        # A structured tool input (an MCP call): only the key says what the value is.
        key = "password" if "password" in cred.kind else rng.choice(["api_key", "token", "apiKey", "clientSecret", "secret"])
        call = Call("mcp__vault__put", {"path": f"kv/{cred.provider}", key: cred.secret}, "stored", {"ok": True})
        w.message(text="Storing it in the vault.", calls=(call,))
    for cred in [c for c in creds if path_safe(c.secret)][:4]:
        # A token used as a file name: the path itself leaks it.
        path = f"/home/alice/app/{cred.secret}.txt"
        w.message(text="Saving the token to a file.", calls=(w.write(path, "see the file name\n"),))
    w.message(text="All services are configured and the integration tests pass.")
    w.emit({"type": "last-prompt", "lastPrompt": w.last_prompt[:200], "sessionId": w.sid})
    lines = w.lines
    for k, bad in enumerate(_claude_malformed(w, creds)):
        lines.insert(len(lines) * (k + 1) // (CLAUDE_MALFORMED + 1), bad)
    target = folder / "-home-alice-src-webapp" / f"{w.sid}.jsonl"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(b"\n".join(lines) + b"\n")
    return target


# ---------------------------------------------------------------------------------------
# Codex CLI.


@dataclass
class CodexWriter:
    rng: random.Random
    sid: str
    cwd: str
    ms: int
    lines: list[bytes] = field(default_factory=list)
    turn_id: str = ""
    first: bool = True

    def emit(self, kind: str, payload: dict[str, Any], lo: int = 1, hi: int = 900) -> None:
        self.ms += self.rng.randint(lo, hi)
        self.lines.append(orjson.dumps({"timestamp": iso(self.ms), "type": kind, "payload": payload}))

    def meta(self) -> None:
        self.emit("session_meta", {"id": self.sid, "timestamp": iso(self.ms), "cwd": self.cwd, "originator": "codex_cli_rs",
                                   "cli_version": "0.130.0", "source": "cli", "model_provider": "openai",
                                   "base_instructions": {"text": "You are Codex, a coding agent based on GPT-5."},
                                   "git": {"commit_hash": rand(self.rng, HEX, 40), "branch": "main",
                                           "repository_url": "git@github.com:acme/infra.git"}})

    def turn(self, prompt: str) -> None:
        self.turn_id = uuid7(self.rng, self.ms)
        self.emit("event_msg", {"type": "task_started", "turn_id": self.turn_id, "started_at": self.ms // 1000,
                                "model_context_window": 258400, "collaboration_mode_kind": "default"})
        if self.first:
            self.emit("response_item", {"type": "message", "role": "developer", "content": [
                {"type": "input_text", "text": "<permissions instructions>\n`sandbox_mode` is `workspace-write`.\n</permissions instructions>"}]})
            env = f"<environment_context>\n  <cwd>{self.cwd}</cwd>\n  <shell>bash</shell>\n</environment_context>"
            self.emit("response_item", {"type": "message", "role": "user", "content": [{"type": "input_text", "text": env}]})
            self.first = False
        self.emit("turn_context", {"turn_id": self.turn_id, "cwd": self.cwd, "approval_policy": "on-request",
                                   "sandbox_policy": {"type": "workspace-write"}, "model": "gpt-5.5", "effort": "medium",
                                   "summary": "auto"})
        self.emit("response_item", {"type": "message", "role": "user", "content": [{"type": "input_text", "text": prompt}]})
        self.emit("event_msg", {"type": "user_message", "message": prompt, "images": [], "local_images": [], "text_elements": []})

    def end_turn(self, text: str) -> None:
        self.say(text, "final_answer")
        self.emit("event_msg", {"type": "task_complete", "turn_id": self.turn_id, "last_agent_message": text})

    def reasoning(self, text: str) -> None:
        self.emit("event_msg", {"type": "agent_reasoning", "text": text})
        self.emit("response_item", {"type": "reasoning", "summary": [{"type": "summary_text", "text": text}], "content": None,
                                    "encrypted_content": "gAAAAAB" + rand(self.rng, ALNUM, 400)})

    def say(self, text: str, phase: str = "commentary") -> None:
        self.emit("event_msg", {"type": "agent_message", "message": text, "phase": phase})
        self.emit("response_item", {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": text}],
                                    "phase": phase})

    def call(self, name: str, arguments: dict[str, Any] | str, output: str) -> None:
        cid = "call_" + rand(self.rng, ALNUM, 24)
        if isinstance(arguments, str):
            self.emit("response_item", {"type": "custom_tool_call", "status": "completed", "call_id": cid, "name": name,
                                        "input": arguments}, 300, 5000)
            self.emit("response_item", {"type": "custom_tool_call_output", "call_id": cid, "output": output})
            return
        self.emit("response_item", {"type": "function_call", "name": name, "arguments": orjson.dumps(arguments).decode(),
                                    "call_id": cid}, 300, 5000)
        self.emit("response_item", {"type": "function_call_output", "call_id": cid, "output": output})

    def exec(self, cmd: str, output: str = "", code: int = 0) -> None:
        text = (f"Chunk ID: {rand(self.rng, HEX, 6)}\nWall time: {self.rng.uniform(0, 5):.4f} seconds\n"
                f"Process exited with code {code}\nOriginal token count: {max(1, len(output) // 4)}\nOutput:\n{output}\n")
        self.call("exec_command", {"cmd": cmd, "workdir": self.cwd, "yield_time_ms": 1000, "max_output_tokens": 12000}, text)

    def shell(self, cmd: str, output: str = "") -> None:
        out = orjson.dumps({"output": output, "metadata": {"exit_code": 0, "duration_seconds": 0.1}}).decode()
        self.call("shell", {"command": ["bash", "-lc", cmd], "workdir": self.cwd, "timeout_ms": 10000}, out)

    def patch(self, path: str, body: str) -> None:
        text = f"*** Begin Patch\n*** Add File: {path}\n" + "\n".join("+" + ln for ln in body.split("\n")) + "\n*** End Patch"
        out = orjson.dumps({"output": f"Success. Updated the following files:\nA {path}\n",
                            "metadata": {"exit_code": 0, "duration_seconds": 0.0}}).decode()
        self.call("apply_patch", text, out)


def _codex_place(w: CodexWriter, how: str, cred: Credential) -> None:
    rng, ctx = w.rng, cred.context
    if how == "patch" and "\n" in cred.secret:
        how = "exec_output"
    if how == "prompt":
        w.end_turn("Done; anything else?")
        w.turn(f"{rng.choice(PROMPT_LEADS)}\n{ctx}")
    elif how == "reasoning":
        w.reasoning(f"**Checking credentials**\n\n{rng.choice(THINKING_LEADS)} {ctx}")
    elif how == "exec_cmd":
        w.exec(as_command(rng, ctx), rng.choice(["", "ok", "200 OK"]))
    elif how == "shell_cmd":
        w.shell(as_command(rng, ctx), "")
    elif how == "exec_output":
        w.exec(*as_output(rng, ctx))
    elif how == "shell_output":
        w.shell(*as_output(rng, ctx))
    elif how == "patch":
        w.patch(rng.choice(["config/.env.staging", "deploy/values.yaml", "settings.local.json"]), ctx)
    elif how == "message":
        w.say(f"The config currently has:\n{ctx}\nI'll move it to the secret store.")
    else:
        raise ValueError(how)


CODEX_WAYS = ("exec_cmd", "exec_output", "prompt", "reasoning", "shell_cmd", "shell_output", "patch", "message")


def _codex_malformed(w: CodexWriter, creds: list[Credential]) -> list[bytes]:
    """A truncated function_call (secret inside its arguments string) and a truncated
    user message; each keeps the whole secret before the cut."""
    rng = w.rng
    out = []
    for cred, kind in ((creds[1], "call"), (creds[-2], "user")):
        if kind == "call":
            args = orjson.dumps({"cmd": as_command(rng, cred.context), "workdir": w.cwd}).decode()
            payload: dict[str, Any] = {"type": "function_call", "name": "exec_command", "arguments": args,
                                       "call_id": "call_" + rand(rng, ALNUM, 24)}
        else:
            payload = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": cred.context}]}
        line = orjson.dumps({"timestamp": iso(w.ms), "type": "response_item", "payload": payload})
        form = next(f for f in _encoded(cred.secret) if f in line)
        end = line.rindex(form) + len(form)
        out.append(line[: end + rng.randint(1, max(1, len(line) - end - 3))])
    return out


def _encoded(secret: str) -> list[bytes]:
    once = orjson.dumps(secret)[1:-1]
    return [secret.encode(), once, orjson.dumps(once.decode())[1:-1]]


def write_codex_session(folder: Path, creds: list[Credential], seed: int) -> Path:
    """One Codex rollout planting every credential (every other one twice)."""
    rng = random.Random(f"codex:{seed}")
    start = EPOCH_MS + 3 * 3_600_000
    w = CodexWriter(rng, uuid7(rng, start), "/home/bob/src/infra", start)
    w.meta()
    w.turn("Rotate the service credentials and update the deploy configs.")
    for i, cred in enumerate(creds):
        _codex_place(w, CODEX_WAYS[i % len(CODEX_WAYS)], cred)
        if i % 2 == 1:
            _codex_place(w, CODEX_WAYS[(i * 3 + 1) % len(CODEX_WAYS)], cred)
    for cred in [c for c in creds if path_safe(c.secret)][:3]:
        w.exec(f"mkdir -p ~/.config/acme/{cred.secret} && ls ~/.config/acme", cred.secret)
    w.end_turn("Credentials rotated; the configs now read them from the secret store.")
    lines = w.lines
    for k, bad in enumerate(_codex_malformed(w, creds)):
        lines.insert(len(lines) * (k + 1) // (CODEX_MALFORMED + 1), bad)
    stamp = dt.datetime.fromtimestamp(start / 1000, tz=dt.UTC)
    target = folder / stamp.strftime("%Y/%m/%d") / f"rollout-{stamp.strftime('%Y-%m-%dT%H-%M-%S')}-{w.sid}.jsonl"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(b"\n".join(lines) + b"\n")
    return target


def split(i: int) -> tuple[bool, bool]:
    """(to Claude, to Codex) for credential ``i``: three in five go to Claude, the rest to
    Codex, and every sixth goes to both."""
    claude = i % 5 < 3
    both = i % 6 == 0
    return claude or both, (not claude) or both


def write_corpus(folder: Path, seed: int = 0) -> tuple[Path, Path, list[Credential]]:
    """Both session trees under ``folder``: (claude_dir, codex_dir, credentials)."""
    creds = positive(seed)
    claude_dir, codex_dir = folder / "claude" / "projects", folder / "codex" / "sessions"
    to_claude = [c for i, c in enumerate(creds) if split(i)[0]]
    to_codex = [c for i, c in enumerate(creds) if split(i)[1]]
    write_claude_session(claude_dir, to_claude, seed)
    write_codex_session(codex_dir, to_codex, seed)
    write_session_in_secret_folder(claude_dir, next(c for c in creds if path_safe(c.secret)), seed)
    return claude_dir, codex_dir, creds


def write_session_in_secret_folder(folder: Path, cred: Credential, seed: int) -> Path:
    """A short session whose project folder (Claude Code names it after the working
    directory) holds a token: the source path itself is a secret."""
    rng = random.Random(f"folder:{seed}")
    cwd = f"/home/alice/{cred.secret}"
    w = ClaudeWriter(rng, uuid4(rng), cwd, EPOCH_MS)
    w.prompt("List the files here.")
    w.message(text="Listing them.", calls=(w.bash("ls", "README.md\nsrc"),))
    w.message(text="There is a README and a src folder.")
    target = folder / cwd.replace("/", "-") / f"{w.sid}.jsonl"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(b"\n".join(w.lines) + b"\n")
    return target
