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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field

from pipeline.core.imports import LazyModule
from pipeline.core.stage import ExportContext, Stage, StageContext, StageResult
from pipeline.export.card import Config, Split, write_card
from pipeline.export.common import (
    SCORER_VERSION,
    Quarantine,
    dumps,
    frame,
    loads,
    row_id,
)
from pipeline.export.dedupe import DEFAULT_SIGNATURE, DedupeConfig
from pipeline.export.firewall import (
    TEMPLATE_TOKENS,
    FieldScan,
    StreamMatch,
    identity_errors,
    json_digest,
    read_jsonl,
    render_jsonl,
    screen_quarantine,
    table_batches,
    value_digests,
    write_stream,
)
from pipeline.export.inputs import (
    COMPLETION,
    EXPORT_INPUTS,
    PROMPT,
    ExportInputs,
    dedupe_rows,
    known_clean,
    load_inputs,
    run_conversations,
    select_candidates,
    transform_rows,
)
from pipeline.secrets import scanner_versions
from schemas.datasets import KTO, PREFERENCE
from schemas.tables import TableSpec

if TYPE_CHECKING:
    import polars as pl
else:
    pl = LazyModule("polars")

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


@dataclass
class PairPlan:
    """What the candidate pairs became, in emission order."""

    pairs: list[tuple[str, str, str]] = field(default_factory=list)  # (chosen, rejected, source)
    invalid: list[tuple[str, str]] = field(default_factory=list)  # identical or empty completions
    capped: int = 0  # candidates dropped by the per-task cap

    @property
    def candidates(self) -> int:
        return len(self.pairs) + len(self.invalid) + self.capped


def _claimed(ordered: list[tuple[str, list[str]]]) -> list[set[tuple[str, str]]]:
    """Per group, the unordered pairs (sorted tuples) an earlier group already holds: a pair
    is a candidate once, for the first group (in source order) it is in. Only tasks in
    several groups can form such pairs (branch siblings that also share their prompt)."""
    groups_of: dict[str, list[int]] = defaultdict(list)
    for gi, (_, ids) in enumerate(ordered):
        for task in ids:
            groups_of[task].append(gi)
    out: list[set[tuple[str, str]]] = [set() for _ in ordered]
    for gi, (_, ids) in enumerate(ordered):
        shared = [t for t in ids if groups_of[t][0] < gi]
        for a, b in combinations(shared, 2):
            if set(groups_of[a]) & set(groups_of[b]) & set(range(gi)):
                out[gi].add((a, b) if a < b else (b, a))
    return out


def plan_pairs(groups: list[tuple[str, list[str]]], category: dict[str, str], digest: dict[str, str],
               n_messages: dict[str, int], cap: int) -> PairPlan:
    """Every candidate pair's fate, without materialising the pairs the cap drops.

    Candidates are (chosen, rejected) in order of pairing priority, group (by source),
    chosen id, rejected id; each unordered pair once. A pair with identical or empty
    completions is invalid; otherwise it is emitted unless either task already has ``cap``
    pairs. Large same-prompt groups have many candidates and few survivors, so a chosen
    task walks only the rejected tasks still under the cap, stops at its own cap, and the
    pairs it skips are counted, not built.
    """
    plan = PairPlan()
    ordered = [(source, sorted(set(ids))) for source, ids in sorted(groups, key=lambda g: g[0])]
    claimed = _claimed(ordered)
    per_task: Counter[str] = Counter()
    for chosen_cat, rejected_cat in PAIRINGS:
        for gi, (source, ids) in enumerate(ordered):
            chosen = [t for t in ids if category[t] == chosen_cat]
            rejected = [t for t in ids if category[t] == rejected_cat]
            if chosen and rejected:
                _plan_group(plan, source, chosen, rejected, claimed[gi], digest, n_messages, cap, per_task)
    return plan


def _plan_group(plan: PairPlan, source: str, chosen: list[str], rejected: list[str],
                claimed: set[tuple[str, str]], digest: dict[str, str], n_messages: dict[str, int],
                cap: int, per_task: Counter[str]) -> None:
    empty = [b for b in rejected if n_messages[b] <= 1]
    by_digest: dict[str, list[str]] = defaultdict(list)
    for b in rejected:
        by_digest[digest[b]].append(b)
    open_ = [b for b in rejected if per_task[b] < cap]
    for a in chosen:
        bad = set(rejected) if n_messages[a] <= 1 else {*empty, *by_digest.get(digest[a], ())}
        skip = {b for b in rejected if (min(a, b), max(a, b)) in claimed} if claimed else set()
        invalid = [b for b in rejected if b in bad and b not in skip] if bad else []
        plan.invalid += [(a, b) for b in invalid]
        emitted = 0
        closed = False
        if per_task[a] < cap:
            for b in open_:
                if b in bad or b in skip or per_task[b] >= cap:
                    continue
                plan.pairs.append((a, b, source))
                emitted += 1
                per_task[a] += 1
                per_task[b] += 1
                closed = closed or per_task[b] >= cap
                if per_task[a] >= cap:
                    break
        if closed:
            open_ = [b for b in open_ if per_task[b] < cap]
        plan.capped += len(rejected) - len(skip) - len(invalid) - emitted


_CONV_COLUMNS = ["source_kind", "prompt", "completion", "tool_names", "n_messages", "n_assistant_turns",
                 "has_thinking", "copied_context", "secret_kinds", "template_token", "text_digest", "minhash",
                 "json_digests"]


def run(ctx: StageContext[ExportPreferenceConfig]) -> StageResult:
    config = ctx.config
    quarantine = Quarantine("export-preference")
    filtered: Counter[str] = Counter()
    inputs = load_inputs(ctx, _CONV_COLUMNS)
    candidates = select_candidates(inputs, None, quarantine)
    inputs.fetch(candidates["_c"].to_list())
    params_differ = config.dedupe.signature_params() != DEFAULT_SIGNATURE
    rows, _ = transform_rows(candidates.to_dicts(), inputs, config.keep_thinking, set(), TEMPLATE_TOKENS,
                             rebuild_all=params_differ)
    # The JSON halves stay in Arrow (``inputs.large``); output columns are
    # gathered from them with ``take``. Rebuilt rows (non-default settings) get theirs appended.
    extra = _assign_halves(rows, inputs)
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
    dd = dedupe_rows(usable, inputs, config.dedupe)
    filtered["exact_duplicate"] += len(dd.exact)
    filtered["near_duplicate"] += len(dd.near)
    kept_ids = set(dd.kept)
    kept = {r["task_id"]: r for r in usable if r["task_id"] in kept_ids}
    category = dict(zip(inputs.scores["task_id"].to_list(), inputs.scores["category"].to_list(), strict=True))
    tasks = frame(ctx, "tasks", columns=["task_id", "session_id", "prompt_message_id", "prompt_text", "cwd"])
    branches = frame(ctx, "branches") if "branches" in ctx.inputs else None
    groups = pair_groups(tasks, branches, set(kept), config.min_prompt_chars)
    plan = plan_pairs(groups, category, {t: r["completion_digest"] for t, r in kept.items()},
                      {t: r["n_messages"] for t, r in kept.items()}, config.max_pairs_per_task)
    for a, b in plan.invalid:
        quarantine.add("invalid_preference_pairing", row_id(a, b), kept[a]["session_id"],
                       "identical or empty completions")
    filtered["pair_cap"] += plan.capped
    pairs_out = [_pair_row(inputs, kept[a], kept[b], category, source) for a, b, source in plan.pairs]
    used = {t for a, b, _ in plan.pairs for t in (a, b)}
    kto_rows = []
    if config.kto:
        for row in kept.values():
            if category[row["task_id"]] in ("accepted", "rejected"):
                used.add(row["task_id"])
                kto_rows.append(_kto_row(inputs, row, category[row["task_id"]]))
    filtered["no_pair_or_label"] += sum(1 for t in kept if t not in used)
    # Rows in the tables' sort order, so the runner's canonical sort never moves the JSON.
    pairs_out.sort(key=lambda r: (r["chosen_task_id"], r["rejected_task_id"]))
    kto_rows.sort(key=lambda r: (r["session_id"], r["task_id"]))
    halves = _halves(inputs.large, extra)
    pref_json = {"prompt": ("prompt", "_chosen_h"), "chosen": ("completion", "_chosen_h"),
                 "rejected": ("completion", "_rejected_h")}
    kto_json = {"prompt": ("prompt", "_h"), "completion": ("completion", "_h")}
    return StageResult(
        tables={"preference": _table(PREFERENCE, pairs_out, halves, pref_json),
                "kto": _table(KTO, kto_rows, halves, kto_json),
                "quarantine": quarantine.table()},
        records_in=inputs.scores.height + plan.candidates,
        records_out=len(used) + len(pairs_out),
        quarantined=dict(quarantine.counts),
        filtered={k: v for k, v in filtered.items() if v},
        stats={
            "tasks": inputs.scores.height,
            "candidate_pairs": plan.candidates,
            "pairs": len(pairs_out),
            "pair_sources": dict(sorted(Counter(p["pair_source"] for p in pairs_out).items())),
            "kto_rows": len(kto_rows),
            "kto_labels": dict(Counter("desirable" if r["label"] else "undesirable" for r in kto_rows)),
        },
    )


def _assign_halves(rows: list[dict[str, Any]], inputs: ExportInputs) -> dict[str, list[str]]:
    """Sets every row's ``_h`` (its row in the halves: its fetched conversation, or for a
    rebuilt row, rare with non-default thinking or dedupe settings, its own JSON appended
    after the fetched ones) and ``completion_digest``; returns the appended JSON."""
    n_stored = inputs.n_fetched
    extra: dict[str, list[str]] = {"prompt": [], "completion": []}
    for row in rows:
        if row["rebuilt"]:
            row["_h"] = n_stored + len(extra["prompt"])
            extra["prompt"].append(dumps(row["messages"][:1]))
            extra["completion"].append(dumps(row["messages"][1:]))
            row["completion_digest"] = json_digest(extra["completion"][-1])
        else:
            row["_h"] = inputs.index(row["_c"])
            row["completion_digest"] = row["json_digests"][COMPLETION]
    return extra


def _halves(large: pa.Table, extra: dict[str, list[str]]) -> pa.Table:
    halves = large.select(["prompt", "completion"])
    if not extra["prompt"]:
        return halves
    appended = pa.table({name: pa.array(values, halves.schema.field(name).type) for name, values in extra.items()})
    return pa.concat_tables([halves, appended])


def _table(spec: TableSpec, rows: list[dict[str, Any]], halves: pa.Table,
           json_columns: dict[str, tuple[str, str]]) -> pa.Table:
    """Scalar columns from the rows; JSON columns gathered from the halves by row index."""
    arrays = []
    for f in spec.schema:
        if f.name in json_columns:
            source, index = json_columns[f.name]
            taken = halves[source].take(pa.array([r[index] for r in rows], pa.int64()))
            arrays.append(taken.cast(f.type))
        else:
            arrays.append(pa.chunked_array([pa.array([r[f.name] for r in rows], type=f.type)]))
    return pa.Table.from_arrays(arrays, schema=spec.schema)


def _pair_row(inputs: ExportInputs, chosen: dict[str, Any], rejected: dict[str, Any],
              category: dict[str, str], source: str) -> dict[str, Any]:
    chosen_id, rejected_id = chosen["task_id"], rejected["task_id"]
    return {
        "pair_id": row_id(chosen_id, rejected_id),
        "_chosen_h": chosen["_h"],
        "_rejected_h": rejected["_h"],
        "tools": inputs.tools_json(chosen["source_kind"], chosen["tool_names"] + rejected["tool_names"]),
        "chosen_task_id": chosen_id,
        "rejected_task_id": rejected_id,
        "chosen_category": category[chosen_id],
        "rejected_category": category[rejected_id],
        "pair_source": source,
        "scorer_version": SCORER_VERSION,
    }


def _kto_row(inputs: ExportInputs, row: dict[str, Any], category: str) -> dict[str, Any]:
    return {
        "row_id": row_id(row["task_id"], "kto"),
        "_h": row["_h"],
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


def export_file(export_dir: Path, name: str) -> Path:
    """Each dataset in a folder of its own (``preference/preference.jsonl``,
    ``kto/kto.jsonl``): ``datasets.load_dataset(folder)`` reads a folder's files as one
    dataset, and the two have different columns."""
    return export_dir / name / f"{name}.jsonl"


def materialize(ctx: ExportContext[ExportPreferenceConfig]) -> None:
    # The two files are independent and their work (Parquet decoding, Arrow kernels, file
    # I/O) releases the GIL: one thread each.
    def write(name: str) -> None:
        path = export_file(ctx.export_dir, name)
        fields = _JSON_FIELDS[name]
        write_stream(path, (render_jsonl(batch, fields) for batch in table_batches(ctx.path(name))))

    with ThreadPoolExecutor(max_workers=len(_JSON_FIELDS)) as pool:
        list(pool.map(write, _JSON_FIELDS))
    for name, (title, summary) in _CARDS.items():
        ref = ctx.outputs[name]
        schema = pq.read_schema(ctx.path(name))
        write_card(export_file(ctx.export_dir, name).parent, title, summary,
                   [Config("default", [Split("train", f"{name}.jsonl", ref.rows)])], schema, _CARD_NOTES,
                   STAGE_NAME, VERSION, [ref])


STAGE_NAME, VERSION = "export-preference", "1.4.0"  # 1.4.0: a dataset card per folder
_CARDS = {
    "preference": ("tracelake preference pairs",
                   "Pairs of a better and a worse answer to one prompt, in the prompt / chosen / "
                   "rejected conversational form TRL's DPOTrainer takes."),
    "kto": ("tracelake KTO examples",
            "Single answers labelled desirable or not, in the prompt / completion / label form "
            "TRL's KTOTrainer takes."),
}
_CARD_NOTES = {
    "prompt": "the conversation up to the answer: a list of messages",
    "chosen": "the better answer: a list of assistant and tool messages",
    "rejected": "the worse answer: a list of assistant and tool messages",
    "completion": "the answer: a list of assistant and tool messages",
    "tools": "the tools the conversation uses, as OpenAI function schemas",
}


def _as_json(value: Any) -> Any:
    return loads(value) if isinstance(value, str) else value


def _check_rows(name: str, where: str, rows: list[dict[str, Any]], ids: set[str],
                config: ExportPreferenceConfig, scan: FieldScan,
                known: dict[str, list[bool]] | None = None) -> list[str]:
    """Row checks for one source; ``known[field]`` marks values byte-identical to the
    conversation score built (and scanned clean) for the row's task: not rescanned (and
    left out of the row). A pair row may carry ``_same`` (chosen == rejected, decided
    from the values' digests)."""
    errors: list[str] = []
    fields = _JSON_FIELDS[name]
    key_field = "pair_id" if name == "preference" else "row_id"
    per_task: Counter[str] = Counter()
    seen: set[str] = set()
    known = known or {}
    for i, r in enumerate(rows):
        key = str(r.get(key_field) or "?")
        errors += identity_errors(where, key, "id", seen, ids, name)
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


# Per table: large JSON field -> (task id column, position in conversations.json_digests).
_KNOWN = {"preference": {"prompt": ("chosen_task_id", PROMPT), "chosen": ("chosen_task_id", COMPLETION),
                         "rejected": ("rejected_task_id", COMPLETION)},
          "kto": {"prompt": ("task_id", PROMPT), "completion": ("task_id", COMPLETION)}}


def table_rows(name: str, table: pa.Table, conv: dict[str, list[str]] | None) -> tuple[
        list[dict[str, Any]], dict[str, list[bool]]]:
    """A re-read table's rows for ``_check_rows`` and its known-clean masks. The large
    JSON fields are hashed straight from Arrow; only values not known clean become Python
    strings (they are scanned), and a pair's chosen/rejected are compared by digest."""
    large = _KNOWN[name]
    rows = table.drop_columns(list(large)).to_pylist()
    digests = {f: value_digests(table[f]) for f in large}
    known = {f: known_clean(table[col].to_pylist(), digests[f], conv, which)
             for f, (col, which) in large.items()}
    for f in large:
        unknown = [i for i, k in enumerate(known[f]) if not k]
        for i, value in zip(unknown, table[f].take(pa.array(unknown, pa.int64())).to_pylist(), strict=True):
            rows[i][f] = value
    if name == "preference":
        for i, (c, r) in enumerate(zip(digests["chosen"], digests["rejected"], strict=True)):
            if c is not None and r is not None and c != r:
                rows[i]["_same"] = False  # different bytes; equal digests are compared in full
            else:
                rows[i]["_same"] = _same(table["chosen"][i].as_py(), table["rejected"][i].as_py())
    return rows, known


def _reread(ctx: ExportContext[Any], name: str, conv: dict[str, list[str]] | None) -> tuple[
        list[dict[str, Any]], dict[str, list[bool]], bool]:
    """One pass over a table's Parquet: its rows, known-clean masks, and whether its JSONL
    file is byte-identical to the table's rendering."""
    match = StreamMatch(export_file(ctx.export_dir, name))
    rows: list[dict[str, Any]] = []
    known: dict[str, list[bool]] = {f: [] for f in _KNOWN[name]}
    for batch in table_batches(ctx.path(name)):
        batch_rows, batch_known = table_rows(name, batch, conv)
        rows += batch_rows
        for f, mask in batch_known.items():
            known[f] += mask
        match.feed(render_jsonl(batch, _JSON_FIELDS[name]))
    return rows, known, match.matches()


def validate(ctx: ExportContext[ExportPreferenceConfig]) -> list[str]:
    config = ctx.config
    errors: list[str] = []
    scan = FieldScan()
    conv = run_conversations(ctx)
    with ThreadPoolExecutor(max_workers=len(_JSON_FIELDS)) as pool:
        reread = dict(zip(_JSON_FIELDS, pool.map(lambda n: _reread(ctx, n, conv), _JSON_FIELDS), strict=True))
    for name in _JSON_FIELDS:
        rows, known, matches = reread[name]
        for mask in known.values():
            scan.vouch(mask)
        key_field = "pair_id" if name == "preference" else "row_id"
        ids = {r[key_field] for r in rows}
        errors += _check_rows(name, f"table {name}", rows, ids, config, scan, known)
        path = export_file(ctx.export_dir, name)
        if not path.exists():
            errors.append(f"missing export file {path}")
        elif not matches:
            file_rows = read_jsonl(path)
            if len(file_rows) != len(rows):
                errors.append(f"{path.name} holds {len(file_rows)} rows, the table {len(rows)}")
            errors += _check_rows(name, path.name, file_rows, ids, config, scan)
    errors += scan.errors()
    ctx.secret_rescan = scan.report()
    return errors


def _same(chosen: Any, rejected: Any) -> bool:
    if isinstance(chosen, str) and isinstance(rejected, str):
        return chosen == rejected
    return dumps(_as_json(chosen)) == dumps(_as_json(rejected))


def _check_pair(where: str, key: str, r: dict[str, Any]) -> list[str]:
    errors = []
    if not r.get("chosen_task_id") or not r.get("rejected_task_id"):
        errors.append(f"{where}: {key}: missing provenance")
    if r.get("chosen_task_id") == r.get("rejected_task_id"):
        errors.append(f"{where}: {key}: self-pair on task {r.get('chosen_task_id')}")
    same = r["_same"] if "_same" in r else _same(r.get("chosen"), r.get("rejected"))
    if same:
        errors.append(f"{where}: {key}: chosen and rejected are identical")
    pairing = (r.get("chosen_category"), r.get("rejected_category"))
    if pairing not in PAIRINGS:
        errors.append(f"{where}: {key}: pairing {pairing[0]!r} over {pairing[1]!r} is not allowed")
    return errors


STAGE = Stage(
    name=STAGE_NAME,
    version=VERSION,
    engines=scanner_versions,
    config_model=ExportPreferenceConfig,
    inputs=EXPORT_INPUTS,
    outputs=(PREFERENCE, KTO),
    run=run,
    materialize=materialize,
    validate=validate,
)
