"""Hand-made collect tables and a runner over them.

A ``Corpus`` builds sessions message by message with the columns of schemas/records.py;
``run_pipeline`` runs the real score and export stages on it through the real Runner,
with a stand-in "collect" stage that returns those tables. Nothing is mocked: Parquet is
written, receipts are signed, exports are materialised and validated.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from pipeline.core.hashing import canonical_json, digest_json
from pipeline.core.runner import Runner, RunOptions, RunResult
from pipeline.core.sources import SourceSpec
from pipeline.core.stage import Stage, StageContext, StageResult
from pipeline.stages.export_preference import STAGE as EXPORT_PREFERENCE
from pipeline.stages.export_rag import STAGE as EXPORT_RAG
from pipeline.stages.export_sft import STAGE as EXPORT_SFT
from pipeline.stages.score import STAGE as SCORE
from schemas.records import COLLECT_TABLES, QUARANTINE
from schemas.tables import from_rows

EXPORT_STAGES = [SCORE, EXPORT_SFT, EXPORT_RAG, EXPORT_PREFERENCE]


@dataclass
class Call:
    name: str
    args: dict[str, Any]
    result: str | None = "ok"
    is_error: bool = False


@dataclass
class Session:
    corpus: Corpus
    session_id: str
    source_kind: str = "claude-code"
    cwd: str | None = "/work/project"
    is_subagent: bool = False
    parent_session_id: str | None = None
    messages: list[dict[str, Any]] = field(default_factory=list)
    prompts: list[dict[str, Any]] = field(default_factory=list)
    calls: list[dict[str, Any]] = field(default_factory=list)

    @property
    def source_file(self) -> str:
        return f"~/.claude/projects/p/{self.session_id}.jsonl"

    def _message(self, role: str, text: str | None, thinking: str | None = None,
                 parent: str | None = None, message_id: str | None = None, **flags: bool) -> str:
        seq = len(self.messages)
        message_id = message_id or f"{self.session_id}-m{seq}"
        if parent is None and self.messages:
            parent = self.messages[-1]["message_id"]
        self.messages.append({
            "session_id": self.session_id, "message_id": message_id, "parent_id": parent, "seq": seq,
            "role": role, "text": text, "thinking": thinking, "content_json": "[]",
            "timestamp": None, "is_sidechain": self.is_subagent, "is_meta": flags.get("is_meta", False),
            "is_compact_summary": flags.get("is_compact_summary", False), "model": None,
            "source_file": self.source_file, "line_no": seq + 1,
            "prompt_id": self.prompts[-1]["prompt_id"] if self.prompts else None,
        })
        return message_id

    def prompt(self, text: str, parent: str | None = None) -> str:
        number = len(self.prompts)
        self.prompts.append({"prompt_id": digest_json([self.session_id, number])})
        message_id = self._message("user", text, parent=parent)
        self.prompts.pop()
        self.prompts.append({
            "session_id": self.session_id, "prompt_id": digest_json([self.session_id, number]),
            "prompt_number": number, "text": text, "timestamp": None, "message_id": message_id,
            "source_file": self.source_file,
        })
        return message_id

    def user(self, text: str, **flags: bool) -> str:
        return self._message("user", text, **flags)

    def assistant(self, text: str = "", calls: Sequence[Call] = (), thinking: str | None = None) -> str:
        message_id = self._message("assistant", text, thinking)
        turn = self.messages[-1]["seq"]
        prompt_id = self.prompts[-1]["prompt_id"] if self.prompts and not self.is_subagent else None
        for i, call in enumerate(calls):
            tool_use_id = f"toolu_{self.session_id}_{turn}_{i}"
            self.calls.append({
                "session_id": self.session_id, "tool_use_id": tool_use_id, "message_id": message_id,
                "turn_index": turn, "turn_subindex": i, "name": call.name,
                "input_json": canonical_json(call.args).decode(), "input_truncated_bytes": 0,
                "has_result": call.result is not None,
                "is_error": call.is_error if call.result is not None else None,
                "result_text": call.result, "result_truncated_bytes": 0, "error_kind": None,
                "exit_code": None, "prompt_id": prompt_id, "is_sidechain": self.is_subagent,
                "timestamp": None, "source_file": self.source_file,
            })
        if calls:
            self._message("tool", None)
        return message_id

    def task(self, prompt: str, *turns: tuple[str, Sequence[Call]] | str) -> Session:
        """A prompt then turns: a string is a final text answer, a tuple a tool turn."""
        self.prompt(prompt)
        for turn in turns:
            if isinstance(turn, str):
                self.assistant(turn)
            else:
                self.assistant(turn[0], turn[1])
        return self


@dataclass
class Corpus:
    sessions: list[Session] = field(default_factory=list)
    branches: list[dict[str, Any]] = field(default_factory=list)
    subagents: list[dict[str, Any]] = field(default_factory=list)

    def session(self, session_id: str, **kwargs: Any) -> Session:
        session = Session(self, session_id, **kwargs)
        self.sessions.append(session)
        return session

    def subagent(self, parent: Session, spawn_tool_use_id: str, session_id: str) -> Session:
        child = self.session(session_id, is_subagent=True, parent_session_id=parent.session_id)
        self.subagents.append({
            "session_id": session_id, "parent_session_id": parent.session_id, "agent_id": session_id,
            "spawn_tool_use_id": spawn_tool_use_id, "link_method": "tool_result_agent_id",
            "source_file": child.source_file,
        })
        return child

    def branch(self, session: Session, parent: str, children: Iterable[str], kind: str = "edit") -> None:
        children = list(children)
        for rank, child in enumerate(children):
            self.branches.append({
                "session_id": session.session_id, "parent_message_id": parent,
                "child_message_id": child, "kind": kind, "child_rank": rank,
                "is_active": rank == len(children) - 1,
            })

    def tables(self) -> dict[str, Any]:
        rows: dict[str, list[dict[str, Any]]] = {name: [] for name in COLLECT_TABLES}
        for s in self.sessions:
            rows["sessions"].append({
                "session_id": s.session_id, "source_kind": s.source_kind, "source_file": s.source_file,
                "agent_version": None, "cwd": s.cwd, "git_branch": None, "model": None, "title": None,
                "started_at": None, "ended_at": None, "is_subagent": s.is_subagent,
                "parent_session_id": s.parent_session_id, "agent_id": None,
                "n_messages": len(s.messages), "n_tool_calls": len(s.calls), "n_prompts": len(s.prompts),
            })
            rows["messages"] += s.messages
            rows["prompts"] += s.prompts
            rows["tool_calls"] += s.calls
        rows["branches"] = self.branches
        rows["subagents"] = self.subagents
        return {name: _table(spec, rows[name]) for name, spec in COLLECT_TABLES.items()}


def _table(spec: Any, rows: list[dict[str, Any]]) -> Any:
    """Rows -> the spec's schema; columns the builder does not know are null/0."""
    names = spec.schema.names
    filled = []
    for i, row in enumerate(rows):
        full = {n: row.get(n) for n in names}
        if "line_no" in names and full["line_no"] is None:
            full["line_no"] = i + 1
        filled.append(full)
    return from_rows(spec, filled)


class _NoConfig(BaseModel):
    pass


def fake_collect(corpus: Corpus) -> Stage:
    """A collect stand-in returning the corpus' hand-made tables (keyed by their content)."""
    tables = corpus.tables()
    n = sum(t.num_rows for t in tables.values())

    def run(ctx: StageContext) -> StageResult:
        return StageResult(tables={**tables, "quarantine": QUARANTINE.schema.empty_table()},
                           records_in=n, records_out=n)

    version = digest_json({k: t.to_pylist() for k, t in tables.items()})
    return Stage(name="collect", version=version, config_model=_NoConfig, inputs=(),
                 outputs=tuple(COLLECT_TABLES.values()), run=run)


def run_pipeline(
    corpus: Corpus,
    root: Path,
    config: dict[str, dict[str, Any]] | None = None,
    stages: list[Stage] | None = None,
    outcomes: Path | None = None,
) -> RunResult:
    sources = [SourceSpec("outcomes", outcomes)] if outcomes else []
    runner = Runner([fake_collect(corpus), *(stages or EXPORT_STAGES)],
                    RunOptions(root=root, sources=sources, stage_config=config or {},
                               recorded_at="2026-01-01T00:00:00Z"))
    return runner.run()


def receipt(result: RunResult, stage: str) -> Any:
    outcome = next(o for o in result.outcomes if o.stage == stage)
    assert outcome.receipt is not None, outcome
    return outcome.receipt


def table(result: RunResult, root: Path, name: str) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    return pq.read_table(root / result.summary.tables[name].path).to_pylist()


def replace_stage(stage: Stage, **changes: Any) -> Stage:
    return dataclasses.replace(stage, **changes)


def good_task(session: Session, prompt: str, answer: str = "Done: the fix is in place.") -> Session:
    """An accepted-looking task: two tool turns and a final text answer."""
    return session.task(
        prompt,
        ("Looking.", [Call("Read", {"file_path": f"/work/project/{session.session_id}.py"}, "code")]),
        ("Editing.", [Call("Edit", {"file_path": f"/work/project/{session.session_id}.py",
                                    "old_string": "a", "new_string": "b"}, "ok")]),
        answer,
    )


def agent_corpus() -> Corpus:
    """Two accepted tasks with thinking, a failing one, and a multi-call search: what the
    render and collate tests feed a real chat template."""
    corpus = Corpus()
    prompt = "Add input validation to the signup form"
    for i, answer in enumerate(["Validation added with a regex check.",
                                "Added a schema validator and tests for the form."]):
        s = good_task(corpus.session(f"good{i}"), prompt, answer)
        s.messages[1]["thinking"] = f"I should read the form first ({i})."
    corpus.session("bad").task(
        prompt, ("", [Call("Bash", {"command": "npm test", "description": "run"}, "1 failed", True)]),
        "It is failing.",
    )
    corpus.session("multi").task(
        "Find every TODO in the repo and list them",
        ("", [Call("Grep", {"pattern": "TODO", "path": "."}, "a.py:1: TODO x"),
              Call("Glob", {"pattern": "**/*.md"}, "README.md")]),
        ("", [Call("Read", {"file_path": "a.py", "limit": 20}, "# TODO x")]),
        "Found one TODO in a.py.",
    )
    return corpus
