"""export-preference: DPO pairs and KTO labels from tasks that share their prompt context.

Two tasks share context when they are branch siblings (an edited or retried prompt under
the same parent message) or carry the same normalised prompt in the same project (cwd).
The chosen side's category must be strictly better: accepted x rejected first, accepted x
partially_accepted as the fallback. Records are tasks and candidate pairs: each task is
used (in a pair or a KTO row), set aside or filtered; each candidate pair is emitted,
set aside (invalid pairing) or filtered (per-task cap), so the receipt conserves counts.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from itertools import combinations
from typing import Any

import polars as pl
from pydantic import BaseModel, ConfigDict, Field

from pipeline.core.stage import ExportContext, Stage, StageContext, StageResult
from pipeline.export.common import (
    CATEGORY_RANK,
    SCORER_VERSION,
    Quarantine,
    dumps,
    loads,
    row_id,
    to_table,
)
from pipeline.export.conversation import Conversation, conversation_text
from pipeline.export.dedupe import DedupeConfig, Deduper
from pipeline.export.firewall import TEMPLATE_TOKENS, ViolationScan, read_jsonl, screen, write_jsonl
from pipeline.export.inputs import EXPORT_INPUTS, ExportInputs, load_inputs, split_known
from schemas.datasets import KTO, PREFERENCE

# (chosen, rejected) category pairs in priority order.
PAIRINGS = (("accepted", "rejected"), ("accepted", "partially_accepted"))
_PUNCT = re.compile(r"[^\w\s]+")
_WS = re.compile(r"\s+")


class ExportPreferenceConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_pairs_per_task: int = Field(5, ge=1, description="Pairs any one task may appear in.")
    min_prompt_chars: int = Field(
        16, ge=0, description="Shorter normalised prompts ('ok', 'continue') never pair by text."
    )
    keep_thinking: bool = Field(True, description="Keep thinking as reasoning_content.")
    kto: bool = Field(True, description="Also write the unpaired KTO view (accepted/rejected).")
    dedupe: DedupeConfig = Field(default_factory=DedupeConfig)


def normalise_prompt(text: str) -> str:
    return _WS.sub(" ", _PUNCT.sub(" ", text.lower())).strip()


def pair_groups(inputs: ExportInputs, usable: set[str], min_chars: int) -> list[tuple[str, list[str]]]:
    """(pair_source, task_ids) groups of tasks that share their prompt context."""
    tasks = inputs.attached.tasks.filter(pl.col("task_id").is_in(list(usable)))
    groups: list[tuple[str, list[str]]] = []
    if inputs.branches is not None and inputs.branches.height:
        by_prompt = tasks.select("session_id", pl.col("prompt_message_id").alias("child_message_id"), "task_id")
        sib = inputs.branches.join(by_prompt, on=["session_id", "child_message_id"], how="inner")
        for _, part in sorted(sib.group_by("session_id", "parent_message_id"), key=lambda g: str(g[0])):
            ids = sorted(set(part["task_id"].to_list()))
            if len(ids) > 1:
                groups.append(("branch_sibling", ids))
    by_text: dict[tuple[str, str], list[str]] = defaultdict(list)
    for task_id, text, cwd in tasks.select("task_id", "prompt_text", "cwd").iter_rows():
        norm = normalise_prompt(text)
        if cwd and len(norm) >= min_chars:
            by_text[(cwd, norm)].append(task_id)
    groups += [("same_prompt", sorted(ids)) for _, ids in sorted(by_text.items()) if len(ids) > 1]
    return groups


def candidate_pairs(groups: list[tuple[str, list[str]]], category: dict[str, str]) -> list[tuple[str, str, str]]:
    """(chosen, rejected, source), best first, each unordered pair once."""
    seen: set[frozenset[str]] = set()
    ranked = []
    for source_rank, (source, ids) in enumerate(sorted(groups, key=lambda g: g[0])):
        for a, b in combinations(ids, 2):
            if CATEGORY_RANK[category[a]] < CATEGORY_RANK[category[b]]:
                a, b = b, a
            key = frozenset((a, b))
            if key in seen or (category[a], category[b]) not in PAIRINGS:
                continue
            seen.add(key)
            priority = PAIRINGS.index((category[a], category[b]))
            ranked.append((priority, source_rank, a, b, source))
    ranked.sort()
    return [(a, b, source) for _, _, a, b, source in ranked]


def run(ctx: StageContext) -> StageResult:
    config: ExportPreferenceConfig = ctx.config  # type: ignore[assignment]
    quarantine = Quarantine("export-preference")
    filtered: Counter[str] = Counter()
    inputs = load_inputs(ctx)
    scored = inputs.scores.select("task_id", "session_id", "category")
    category = dict(zip(scored["task_id"].to_list(), scored["category"].to_list(), strict=True))
    candidates = split_known(inputs, scored["task_id"].to_list(), quarantine)
    convs = inputs.conversations(set(candidates), config.keep_thinking)
    order = inputs.attached.tasks.filter(pl.col("task_id").is_in(candidates)).sort("session_id", "prompt_number")
    checked: list[Conversation] = []
    for task_id in order["task_id"].to_list():
        conv = convs[task_id]
        if conv.n_assistant_turns == 0:
            quarantine.add("empty_content", task_id, conv.session_id, "no assistant turn")
        elif conv.copied_context:
            quarantine.add("copied_context", task_id, conv.session_id, None)
        else:
            checked.append(conv)
    usable = screen(checked, quarantine, list(TEMPLATE_TOKENS))
    dd = Deduper.from_config(config.dedupe).run([(c.task_id, conversation_text(c.messages)) for c in usable])
    filtered["exact_duplicate"] += len(dd.exact)
    filtered["near_duplicate"] += len(dd.near)
    kept = {c.task_id: c for c in usable if c.task_id in set(dd.kept)}
    pairs_out, used = _pairs(inputs, kept, category, config, quarantine, filtered)
    kto_rows = []
    if config.kto:
        for conv in kept.values():
            if category[conv.task_id] in ("accepted", "rejected"):
                used.add(conv.task_id)
                kto_rows.append(_kto_row(inputs, conv, category[conv.task_id]))
    filtered["no_pair_or_label"] += sum(1 for t in kept if t not in used)
    n_candidates = len(pairs_out) + sum(v for k, v in filtered.items() if k == "pair_cap") + sum(
        v for k, v in quarantine.counts.items() if k in ("invalid_preference_pairing", "self_pairing")
    )
    return StageResult(
        tables={"preference": to_table(PREFERENCE, pairs_out), "kto": to_table(KTO, kto_rows),
                "quarantine": quarantine.table()},
        records_in=scored.height + n_candidates,
        records_out=len(used) + len(pairs_out),
        quarantined=dict(quarantine.counts),
        filtered={k: v for k, v in filtered.items() if v},
        stats={
            "tasks": scored.height,
            "candidate_pairs": n_candidates,
            "pairs": len(pairs_out),
            "pair_sources": dict(sorted(Counter(p["pair_source"] for p in pairs_out).items())),
            "kto_rows": len(kto_rows),
            "kto_labels": dict(Counter("desirable" if r["label"] else "undesirable" for r in kto_rows)),
        },
    )


def _pairs(inputs: ExportInputs, kept: dict[str, Conversation], category: dict[str, str],
           config: ExportPreferenceConfig, quarantine: Quarantine,
           filtered: Counter[str]) -> tuple[list[dict[str, Any]], set[str]]:
    groups = pair_groups(inputs, set(kept), config.min_prompt_chars)
    per_task: Counter[str] = Counter()
    rows: list[dict[str, Any]] = []
    used: set[str] = set()
    for chosen_id, rejected_id, source in candidate_pairs(groups, category):
        pair_id = row_id(chosen_id, rejected_id)
        chosen, rejected = kept[chosen_id], kept[rejected_id]
        chosen_json, rejected_json = dumps(chosen.completion_messages()), dumps(rejected.completion_messages())
        if chosen_id == rejected_id:
            quarantine.add("self_pairing", pair_id, chosen.session_id, chosen_id)
            continue
        if chosen_json == rejected_json or not chosen.completion_messages() or not rejected.completion_messages():
            quarantine.add("invalid_preference_pairing", pair_id, chosen.session_id,
                           "identical or empty completions")
            continue
        if per_task[chosen_id] >= config.max_pairs_per_task or per_task[rejected_id] >= config.max_pairs_per_task:
            filtered["pair_cap"] += 1
            continue
        per_task[chosen_id] += 1
        per_task[rejected_id] += 1
        used |= {chosen_id, rejected_id}
        names = chosen.tool_names + rejected.tool_names
        rows.append({
            "pair_id": pair_id,
            "prompt": dumps(chosen.prompt_messages()),
            "chosen": chosen_json,
            "rejected": rejected_json,
            "tools": dumps(inputs.tools_for(chosen.source_kind, names)),
            "chosen_task_id": chosen_id,
            "rejected_task_id": rejected_id,
            "chosen_category": category[chosen_id],
            "rejected_category": category[rejected_id],
            "pair_source": source,
            "scorer_version": SCORER_VERSION,
        })
    return rows, used


def _kto_row(inputs: ExportInputs, conv: Conversation, category: str) -> dict[str, Any]:
    return {
        "row_id": row_id(conv.task_id, "kto"),
        "task_id": conv.task_id,
        "session_id": conv.session_id,
        "category": category,
        "label": category == "accepted",
        "prompt": dumps(conv.prompt_messages()),
        "completion": dumps(conv.completion_messages()),
        "tools": dumps(inputs.tools_for(conv.source_kind, conv.tool_names)),
        "scorer_version": SCORER_VERSION,
    }


# --- exports and firewall ---------------------------------------------------------------

_JSON_FIELDS = {"preference": ("prompt", "chosen", "rejected", "tools"),
                "kto": ("prompt", "completion", "tools")}


def materialize(ctx: ExportContext) -> None:
    for name, fields in _JSON_FIELDS.items():
        rows = [{**r, **{f: loads(r[f]) for f in fields}} for r in ctx.table(name).to_pylist()]
        write_jsonl(ctx.export_dir / "preference" / f"{name}.jsonl", rows)


def _as_json(value: Any) -> Any:
    return loads(value) if isinstance(value, str) else value


def validate(ctx: ExportContext) -> list[str]:
    config: ExportPreferenceConfig = ctx.config  # type: ignore[assignment]
    errors: list[str] = []
    scan = ViolationScan()
    for name, fields in _JSON_FIELDS.items():
        table_rows = ctx.table(name).to_pylist()
        path = ctx.export_dir / "preference" / f"{name}.jsonl"
        sources = {f"table {name}": table_rows}
        if path.exists():
            sources[path.name] = read_jsonl(path)
            if len(sources[path.name]) != len(table_rows):
                errors.append(f"{path.name} holds {len(sources[path.name])} rows, the table {len(table_rows)}")
        else:
            errors.append(f"missing export file {path}")
        key_field = "pair_id" if name == "preference" else "row_id"
        ids = {r[key_field] for r in table_rows}
        for where, rows in sources.items():
            per_task: Counter[str] = Counter()
            seen: set[str] = set()
            for r in rows:
                key = str(r.get(key_field) or "?")
                # Table rows are scanned as their JSON text; file rows as parsed objects.
                values = {f: r.get(f) for f in fields}
                if key in seen:
                    errors.append(f"{where}: {key}: duplicate id")
                seen.add(key)
                if key not in ids:
                    errors.append(f"{where}: {key}: row not in the {name} table")
                scan.add(where, key, values)
                if name == "preference":
                    errors += _check_pair(where, key, r, values)
                    per_task.update([str(r.get("chosen_task_id")), str(r.get("rejected_task_id"))])
                elif bool(r.get("label")) != (r.get("category") == "accepted") or r.get("category") not in (
                    "accepted", "rejected"
                ):
                    errors.append(f"{where}: {key}: label {r.get('label')!r} for {r.get('category')!r}")
            errors += [f"{where}: task {t} in {n} pairs (max {config.max_pairs_per_task})"
                       for t, n in sorted(per_task.items()) if n > config.max_pairs_per_task]
    return errors + scan.errors()


def _check_pair(where: str, key: str, r: dict[str, Any], values: dict[str, Any]) -> list[str]:
    errors = []
    if not r.get("chosen_task_id") or not r.get("rejected_task_id"):
        errors.append(f"{where}: {key}: missing provenance")
    if r.get("chosen_task_id") == r.get("rejected_task_id"):
        errors.append(f"{where}: {key}: self-pair on task {r.get('chosen_task_id')}")
    if dumps(_as_json(values["chosen"])) == dumps(_as_json(values["rejected"])):
        errors.append(f"{where}: {key}: chosen and rejected are identical")
    chosen, rejected = r.get("chosen_category"), r.get("rejected_category")
    if (chosen, rejected) not in PAIRINGS:
        errors.append(f"{where}: {key}: pairing {chosen!r} over {rejected!r} is not allowed")
    return errors


STAGE = Stage(
    name="export-preference",
    version="1.0.0",
    config_model=ExportPreferenceConfig,
    inputs=EXPORT_INPUTS,
    outputs=(PREFERENCE, KTO),
    run=run,
    materialize=materialize,
    validate=validate,
)
