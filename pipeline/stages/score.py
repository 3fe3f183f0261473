"""score: one deterministic verdict per task, from markers in the trace and optional outcomes.

The rules are an ordered table (docs/SCORING.md); the first that fires decides. Nothing is
accepted without positive evidence: a passing outcome, or a final text answer with no
unrecovered error. Ambiguous tasks go to needs_human_review rather than being guessed.
"""

from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from typing import TYPE_CHECKING, Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from pipeline.core.imports import LazyModule
from pipeline.core.sources import UNREADABLE_FILE, SourceFile, read_source
from pipeline.core.stage import Stage, StageContext, StageResult
from pipeline.export.common import SCORER_VERSION, Quarantine, frame, to_table
from pipeline.export.conversation import CallFacts
from pipeline.export.markers import (
    DEFAULT_CORRECTION_PATTERNS,
    INTERRUPT_MARKERS,
    compile_patterns,
    test_summary,
)
from pipeline.export.prepare import (
    conversations_on_pool,
    conversations_table,
    required_of,
    tool_specs_table,
)
from pipeline.export.tasks import assemble
from pipeline.export.tools import (
    SHELL_TOOLS,
    derive_schemas,
    parse_all,
)
from pipeline.secrets import scanner_versions
from schemas.datasets import CATEGORIES, SCORING_TABLES

if TYPE_CHECKING:
    import polars as pl
else:
    pl = LazyModule("polars")

# The stage's output version (tables and their contents); SCORER_VERSION is the rules'.
STAGE_VERSION = "1.2.0"

# Rule order is fixed; only each rule's category (or None = off) is configurable.
RULE_ORDER = (
    "outcome_fail",
    "outcome_partial",
    "outcome_pass",
    "interrupted",
    "loop",
    "tests_failed",
    "unrecovered_error",
    "no_final_answer",
    "user_correction",
    "arg_defects",
    "final_answer",
)
DEFAULT_RULES: dict[str, str | None] = {
    "outcome_fail": "rejected",
    "outcome_partial": "partially_accepted",
    "outcome_pass": "accepted",
    "interrupted": "rejected",
    "loop": "rejected",
    "tests_failed": "rejected",
    "unrecovered_error": "rejected",
    "no_final_answer": "needs_human_review",
    "user_correction": "partially_accepted",
    "arg_defects": "partially_accepted",
    "final_answer": "accepted",
}
# The only rules that carry positive evidence, hence the only ones that may accept.
POSITIVE_RULES = frozenset({"outcome_pass", "final_answer"})
FALLBACK_CATEGORY = "needs_human_review"


class ScoreConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rules: dict[str, str | None] = Field(
        default_factory=lambda: dict(DEFAULT_RULES),
        description="Category per rule (docs/SCORING.md); null turns a rule off. Order is fixed.",
    )
    loop_threshold: int = Field(3, ge=2, description="Identical consecutive calls that make a loop.")
    repeated_line_threshold: int = Field(
        3, ge=1, description="A line repeated more than this inside one argument is a defect."
    )
    correction_patterns: list[str] = Field(
        default_factory=lambda: list(DEFAULT_CORRECTION_PATTERNS),
        description="Regexes (case-insensitive) that mark the next prompt as pushback.",
    )
    pass_verdicts: list[str] = Field(
        default_factory=lambda: ["pass", "passed", "accepted", "accept", "success", "merged", "good"],
        description="Outcome verdicts read as a pass.",
    )
    fail_verdicts: list[str] = Field(
        default_factory=lambda: ["fail", "failed", "rejected", "reject", "failure", "reverted", "bad"],
        description="Outcome verdicts read as a failure.",
    )
    partial_verdicts: list[str] = Field(
        default_factory=lambda: ["partial", "partially_accepted", "mixed"],
        description="Outcome verdicts read as a partial success.",
    )

    @field_validator("rules")
    @classmethod
    def _check_rules(cls, rules: dict[str, str | None]) -> dict[str, str | None]:
        unknown = set(rules) - set(RULE_ORDER)
        if unknown:
            raise ValueError(f"unknown score rules {sorted(unknown)}; known: {list(RULE_ORDER)}")
        merged = {**DEFAULT_RULES, **rules}
        for name, category in merged.items():
            if category is not None and category not in CATEGORIES:
                raise ValueError(f"rule {name}: category {category!r} not in {CATEGORIES}")
            if category == "accepted" and name not in POSITIVE_RULES:
                raise ValueError(f"rule {name} carries no positive evidence and cannot accept")
        return merged

    @model_validator(mode="after")
    def _check_patterns(self) -> ScoreConfig:
        compile_patterns(self.correction_patterns)
        return self


# --- outcomes ---------------------------------------------------------------------------


def _verdict(value: object, config: ScoreConfig) -> str | None:
    text = str(value).strip().lower() if value is not None else ""
    for label, words in (("pass", config.pass_verdicts), ("fail", config.fail_verdicts),
                         ("partial", config.partial_verdicts)):
        if text in words:
            return label
    return None


def read_outcomes(
    files: list[SourceFile], tasks: pl.DataFrame, config: ScoreConfig, quarantine: Quarantine,
    read: list[SourceFile] | None = None,
) -> tuple[dict[str, tuple[str, str | None]], Counter[str], int]:
    """task_id -> (verdict, note). Task-level rows beat session-level ones; latest wins.
    Each file is read once; ``read`` collects the files as read (their digests are of
    the bytes parsed, whatever the runner digested before)."""
    task_ids = set(tasks["task_id"].to_list())
    sessions: dict[str, list[str]] = {}
    for task_id, session_id in tasks.select("task_id", "session_id").iter_rows():
        sessions.setdefault(session_id, []).append(task_id)
    # (level, key) -> [(created_at, line order, verdict, note)]
    by_key: dict[tuple[int, str], list[tuple[str, int, str, str | None]]] = {}
    n_rows = 0
    filtered: Counter[str] = Counter()
    for file in sorted(files, key=lambda f: f.display_path):
        if file.set_aside is not None:  # unreadable or unnamed: one row for the file
            if read is not None:
                read.append(file)
            n_rows += 1
            quarantine.add(file.set_aside, None, None, "discovery could not read or name this file",
                           file.display_path, None)
            continue
        try:
            data, as_read = read_source(file)
        except OSError as error:  # unreadable since the runner digested it
            if read is not None:
                read.append(file)
            n_rows += 1
            quarantine.add(UNREADABLE_FILE, None, None, error.strerror or type(error).__name__,
                           file.display_path, None)
            continue
        if read is not None:
            read.append(as_read)
        for line_no, line in enumerate(data.splitlines(), start=1):
            if not line.strip():
                continue
            n_rows += 1

            def bad(reason: str, detail: str, record: str | None = None, ln: int = line_no,
                    where: str = file.display_path) -> None:
                quarantine.add(reason, record, None, detail, where, ln)

            try:
                row = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                bad("schema_violation", f"invalid JSON: {exc}")
                continue
            if not isinstance(row, dict):
                bad("schema_violation", "outcome row is not an object")
                continue
            task_id, session_id = row.get("task_id"), row.get("session_id")
            record = str(task_id or session_id) if (task_id or session_id) else None
            if not task_id and not session_id:
                bad("missing_provenance", "neither task_id nor session_id")
                continue
            if not row.get("created_at"):
                bad("missing_created_at", "created_at is required, never guessed", record)
                continue
            verdict = _verdict(row.get("verdict"), config)
            if verdict is None:
                bad("schema_violation", f"unknown verdict {row.get('verdict')!r}", record)
                continue
            if task_id and task_id not in task_ids or (not task_id and session_id not in sessions):
                bad("unmatched_outcome", "no such task or session in the lake", record)
                continue
            key = (0, str(task_id)) if task_id else (1, str(session_id))
            note = row.get("note")
            by_key.setdefault(key, []).append(
                (str(row["created_at"]), n_rows, verdict, None if note is None else str(note))
            )
    outcomes: dict[str, tuple[str, str | None]] = {}
    for (level, target), entries in sorted(by_key.items(), reverse=True):  # session level first
        entries.sort()
        filtered["outcome_superseded"] += len(entries) - 1
        _, _, verdict, note = entries[-1]
        targets = [target] if level == 0 else sessions[target]
        for task_id in targets:
            outcomes[task_id] = (verdict, note)  # task level, written last, wins
    return outcomes, filtered, n_rows


# --- markers ----------------------------------------------------------------------------


def call_markers(calls: pl.DataFrame, config: ScoreConfig, facts: CallFacts) -> pl.DataFrame:
    """Per-call flags that need parsed arguments or result text (one Python pass)."""
    empty = facts.missing
    repeated = [n > config.repeated_line_threshold for n in facts.repeated]
    passed, failed = [], []
    for name, result in zip(facts.name, calls["result_text"].to_list(), strict=True):
        summary = test_summary(result) if name in SHELL_TOOLS else None
        passed.append(summary[0] if summary else None)
        failed.append(summary[1] if summary else None)
    return calls.with_columns(
        pl.Series("empty_args", empty, pl.Boolean),
        pl.Series("repeated_lines", repeated, pl.Boolean),
        pl.Series("t_passed", passed, pl.Int64),
        pl.Series("t_failed", failed, pl.Int64),
    )


def task_markers(tasks: pl.DataFrame, messages: pl.DataFrame, calls: pl.DataFrame,
                 config: ScoreConfig) -> pl.DataFrame:
    calls = calls.filter(pl.col("task_id").is_not_null())
    interrupt_re = "|".join(_re_escape(m) for m in INTERRUPT_MARKERS)
    per_call = calls.group_by("task_id").agg(
        n_tool_calls=pl.len(),
        n_tool_errors=pl.col("is_error").fill_null(False).sum(),
        empty_args_calls=pl.col("empty_args").sum(),
        in_args_repetition=pl.col("repeated_lines").any(),
        call_interrupt=pl.col("result_text").fill_null("").str.contains(interrupt_re).any(),
    )
    main = calls.filter(pl.col("is_main"))
    last_result = (
        main.filter(pl.col("has_result"))
        .group_by("task_id", maintain_order=True)
        .agg(unrecovered_error=pl.col("is_error").fill_null(False).last())
    )
    keyed = main.with_columns(key=pl.col("name") + pl.lit("\x00") + pl.col("input_json"))
    keyed = keyed.with_columns(
        run=(pl.col("key") != pl.col("key").shift(1).over("task_id")).fill_null(True).cum_sum().over("task_id")
    )
    loops = (
        keyed.group_by("task_id", "run").agg(n=pl.len())
        .group_by("task_id").agg(loop=(pl.col("n") >= config.loop_threshold).any())
    )
    tests = (
        calls.filter(pl.col("t_passed").is_not_null())
        .group_by("task_id", maintain_order=True)
        .agg(tests_passed=pl.col("t_passed").last(), tests_failed=pl.col("t_failed").last())
    )
    call_msgs = calls.select("session_id", "message_id").unique().with_columns(has_calls=pl.lit(True))
    msgs = messages.filter(pl.col("task_id").is_not_null()).join(
        call_msgs, on=["session_id", "message_id"], how="left"
    ).with_columns(
        pl.col("has_calls").fill_null(False),
        has_text=(pl.col("text").fill_null("").str.strip_chars() != "")
        & ~pl.col("text").fill_null("").str.starts_with("API Error"),
    )
    final = (
        msgs.filter((pl.col("role") == "assistant") & (pl.col("has_text") | pl.col("has_calls")))
        .sort("session_id", "seq")
        .group_by("task_id", maintain_order=True)
        .agg(final_text_answer=(pl.col("has_text") & ~pl.col("has_calls")).last())
    )
    msg_interrupt = (
        msgs.filter(pl.col("seq") > pl.col("seq").min().over("task_id"))
        .group_by("task_id")
        .agg(msg_interrupt=pl.col("text").fill_null("").str.contains(interrupt_re).any())
    )
    out = tasks.select("task_id", "session_id", "prompt_number", "source_kind", "source_file")
    for part in (per_call, last_result, loops, tests, final, msg_interrupt):
        out = out.join(part, on="task_id", how="left")
    out = out.with_columns(
        pl.col("n_tool_calls", "n_tool_errors", "empty_args_calls").fill_null(0).cast(pl.Int64),
        pl.col("in_args_repetition", "unrecovered_error", "loop", "final_text_answer").fill_null(False),
        interrupted=pl.col("call_interrupt").fill_null(False) | pl.col("msg_interrupt").fill_null(False),
    ).drop("call_interrupt", "msg_interrupt")
    correction = compile_patterns(config.correction_patterns)
    ordered = tasks.sort("session_id", "prompt_number")
    next_text = ordered.with_columns(
        next_prompt=pl.col("prompt_text").shift(-1).over("session_id")
    ).select("task_id", "next_prompt")
    pushback = [bool(t) and correction.search(t) is not None for t in next_text["next_prompt"].to_list()]
    next_text = next_text.with_columns(pl.Series("pushback", pushback, pl.Boolean)).drop("next_prompt")
    out = out.join(next_text, on="task_id", how="left").with_columns(
        user_correction=pl.col("pushback").fill_null(False) | pl.col("interrupted")
    ).drop("pushback")
    return out.sort("session_id", "prompt_number")


def _re_escape(text: str) -> str:
    import re

    return re.escape(text)


# --- rules ------------------------------------------------------------------------------


def fired_rules(m: dict[str, Any]) -> list[str]:
    """Every rule whose condition holds for one task's markers, in rule order."""
    outcome = m.get("outcome")
    tests_failed = m.get("tests_failed")
    conditions = {
        "outcome_fail": outcome == "fail",
        "outcome_partial": outcome == "partial",
        "outcome_pass": outcome == "pass",
        "interrupted": bool(m["interrupted"]),
        "loop": bool(m["loop"]),
        "tests_failed": tests_failed is not None and tests_failed > 0,
        "unrecovered_error": bool(m["unrecovered_error"]),
        "no_final_answer": not m["final_text_answer"],
        "user_correction": bool(m["user_correction"]),
        "arg_defects": m["empty_args_calls"] > 0 or bool(m["in_args_repetition"]),
        "final_answer": bool(m["final_text_answer"]) and not m["unrecovered_error"],
    }
    return [name for name in RULE_ORDER if conditions[name]]


def decide(m: dict[str, Any], rules: dict[str, str | None]) -> tuple[str, str, list[str]]:
    """(category, deciding rule, reasons): the first enabled rule that fires decides."""
    fired = fired_rules(m)
    for name in fired:
        category = rules.get(name)
        if category is not None:
            return category, name, fired
    return FALLBACK_CATEGORY, "no_rule", fired


# --- stage ------------------------------------------------------------------------------

# Score never needs the raw content_json (most of the messages table's bytes).
MESSAGE_COLUMNS = ["session_id", "message_id", "parent_id", "seq", "role", "text", "thinking",
                   "is_sidechain", "is_compact_summary"]


def run(ctx: StageContext[ScoreConfig]) -> StageResult:
    config = ctx.config
    quarantine = Quarantine("score")
    sessions, messages = frame(ctx, "sessions"), frame(ctx, "messages", columns=MESSAGE_COLUMNS)
    prompts, tool_calls = frame(ctx, "prompts"), frame(ctx, "tool_calls")
    subagents = frame(ctx, "subagents")
    assembled = assemble(sessions, messages, prompts, tool_calls, subagents, quarantine)
    tasks = assembled.tasks
    n_prompts = quarantine.counts["missing_provenance"] + tasks.height
    kinds = sessions.select("session_id", "source_kind")
    calls = assembled.calls.join(kinds, on="session_id", how="left").with_columns(
        pl.col("source_kind").fill_null("unknown")
    )
    parsed = parse_all(calls["input_json"].to_list())
    kinds_list, names = calls["source_kind"].to_list(), calls["name"].to_list()
    schemas = derive_schemas(zip(kinds_list, names, parsed, strict=True))
    facts = CallFacts.of(kinds_list, names, parsed, required_of(schemas))
    branches = frame(ctx, "branches") if "branches" in ctx.inputs else None

    def markers_of() -> pl.DataFrame:
        return task_markers(tasks, assembled.messages, call_markers(calls, config, facts), config)

    # Markers and conversations are independent, and most of both (polars, numpy, RE2)
    # releases the GIL: with a second worker they run side by side.
    with ThreadPoolExecutor(max_workers=2) if ctx.workers > 1 else nullcontext() as pool:
        later = pool.submit(markers_of) if pool else None
        if ctx.pool is not None:  # an executor's pool: partitions of sessions as its units
            conversations = conversations_on_pool(ctx.pool, tasks, assembled.messages, calls, parsed, branches, facts)
        else:
            conversations = conversations_table(tasks, assembled.messages, calls, parsed, branches, facts, pool)
        markers = later.result() if later else markers_of()
    outcome_files = sorted(ctx.sources.get("outcomes", []), key=lambda f: f.display_path)
    outcomes_read: list[SourceFile] = []
    outcomes, filtered, n_outcome_rows = read_outcomes(outcome_files, tasks, config, quarantine, outcomes_read)
    # read_source hands back the very file it was given when its bytes are as digested.
    changed = any(a is not b for a, b in zip(outcome_files, outcomes_read, strict=True))
    rows = []
    for m in markers.iter_rows(named=True):
        verdict, note = outcomes.get(m["task_id"], (None, None))
        m["outcome"], m["outcome_note"] = verdict, note
        category, rule, reasons = decide(m, config.rules)
        rows.append({**m, "category": category, "rule": rule, "reasons": reasons,
                     "scorer_version": SCORER_VERSION})
    n_outcome_bad = sum(v for k, v in quarantine.counts.items() if k != "missing_provenance")
    n_outcome_used = n_outcome_rows - n_outcome_bad - sum(filtered.values())
    by_category = Counter(r["category"] for r in rows)
    return StageResult(
        sources_read={"outcomes": outcomes_read} if changed else None,
        tables={
            "tasks": tasks.to_arrow(),
            "scores": to_table(SCORING_TABLES["scores"], rows),
            "conversations": conversations,
            "tool_specs": tool_specs_table(schemas),
            "quarantine": quarantine.table(),
        },
        records_in=n_prompts + n_outcome_rows,
        records_out=len(rows) + n_outcome_used,
        quarantined=dict(quarantine.counts),
        filtered=dict(filtered),
        stats={
            "tasks": len(rows),
            "outcome_rows": n_outcome_rows,
            "outcomes_applied": n_outcome_used,
            "categories": {c: by_category.get(c, 0) for c in CATEGORIES},
            "rules": dict(sorted(Counter(r["rule"] for r in rows).items())),
            "scorer_version": SCORER_VERSION,
        },
    )


STAGE = Stage(
    name="score",
    version=STAGE_VERSION,
    engines=scanner_versions,
    config_model=ScoreConfig,
    inputs=("sessions", "messages", "tool_calls", "prompts", "subagents", "branches"),
    outputs=(SCORING_TABLES["tasks"], SCORING_TABLES["scores"], SCORING_TABLES["conversations"],
             SCORING_TABLES["tool_specs"]),
    run=run,
    source_kinds=("outcomes",),
)
