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
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

from pipeline.core.stage import ExportContext, Stage, StageContext, StageResult
from pipeline.export.common import (
    CATEGORY_RANK,
    SCORER_VERSION,
    Quarantine,
    dumps,
    frame,
    loads,
    output_table,
    row_id,
)
from pipeline.export.dedupe import DEFAULT_SIGNATURE, DedupeConfig
from pipeline.export.firewall import (
    TEMPLATE_TOKENS,
    FieldScan,
    file_matches,
    json_digest,
    read_jsonl,
    render_jsonl,
    screen_quarantine,
    write_bytes,
)
from pipeline.export.inputs import (
    COMPLETION,
    EXPORT_INPUTS,
    PROMPT,
    ExportInputs,
    dedupe_rows,
    known_clean_mask,
    load_inputs,
    run_conversations,
    select_candidates,
    transform_rows,
)
from schemas.datasets import KTO, PREFERENCE
from schemas.tables import TableSpec

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


def pair_groups(tasks: pl.DataFrame, branches: pl.DataFrame | None, usable: set[str],
                min_chars: int) -> list[tuple[str, list[str]]]:
    """(pair_source, task_ids) groups of tasks that share their prompt context."""
    tasks = tasks.filter(pl.col("task_id").is_in(sorted(usable)))
    groups: list[tuple[str, list[str]]] = []
    if branches is not None and branches.height:
        by_prompt = tasks.select("session_id", pl.col("prompt_message_id").alias("child_message_id"), "task_id")
        sib = branches.join(by_prompt, on=["session_id", "child_message_id"], how="inner")
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


_CONV_COLUMNS = ["source_kind", "prompt", "completion", "tool_names", "n_messages", "n_assistant_turns",
                 "has_thinking", "copied_context", "secret_kinds", "template_token", "text_digest", "minhash",
                 "json_digests"]


def run(ctx: StageContext) -> StageResult:
    config: ExportPreferenceConfig = ctx.config  # type: ignore[assignment]
    quarantine = Quarantine("export-preference")
    filtered: Counter[str] = Counter()
    inputs = load_inputs(ctx, _CONV_COLUMNS)
    candidates = select_candidates(inputs, None, quarantine)
    # The JSON halves stay in Arrow: output columns are gathered from them with `take`,
    # never copied through Python strings (they are most of the stage's bytes).
    halves = candidates.select("prompt", "completion").to_arrow()
    params_differ = config.dedupe.signature_params() != DEFAULT_SIGNATURE
    rows = candidates.drop("prompt", "completion").with_row_index("_i").to_dicts()
    rows, _ = transform_rows(rows, inputs, config.keep_thinking, set(), TEMPLATE_TOKENS,
                             rebuild_all=params_differ, halves=halves)
    halves = _rebuilt_halves(rows, halves)
    for row in rows:
        row["completion_digest"] = (json_digest(halves["completion"][row["_i"]].as_py()) if row["rebuilt"]
                                    else row["json_digests"][COMPLETION])
    checked = []
    for row in rows:
        if row["n_assistant_turns"] == 0:
            quarantine.add("empty_content", row["task_id"], row["session_id"], "no assistant turn")
        elif row["copied_context"]:
            quarantine.add("copied_context", row["task_id"], row["session_id"], None)
        else:
            checked.append(row)
    keep = screen_quarantine([(r["task_id"], r["session_id"]) for r in checked],
                             [r["secret_kinds"] for r in checked], [r["template_token"] for r in checked],
                             quarantine)
    usable = [r for r, ok in zip(checked, keep, strict=True) if ok]
    dd = dedupe_rows(usable, config.dedupe)
    filtered["exact_duplicate"] += len(dd.exact)
    filtered["near_duplicate"] += len(dd.near)
    kept_ids = set(dd.kept)
    kept = {r["task_id"]: r for r in usable if r["task_id"] in kept_ids}
    category = dict(zip(inputs.scores["task_id"].to_list(), inputs.scores["category"].to_list(), strict=True))
    tasks = frame(ctx, "tasks", columns=["task_id", "session_id", "prompt_message_id", "prompt_text", "cwd"])
    branches = frame(ctx, "branches") if "branches" in ctx.inputs else None
    groups = pair_groups(tasks, branches, set(kept), config.min_prompt_chars)
    pairs_out, used = _pairs(inputs, groups, kept, category, config, quarantine, filtered)
    kto_rows = []
    if config.kto:
        for row in kept.values():
            if category[row["task_id"]] in ("accepted", "rejected"):
                used.add(row["task_id"])
                kto_rows.append(_kto_row(inputs, row, category[row["task_id"]]))
    filtered["no_pair_or_label"] += sum(1 for t in kept if t not in used)
    n_candidates = len(pairs_out) + filtered["pair_cap"] + sum(
        v for k, v in quarantine.counts.items() if k in ("invalid_preference_pairing", "self_pairing")
    )
    pref_json = {"prompt": ("prompt", "_chosen_i"), "chosen": ("completion", "_chosen_i"),
                 "rejected": ("completion", "_rejected_i")}
    kto_json = {"prompt": ("prompt", "_i"), "completion": ("completion", "_i")}
    return StageResult(
        tables={"preference": _table(PREFERENCE, pairs_out, halves, pref_json),
                "kto": _table(KTO, kto_rows, halves, kto_json),
                "quarantine": quarantine.table()},
        records_in=inputs.scores.height + n_candidates,
        records_out=len(used) + len(pairs_out),
        quarantined=dict(quarantine.counts),
        filtered={k: v for k, v in filtered.items() if v},
        stats={
            "tasks": inputs.scores.height,
            "candidate_pairs": n_candidates,
            "pairs": len(pairs_out),
            "pair_sources": dict(sorted(Counter(p["pair_source"] for p in pairs_out).items())),
            "kto_rows": len(kto_rows),
            "kto_labels": dict(Counter("desirable" if r["label"] else "undesirable" for r in kto_rows)),
        },
    )


def _rebuilt_halves(rows: list[dict[str, Any]], halves: pa.Table) -> pa.Table:
    """Halves with the rebuilt rows' JSON in place of the stored one (rare: non-default
    thinking or dedupe settings)."""
    if not any(r["rebuilt"] for r in rows):
        return halves
    prompts, completions = halves["prompt"].to_pylist(), halves["completion"].to_pylist()
    for r in rows:
        if r["rebuilt"]:
            prompts[r["_i"]], completions[r["_i"]] = dumps(r["messages"][:1]), dumps(r["messages"][1:])
    return pa.table({"prompt": pa.array(prompts, pa.large_string()),
                     "completion": pa.array(completions, pa.large_string())})


def _table(spec: TableSpec, rows: list[dict[str, Any]], halves: pa.Table,
           json_columns: dict[str, tuple[str, str]]) -> pa.Table:
    """Scalar columns from the rows; JSON columns gathered from the halves by row index."""
    arrays = []
    for f in spec.schema:
        if f.name in json_columns:
            source, index = json_columns[f.name]
            taken = halves[source].take(pa.array([r[index] for r in rows], pa.int64()))
            arrays.append(taken.cast(f.type).combine_chunks())
        else:
            arrays.append(pa.array([r[f.name] for r in rows], type=f.type))
    return pa.Table.from_arrays(arrays, schema=spec.schema)


def _pairs(inputs: ExportInputs, groups: list[tuple[str, list[str]]], kept: dict[str, dict[str, Any]],
           category: dict[str, str], config: ExportPreferenceConfig, quarantine: Quarantine,
           filtered: Counter[str]) -> tuple[list[dict[str, Any]], set[str]]:
    per_task: Counter[str] = Counter()
    rows: list[dict[str, Any]] = []
    used: set[str] = set()
    for chosen_id, rejected_id, source in candidate_pairs(groups, category):
        chosen, rejected = kept[chosen_id], kept[rejected_id]
        if chosen_id == rejected_id:
            quarantine.add("self_pairing", row_id(chosen_id, rejected_id), chosen["session_id"], chosen_id)
            continue
        if (chosen["completion_digest"] == rejected["completion_digest"]
                or chosen["n_messages"] <= 1 or rejected["n_messages"] <= 1):
            quarantine.add("invalid_preference_pairing", row_id(chosen_id, rejected_id), chosen["session_id"],
                           "identical or empty completions")
            continue
        if per_task[chosen_id] >= config.max_pairs_per_task or per_task[rejected_id] >= config.max_pairs_per_task:
            filtered["pair_cap"] += 1
            continue
        per_task[chosen_id] += 1
        per_task[rejected_id] += 1
        used |= {chosen_id, rejected_id}
        rows.append({
            "pair_id": row_id(chosen_id, rejected_id),
            "_chosen_i": chosen["_i"],
            "_rejected_i": rejected["_i"],
            "tools": inputs.tools_json(chosen["source_kind"], chosen["tool_names"] + rejected["tool_names"]),
            "chosen_task_id": chosen_id,
            "rejected_task_id": rejected_id,
            "chosen_category": category[chosen_id],
            "rejected_category": category[rejected_id],
            "pair_source": source,
            "scorer_version": SCORER_VERSION,
        })
    return rows, used


def _kto_row(inputs: ExportInputs, row: dict[str, Any], category: str) -> dict[str, Any]:
    return {
        "row_id": row_id(row["task_id"], "kto"),
        "_i": row["_i"],
        "task_id": row["task_id"],
        "session_id": row["session_id"],
        "category": category,
        "label": category == "accepted",
        "tools": inputs.tools_json(row["source_kind"], row["tool_names"]),
        "scorer_version": SCORER_VERSION,
    }


# --- exports and firewall ---------------------------------------------------------------

_JSON_FIELDS = {"preference": ("prompt", "chosen", "rejected", "tools"),
                "kto": ("prompt", "completion", "tools")}


def materialize(ctx: ExportContext) -> None:
    for name, fields in _JSON_FIELDS.items():
        path = ctx.export_dir / "preference" / f"{name}.jsonl"
        write_bytes(path, render_jsonl(output_table(ctx, name), fields))


def _as_json(value: Any) -> Any:
    return loads(value) if isinstance(value, str) else value


def _check_rows(name: str, where: str, rows: list[dict[str, Any]], ids: set[str],
                config: ExportPreferenceConfig, scan: FieldScan,
                known: dict[str, list[bool]] | None = None) -> list[str]:
    """Row checks for one source; ``known[field]`` marks values byte-identical to the
    conversation score built (and scanned clean) for the row's task: not rescanned."""
    errors: list[str] = []
    fields = _JSON_FIELDS[name]
    key_field = "pair_id" if name == "preference" else "row_id"
    per_task: Counter[str] = Counter()
    seen: set[str] = set()
    known = known or {}
    for i, r in enumerate(rows):
        key = str(r.get(key_field) or "?")
        if key in seen:
            errors.append(f"{where}: {key}: duplicate id")
        seen.add(key)
        if key not in ids:
            errors.append(f"{where}: {key}: row not in the {name} table")
        for f in fields:
            if not (f in known and known[f][i]):
                scan.add(where, key, f, r.get(f))
        if name == "preference":
            errors += _check_pair(where, key, r)
            per_task.update([str(r.get("chosen_task_id")), str(r.get("rejected_task_id"))])
        elif bool(r.get("label")) != (r.get("category") == "accepted") or r.get("category") not in (
            "accepted", "rejected"
        ):
            errors.append(f"{where}: {key}: label {r.get('label')!r} for {r.get('category')!r}")
    errors += [f"{where}: task {t} in {n} pairs (max {config.max_pairs_per_task})"
               for t, n in sorted(per_task.items()) if n > config.max_pairs_per_task]
    return errors


def validate(ctx: ExportContext) -> list[str]:
    config: ExportPreferenceConfig = ctx.config  # type: ignore[assignment]
    errors: list[str] = []
    scan = FieldScan()
    conv = run_conversations(ctx)
    for name, fields in _JSON_FIELDS.items():
        table = output_table(ctx, name)
        table_rows = table.to_pylist()
        key_field = "pair_id" if name == "preference" else "row_id"
        ids = {r[key_field] for r in table_rows}
        errors += _check_rows(name, f"table {name}", table_rows, ids, config, scan,
                              _known(name, table, conv))
        path = ctx.export_dir / "preference" / f"{name}.jsonl"
        if not path.exists():
            errors.append(f"missing export file {path}")
        elif not file_matches(path, render_jsonl(table, fields)):
            rows = read_jsonl(path)
            if len(rows) != len(table_rows):
                errors.append(f"{path.name} holds {len(rows)} rows, the table {len(table_rows)}")
            errors += _check_rows(name, path.name, rows, ids, config, scan)
    return errors + scan.errors()


def _known(name: str, table: pa.Table, conv: dict[str, list[str]] | None) -> dict[str, list[bool]]:
    if name == "preference":
        return {"prompt": known_clean_mask(table, conv, "prompt", "chosen_task_id", PROMPT),
                "chosen": known_clean_mask(table, conv, "chosen", "chosen_task_id", COMPLETION),
                "rejected": known_clean_mask(table, conv, "rejected", "rejected_task_id", COMPLETION)}
    return {"prompt": known_clean_mask(table, conv, "prompt", "task_id", PROMPT),
            "completion": known_clean_mask(table, conv, "completion", "task_id", COMPLETION)}


def _check_pair(where: str, key: str, r: dict[str, Any]) -> list[str]:
    errors = []
    if not r.get("chosen_task_id") or not r.get("rejected_task_id"):
        errors.append(f"{where}: {key}: missing provenance")
    if r.get("chosen_task_id") == r.get("rejected_task_id"):
        errors.append(f"{where}: {key}: self-pair on task {r.get('chosen_task_id')}")
    chosen, rejected = r.get("chosen"), r.get("rejected")
    same = chosen == rejected if isinstance(chosen, str) and isinstance(rejected, str) else (
        dumps(_as_json(chosen)) == dumps(_as_json(rejected)))
    if same:
        errors.append(f"{where}: {key}: chosen and rejected are identical")
    pairing = (r.get("chosen_category"), r.get("rejected_category"))
    if pairing not in PAIRINGS:
        errors.append(f"{where}: {key}: pairing {pairing[0]!r} over {pairing[1]!r} is not allowed")
    return errors


STAGE = Stage(
    name="export-preference",
    version="1.1.0",
    config_model=ExportPreferenceConfig,
    inputs=EXPORT_INPUTS,
    outputs=(PREFERENCE, KTO),
    run=run,
    materialize=materialize,
    validate=validate,
)
