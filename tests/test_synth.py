"""`tracelake synth`: determinism, and the manifest against an independent re-scan of the files."""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from pipeline.cli.synth import register
from pipeline.synth import MANIFEST_NAME, SynthManifest, load_manifest, synthesize

SECRET_RES = {
    "aws_access_key": r"AKIA[A-Z2-7]{16}",
    "github_token": r"ghp_[A-Za-z0-9]{36}",
    "anthropic_key": r"sk-ant-api03-[A-Za-z0-9_-]{93}AA",
    "openai_key": r"sk-proj-[A-Za-z0-9_-]{64}",
    "slack_token": r"xoxb-\d{11}-\d{13}-[A-Za-z0-9]{24}",
    "gitlab_token": r"glpat-[A-Za-z0-9_-]{20}",
    "google_api_key": r"AIza[A-Za-z0-9_-]{35}",
    "stripe_key": r"sk_live_[A-Za-z0-9]{32}",
    "huggingface_token": r"hf_[A-Za-z]{34}",
    "jwt": r"eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9\.eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]{43}",
    "private_key": r"-----BEGIN OPENSSH PRIVATE KEY-----\n[A-Za-z0-9+/\n]+?\n-----END OPENSSH PRIVATE KEY-----",
    "bearer_token": r"Bearer [A-Za-z0-9]{40}",
    "database_url": r"postgres://\w+:[A-Za-z0-9]{16}@[\w.-]+:5432/\w+",
    "password_assignment": r"PASSWORD=[A-Za-z0-9+/]{32}",
}
SECRETS = {k: re.compile(v) for k, v in SECRET_RES.items()}
CLAUDE_TYPES = {"user", "assistant", "system", "queue-operation", "file-history-snapshot",
                "last-prompt", "ai-title", "summary", "attachment", "progress"}
CODEX_TYPES = {"session_meta", "turn_context", "response_item", "event_msg", "compacted"}
INTERRUPTS = {"[Request interrupted by user]", "[Request interrupted by user for tool use]"}


def _strings(obj: Any) -> list[str]:
    out: list[str] = []
    stack = [obj]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            out.append(item)
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return out


def _split(data: bytes) -> list[bytes]:
    lines = data.split(b"\n")
    return lines[:-1] if data.endswith(b"\n") else lines


def _classify(line: bytes, fmt: str) -> tuple[str, Any]:
    """(reason or 'ok', record) — the quarantine reasons a collect parser should give."""
    if len(line) > 5 * 1024 * 1024:
        return "oversized_line", None
    if b"\x00" in line:
        json.loads(line.replace(b"\x00", b""))  # recoverable once NULs are stripped
        return "nul_byte", None
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        return "invalid_utf8", None
    try:
        rec = json.loads(text)
    except json.JSONDecodeError:
        return "malformed_json", None
    if not isinstance(rec, dict):
        return "not_an_object", None
    if rec.get("type") not in (CLAUDE_TYPES if fmt == "claude-code" else CODEX_TYPES):
        return "unknown_entry_type", None
    if fmt == "claude-code" and rec["type"] in ("user", "assistant", "system") and "sessionId" not in rec:
        return "missing_session_id", None
    return "ok", rec


class Scan:
    """Counts recomputed from the files alone, following the manifest's field descriptions."""

    def __init__(self, root: Path, fmt: str) -> None:
        self.c: Counter[str] = Counter()
        self.by: dict[str, Counter[str]] = defaultdict(Counter)
        self.seen: set[bytes] = set()
        files = sorted(root.rglob("*.jsonl"))
        for path in files:
            data = path.read_bytes()
            self.c["bytes"] += len(data)
            self.c["no_newline"] += not data.endswith(b"\n")
            self.c["subagent_files" if "/subagents/" in path.as_posix() else "session_files"] += 1
            recs: list[dict[str, Any]] = []
            for line in _split(data):
                self.c["lines"] += 1
                if line in self.seen:
                    self.c["dups"] += 1
                self.seen.add(line)
                reason, rec = _classify(line, fmt)
                if reason == "nul_byte":
                    self.c["nul"] += 1
                elif reason != "ok":
                    self.by["malformed"][reason] += 1
                else:
                    recs.append(rec)
            self._secrets(recs)
            (self._claude if fmt == "claude-code" else self._codex)(recs, path)

    def _secrets(self, recs: list[dict[str, Any]]) -> None:
        text = "\n\x01\n".join(s for rec in recs for s in _strings(rec))
        for kind, rx in SECRETS.items():
            self.by["secrets"][kind] += len(set(rx.findall(text)))

    def _calls(self, sigs: list[str]) -> None:
        run = 1
        for prev, cur in zip(sigs, sigs[1:], strict=False):
            run = run + 1 if cur == prev else 1
            if run == 3:
                self.c["loops"] += 1

    def _claude(self, recs: list[dict[str, Any]], path: Path) -> None:
        c = self.c
        uuids = {r["uuid"] for r in recs if "uuid" in r}
        prompt_children: Counter[str] = Counter()
        api_parents: set[str] = set()
        uses: dict[str, str] = {}
        results: set[str] = set()
        blocks_per_msg: Counter[str] = Counter()
        sigs: list[str] = []
        for rec in recs:
            t = rec["type"]
            self.by["types"][t] += 1
            if rec.get("parentUuid") is not None:
                assert rec["parentUuid"] in uuids, "dangling parentUuid"
            if t == "system":
                self.by["subtypes"][rec["subtype"]] += 1
                if rec["subtype"] == "api_error":
                    api_parents.add(rec["parentUuid"])
            if t == "assistant":
                for block in rec["message"]["content"]:
                    if block["type"] == "thinking":
                        c["thinking"] += 1
                        c["thinking_empty"] += block["thinking"] == ""
                    elif block["type"] == "text":
                        c["text"] += 1
                    elif block["type"] == "tool_use":
                        c["tool_calls"] += 1
                        self.by["tools"][block["name"]] += 1
                        uses[block["id"]] = block["name"]
                        blocks_per_msg[rec["message"]["id"]] += 1
                        c["empty_args"] += block["input"] == {}
                        sigs.append(block["name"] + json.dumps(block["input"], sort_keys=True))
            if t != "user":
                continue
            content = rec["message"]["content"]
            if isinstance(content, list) and any(b.get("type") == "tool_result" for b in content):
                for b in content:
                    c["tool_results"] += 1
                    c["tool_errors"] += bool(b.get("is_error"))
                    results.add(b["tool_use_id"])
                    if uses.get(b["tool_use_id"]) == "Task":
                        agent = f"agent-{rec['toolUseResult']['agentId']}.jsonl"
                        assert (path.parent / rec["sessionId"] / "subagents" / agent).exists()
                continue
            if rec["isSidechain"]:
                assert rec["parentUuid"] is None
                c["subagent_prompts"] += 1
                continue
            text = content if isinstance(content, str) else content[0]["text"]
            if rec.get("isCompactSummary"):
                assert text.startswith("This session is being continued from a previous conversation")
                c["compact_summaries"] += 1
            elif rec.get("isMeta") or text.startswith(("<command-name>", "<local-command-stdout>")):
                c["noise"] += 1
            elif text in INTERRUPTS:
                c["interrupts"] += 1
            else:
                c["prompts"] += 1
                c["reminders"] += isinstance(content, list) and content[-1]["text"].startswith("<system-reminder>")
                prompt_children[rec["parentUuid"]] += 1
        c["edits"] += sum(n - 1 for n in prompt_children.values() if n > 1)
        c["retries"] += len(api_parents)
        c["unpaired"] += len(set(uses) - results)
        c["parallel"] += sum(1 for n in blocks_per_msg.values() if n > 1)
        self._calls(sigs)

    def _codex(self, recs: list[dict[str, Any]], path: Path) -> None:
        c = self.c
        assert recs[0]["type"] == "session_meta" and recs[0]["payload"]["id"] in path.name
        calls: dict[str, str] = {}
        outputs: set[str] = set()
        sigs: list[str] = []
        batch = 0
        for rec in recs:
            t, p = rec["type"], rec["payload"]
            key = f"{t}/{p['type']}" if t in ("response_item", "event_msg") else t
            self.by["types"][key] += 1
            is_call = key in ("response_item/function_call", "response_item/custom_tool_call")
            if is_call:
                batch += 1
                c["tool_calls"] += 1
                self.by["tools"][p["name"]] += 1
                calls[p["call_id"]] = p["name"]
                args = p["arguments"] if "arguments" in p else p["input"]
                c["empty_args"] += args == "{}"
                sigs.append(p["name"] + json.dumps(json.loads(args) if "arguments" in p else args, sort_keys=True))
            else:
                c["parallel"] += batch > 1
                batch = 0
            if key in ("response_item/function_call_output", "response_item/custom_tool_call_output"):
                c["tool_results"] += 1
                outputs.add(p["call_id"])
                out = p["output"]
                m = re.search(r"^Process exited with code (\d+)$", out, re.M)
                if key.endswith("custom_tool_call_output"):
                    c["tool_errors"] += json.loads(out)["metadata"]["exit_code"] != 0
                elif m:
                    c["tool_errors"] += int(m.group(1)) != 0
                else:
                    c["tool_errors"] += out.startswith("failed to parse function arguments")
            c["prompts"] += key == "event_msg/user_message"
            c["interrupts"] += key == "event_msg/turn_aborted"
            if key == "response_item/reasoning":
                c["thinking"] += 1
                c["thinking_empty"] += p["summary"] == []
            c["text"] += key == "response_item/message" and p["role"] == "assistant"
        c["unpaired"] += len(set(calls) - outputs)
        self._calls(sigs)


def _check(manifest: SynthManifest, scan: Scan) -> None:
    c, by = scan.c, scan.by
    m = manifest
    assert m.lines == c["lines"] and m.bytes == c["bytes"]
    assert m.files_without_trailing_newline == c["no_newline"]
    assert (m.session_files, m.subagent_files) == (c["session_files"], c["subagent_files"])
    assert m.exact_duplicate_lines == c["dups"]
    assert m.malformed_lines == dict(by["malformed"])
    assert m.nul_byte_lines == c["nul"]
    assert m.records_by_type == dict(sorted(by["types"].items()))
    assert m.tool_calls_by_name == dict(sorted(by["tools"].items()))
    assert m.secrets_by_kind == {k: v for k, v in sorted(by["secrets"].items()) if v}
    pairs = {
        "prompts": "prompts", "interrupts": "interrupts", "thinking_blocks": "thinking",
        "empty_thinking_blocks": "thinking_empty", "text_blocks": "text", "tool_calls": "tool_calls",
        "tool_results": "tool_results", "tool_errors": "tool_errors", "unpaired_tool_calls": "unpaired",
        "parallel_tool_messages": "parallel", "loops": "loops", "empty_argument_calls": "empty_args",
    }
    if m.format == "claude-code":
        pairs.update(subagent_prompts="subagent_prompts", compact_summaries="compact_summaries",
                     noise_user_records="noise", prompts_with_system_reminder="reminders")
        assert m.system_subtypes == dict(sorted(by["subtypes"].items()))
        assert m.branches.get("edit", 0) == c["edits"] and m.branches.get("retry", 0) == c["retries"]
        assert m.compactions == by["subtypes"]["compact_boundary"]
        assert m.subagent_meta_files == m.subagent_files
        assert m.subagent_spawns == by["tools"]["Task"] >= m.subagent_files
    for field, key in pairs.items():
        assert getattr(m, field) == c[key], field


@pytest.fixture(scope="module")
def claude(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, SynthManifest]:
    root = tmp_path_factory.mktemp("claude")
    return root, synthesize(root, 40, 11, malformed_rate=1.0)


@pytest.fixture(scope="module")
def codex(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, SynthManifest]:
    root = tmp_path_factory.mktemp("codex")
    return root, synthesize(root, 40, 11, "codex", malformed_rate=1.0)


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("fmt", ["claude-code", "codex"])
def test_same_seed_same_bytes_and_prefix_stable(tmp_path: Path, fmt: str) -> None:
    a, b, c, small = (tmp_path / n for n in ("a", "b", "c", "small"))
    synthesize(a, 12, 5, fmt, malformed_rate=0.5)
    synthesize(b, 12, 5, fmt, malformed_rate=0.5)
    synthesize(c, 12, 6, fmt, malformed_rate=0.5)
    synthesize(small, 6, 5, fmt, malformed_rate=0.5)
    tree_a = _tree(a)
    assert tree_a == _tree(b)
    assert tree_a != _tree(c)
    # A smaller corpus is a prefix of a larger one (slot i depends only on seed and i).
    small_tree = _tree(small)
    del small_tree[MANIFEST_NAME]
    assert all(tree_a[k] == v for k, v in small_tree.items())


def test_claude_manifest_matches_rescan(claude: tuple[Path, SynthManifest]) -> None:
    root, manifest = claude
    assert load_manifest(root) == manifest
    _check(manifest, Scan(root, "claude-code"))
    # Everything the brief asks for shows up at least once.
    assert set(manifest.malformed_lines) == {"malformed_json", "not_an_object", "invalid_utf8",
                                             "missing_session_id", "unknown_entry_type"}
    assert manifest.nul_byte_lines > 0 and manifest.short_prompts > 0 and manifest.correction_prompts > 0
    assert set(manifest.tool_calls_by_name) >= {"Bash", "Read", "Edit", "Write", "Grep", "Glob",
                                                "TodoWrite", "Task", "WebFetch"}
    assert {"edit", "retry"} <= set(manifest.branches) and manifest.compactions > 0
    assert manifest.continuations and manifest.copies
    assert manifest.empty_thinking_blocks > 0 and manifest.loops > 0 and manifest.interrupts > 0
    assert {"pytest:pass", "pytest:fail"} <= set(manifest.test_runs) or len(manifest.test_runs) >= 4
    assert {"command_not_found", "file_not_found", "permission_denied", "syntax_error",
            "connection_error"} <= set(manifest.tool_errors_by_kind)
    assert len(manifest.secrets_by_kind) >= 12


def test_codex_manifest_matches_rescan(codex: tuple[Path, SynthManifest]) -> None:
    root, manifest = codex
    _check(manifest, Scan(root, "codex"))
    assert set(manifest.malformed_lines) == {"malformed_json", "not_an_object", "invalid_utf8", "unknown_entry_type"}
    assert manifest.continuations and manifest.compactions > 0 and manifest.branches.get("rollback", 0) > 0
    assert {"exec_command", "apply_patch", "update_plan"} <= set(manifest.tool_calls_by_name)


def test_claude_layout_and_record_shapes(claude: tuple[Path, SynthManifest]) -> None:
    root, manifest = claude
    for meta_path in root.glob("*/*/subagents/agent-*.meta.json"):
        agent_id = meta_path.name.removeprefix("agent-").removesuffix(".meta.json")
        session_id = meta_path.parent.parent.name
        parent = (meta_path.parent.parent.parent / f"{session_id}.jsonl").read_text(errors="replace")
        assert json.loads(meta_path.read_bytes())["toolUseId"] in parent
        assert f'"agentId":"{agent_id}"' in parent
        for line in meta_path.with_suffix("").with_suffix(".jsonl").read_text().splitlines():
            rec = json.loads(line)
            assert rec["isSidechain"] is True and rec["agentId"] == agent_id and rec["sessionId"] == session_id
    for cont in manifest.continuations:
        new, old = (root / cont.file).read_bytes(), (root / cont.original_file).read_bytes()
        assert _split(new)[: cont.copied_lines] == _split(old)[: cont.copied_lines]
    for copy in manifest.copies:
        old = (root / copy.original_file).read_bytes().replace(copy.original_session_id.encode(), copy.session_id.encode())
        assert (root / copy.file).read_bytes() == old
    paths = [p.relative_to(root).parts for p in root.glob("*/*.jsonl")]
    assert all(re.fullmatch(r"-home-[a-z]+-src-[a-z-]+", d) for d, _ in paths)


def test_oversized_line(tmp_path: Path) -> None:
    manifest = synthesize(tmp_path, 2, 3, "codex", malformed_rate=0.0, oversized_lines=1)
    assert manifest.malformed_lines == {"oversized_line": 1}
    _check(manifest, Scan(tmp_path, "codex"))


def test_cli(tmp_path: Path) -> None:
    app = typer.Typer()

    @app.callback()
    def _root() -> None:
        """Local group so `synth` stays a subcommand."""

    register(app)
    runner = CliRunner()
    out = tmp_path / "corpus"
    result = runner.invoke(app, ["synth", "--sessions", "4", "--seed", "2", "--out", str(out), "--format", "codex"])
    assert result.exit_code == 0, result.output
    assert load_manifest(out).session_files == 4
    assert "4 sessions" in result.output
    bad = runner.invoke(app, ["synth", "--sessions", "1", "--out", str(out), "--format", "cursor"])
    assert bad.exit_code != 0
    by_size = runner.invoke(app, ["synth", "--target-mb", "0.5", "--seed", "2", "--out", str(tmp_path / "mb")])
    assert by_size.exit_code == 0, by_size.output
    assert load_manifest(tmp_path / "mb").bytes >= 500_000
