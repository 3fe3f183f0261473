"""`tracelake receipts verify --deep`: re-run each stage from what its receipt recorded.

A signature proves who wrote a receipt and that the objects are the ones it names; it
cannot prove that the stage, run again on the same inputs and config, gives the same
output. This re-executes every stage in a throwaway scratch area (so per-file caches
cannot hide a difference) from the inputs recorded in the lake, canonicalises each
output exactly as the runner does, and compares logical digests.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from pipeline.core.artifacts import artifact_inputs
from pipeline.core.execute import StageTask, execute_task, output_specs
from pipeline.core.externals import external_refs
from pipeline.core.hashing import CacheMac, table_digest, xxh3_128_file
from pipeline.core.receipts import load_run_receipts, resolve_run
from pipeline.core.sources import CHANGED_DURING_RUN, SourceFile, load_manifest
from pipeline.core.stage import ExportContext, Stage
from pipeline.core.store import LakeLayout, lake_inputs
from pipeline.core.trust import TrustedKeys, load_trusted
from schemas.drift import RowSample
from schemas.receipt import ArtifactRef, ObjectRef, StageReceipt

MAX_ROW_SAMPLES = 3
MAX_VALUE_CHARS = 160
COMPARE_BATCH = 4096

StageVerdict = Literal["match", "differs", "error", "sources_unavailable", "inputs_unavailable", "skipped"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TableCheck(_Model):
    table: str
    recorded: str = Field(description="xxh3-128 in the receipt.")
    recomputed: str = Field(description="xxh3-128 of the re-run's canonical output.")
    recorded_rows: int
    recomputed_rows: int
    match: bool
    first_differences: list[RowSample] = Field(default_factory=list)


class StageCheck(_Model):
    stage: str
    verdict: StageVerdict
    detail: str = ""
    sampled_files: int | None = Field(default=None, description="Source files re-read (sampling).")
    tables: list[TableCheck] = Field(default_factory=list)


class DeepVerifyReport(_Model):
    run_id: str
    sample: int | None
    stages: list[StageCheck]
    passed: bool = Field(description="No stage differs or failed to re-run.")


# --- comparing tables -----------------------------------------------------------------


def _short(value: object) -> object:
    if isinstance(value, str) and len(value) > MAX_VALUE_CHARS:
        return value[:MAX_VALUE_CHARS] + f"...(+{len(value) - MAX_VALUE_CHARS} chars)"
    if isinstance(value, list):
        return [_short(v) for v in value[:10]]
    return value


def _row(table: pa.Table, index: int) -> dict[str, object] | None:
    if index >= table.num_rows:
        return None
    return {k: _short(v) for k, v in table.slice(index, 1).to_pylist()[0].items()}


def first_differences(recorded: pa.Table, recomputed: pa.Table, limit: int = MAX_ROW_SAMPLES) -> list[RowSample]:
    """The first rows (canonical order) where the two tables disagree; batch-wise so equal
    stretches of a large table are compared by Arrow, not row by row in Python."""
    samples: list[RowSample] = []
    common = min(recorded.num_rows, recomputed.num_rows)
    for offset in range(0, common, COMPARE_BATCH):
        size = min(COMPARE_BATCH, common - offset)
        a = recorded.slice(offset, size)
        b = recomputed.slice(offset, size)
        if a.equals(b):
            continue
        for i, (x, y) in enumerate(zip(a.to_pylist(), b.to_pylist(), strict=True)):
            if x != y:
                samples.append(RowSample(index=offset + i, recorded=_row(a, i), recomputed=_row(b, i)))
                if len(samples) >= limit:
                    return samples
    for index in range(common, max(recorded.num_rows, recomputed.num_rows)):
        samples.append(RowSample(index=index, recorded=_row(recorded, index), recomputed=_row(recomputed, index)))
        if len(samples) >= limit:
            break
    return samples


def within_tolerance(recorded: pa.Table, fresh: pa.Table, tolerance: float) -> bool:
    """Same rows in the same order; floating-point columns within ``tolerance`` of each
    other, every other column equal (a stage declared ``determinism="tolerance"``)."""
    if recorded.schema != fresh.schema or recorded.num_rows != fresh.num_rows:
        return False
    for name in recorded.column_names:
        old, new = recorded.column(name), fresh.column(name)
        if pa.types.is_floating(old.type):
            # nulls and NaNs where the other side has them (pc.max skips NaN: a loss gone NaN)
            for missing in (pc.is_null, pc.is_nan):
                if not pc.all(pc.equal(missing(old), missing(new))).as_py():
                    return False
            gap = pc.max(pc.abs(pc.subtract(old, new))).as_py()
            if gap is not None and not gap <= tolerance:
                return False
        elif not old.equals(new):
            return False
    return True


def compare_outputs(
    layout: LakeLayout, stage: Stage, receipt: StageReceipt, fresh_tables: dict[str, pa.Table],
    keep: dict[str, pa.Table] | None = None,
) -> list[TableCheck]:
    """``fresh_tables``: the re-run's canonical tables. ``keep`` restricts both sides to a
    subset (sampling) before digesting."""
    recorded_refs = {ref.name: ref for ref in receipt.outputs}
    checks = []
    for name, spec in output_specs(stage).items():
        ref = recorded_refs.get(name)
        if ref is None:
            continue
        fresh = fresh_tables[name]
        recorded_digest = ref.xxh3_128
        recorded_rows = ref.rows
        recorded_table: pa.Table | None = None
        if keep is not None:
            recorded_table = keep[name]
            recorded_digest = table_digest(recorded_table)
            recorded_rows = recorded_table.num_rows
        digest = table_digest(fresh)
        samples: list[RowSample] = []
        match = digest == recorded_digest
        if not match:
            if recorded_table is None:
                recorded_table = pq.read_table(layout.root / ref.path).cast(spec.schema)
            if stage.traits.determinism == "tolerance":
                match = within_tolerance(recorded_table, fresh, stage.traits.tolerance)
            if not match:
                samples = first_differences(recorded_table, fresh)
        checks.append(
            TableCheck(
                table=name, recorded=recorded_digest, recomputed=digest,
                recorded_rows=recorded_rows, recomputed_rows=fresh.num_rows,
                match=match, first_differences=samples,
            )
        )
    return checks


def compare_artifacts(stage: Stage, receipt: StageReceipt, fresh: list[ArtifactRef]) -> list[TableCheck]:
    """Artifacts by tree digest (rows: their file counts); a stage declared within a
    tolerance (a retrain) is judged by its tables, so its artifacts are not compared."""
    if stage.traits.determinism != "bitwise":
        return []
    recorded = {a.name: a for a in receipt.artifacts}
    return [
        TableCheck(
            table=f"artifact:{a.name}", recorded=recorded[a.name].digest, recomputed=a.digest,
            recorded_rows=len(recorded[a.name].files), recomputed_rows=len(a.files),
            match=recorded[a.name].digest == a.digest,
        )
        for a in fresh if a.name in recorded
    ]


# --- re-running stages ------------------------------------------------------------------


def _rerun(
    layout: LakeLayout, stage: Stage, receipt: StageReceipt, inputs: dict[str, ObjectRef],
    sources: dict[str, list[SourceFile]],
) -> tuple[dict[str, pa.Table], list[ArtifactRef]]:
    """The stage run again through the executor's own function, in a throwaway scratch
    area (so per-file caches cannot hide a difference), one worker, nothing stored: its
    canonical tables and its artifacts' manifests."""
    with tempfile.TemporaryDirectory(prefix=f"tracelake-deep-{stage.name}-") as scratch:
        task = StageTask(
            stage=stage,
            config=receipt.config,
            inputs=inputs,
            sources=sources,
            externals=external_refs(receipt.inputs),
            artifact_inputs=artifact_inputs(receipt.inputs),
            root=str(layout.root),
            recorded_at=receipt.recorded_at,
            workers=1,
            cache_key=receipt.cache_key,
            cache_mac=CacheMac(os.urandom(32)),  # a throwaway scratch: nothing to share
            scratch=scratch,
            store=False,
        )
        done = execute_task(task)
    return done.tables, done.artifacts


def _verdict(checks: list[TableCheck]) -> StageVerdict:
    return "match" if all(c.match for c in checks) else "differs"


def verify_lake_stage(layout: LakeLayout, stage: Stage, receipt: StageReceipt) -> StageCheck:
    inputs = lake_inputs(layout, receipt.inputs)
    if inputs is None:
        return StageCheck(stage=stage.name, verdict="inputs_unavailable",
                          detail="an input object is no longer in the lake")
    tables, artifacts = _rerun(layout, stage, receipt, inputs, {})
    checks = compare_outputs(layout, stage, receipt, tables) + compare_artifacts(stage, receipt, artifacts)
    detail = _recheck_exports(layout, stage, receipt)
    verdict: StageVerdict = "differs" if detail else _verdict(checks)
    return StageCheck(stage=stage.name, verdict=verdict, tables=checks, detail=detail)


def _recheck_exports(layout: LakeLayout, stage: Stage, receipt: StageReceipt) -> str:
    """The firewall run again on the files the run published: it must pass and scan and
    find what the receipt says it did. Empty when it does (or the stage has none)."""
    recorded = receipt.validation.secret_rescan
    if stage.validate is None or recorded is None:
        return ""
    ctx = ExportContext(
        layout=layout, config=stage.config_model.model_validate(receipt.config), run_id=receipt.run_id,
        outputs={ref.name: ref for ref in receipt.outputs}, export_dir=layout.export_dir(receipt.run_id),
        inputs=lake_inputs(layout, receipt.inputs) or {}, input_refs=list(receipt.inputs),
    )
    errors = stage.validate(ctx)
    if errors:
        return (f"the export firewall fails on the published files ({len(errors)} errors): "
                + "; ".join(errors[:3]))
    if ctx.secret_rescan != recorded:
        return f"secret rescan recorded {recorded.model_dump()}, now {ctx.secret_rescan}"
    return ""


def recorded_sources(
    layout: LakeLayout, stage: Stage, receipt: StageReceipt
) -> tuple[dict[str, list[SourceFile]] | None, str]:
    """The files each ``source:<kind>`` input stood for, if all still hold the same bytes."""
    sources: dict[str, list[SourceFile]] = {}
    for kind in stage.source_kinds:
        recorded = next((i for i in receipt.inputs if i.name == f"source:{kind}"), None)
        if recorded is None:
            return None, f"receipt has no source:{kind} input"
        manifest = load_manifest(layout.cache, recorded.xxh3_128)
        if manifest is None:
            return None, f"no manifest recorded for source:{kind} (run predates manifests?)"
        if manifest.withheld:
            return None, (f"{len(manifest.withheld)} {kind} file path(s) hold a secret and were not "
                          f"recorded, e.g. {manifest.withheld[0]}")
        files = manifest.files
        unstable = [f.display_path for f in files if f.digest.startswith(CHANGED_DURING_RUN)]
        if unstable:
            return None, f"{len(unstable)} {kind} file(s) kept changing during the run, e.g. {unstable[0]}"
        set_aside = [f"{f.display_path} ({f.set_aside})" for f in files if f.set_aside]
        if set_aside:
            return None, f"{len(set_aside)} {kind} file(s) could not be read or named, e.g. {set_aside[0]}"
        changed = [f.display_path for f in files if not _same_bytes(f)]
        if changed:
            return None, f"{len(changed)} {kind} file(s) changed or missing, e.g. {changed[0]}"
        sources[kind] = files
    return sources, ""


def _same_bytes(file: SourceFile) -> bool:
    """Deep means deep: re-hash the bytes, no stat-cache shortcut."""
    try:
        return file.path.is_file() and xxh3_128_file(file.path) == file.digest
    except OSError:
        return False


def _links(tables: list[pa.Table]) -> tuple[dict[str, set[str]], dict[str, set[str]], dict[str, set[str]]]:
    """file -> sessions, session -> files, session -> related sessions (parent/child)."""
    file_sessions: dict[str, set[str]] = {}
    session_files: dict[str, set[str]] = {}
    related: dict[str, set[str]] = {}
    for table in tables:
        names = set(table.column_names)
        if {"session_id", "source_file"} <= names:
            for sid, path in zip(table.column("session_id").to_pylist(),
                                 table.column("source_file").to_pylist(), strict=True):
                if sid is not None and path is not None:
                    file_sessions.setdefault(path, set()).add(sid)
                    session_files.setdefault(sid, set()).add(path)
        if {"session_id", "parent_session_id"} <= names:
            for sid, parent in zip(table.column("session_id").to_pylist(),
                                   table.column("parent_session_id").to_pylist(), strict=True):
                if sid is not None and parent is not None:
                    related.setdefault(sid, set()).add(parent)
                    related.setdefault(parent, set()).add(sid)
    return file_sessions, session_files, related


def _closure(seed: set[str], tables: list[pa.Table]) -> set[str]:
    """Files needed to rebuild the seed files' rows: sessions spread over several files
    and subagent/parent links cross file boundaries."""
    file_sessions, session_files, related = _links(tables)
    files, pending = set(seed), list(seed)
    while pending:
        sessions = set(file_sessions.get(pending.pop(), set()))
        sessions |= {r for s in list(sessions) for r in related.get(s, set())}
        for sid in sessions:
            for path in session_files.get(sid, set()) - files:
                files.add(path)
                pending.append(path)
    return files


def _rows_of(table: pa.Table, files: set[str], sessions: set[str]) -> pa.Table | None:
    if "source_file" in table.column_names:
        return table.filter(pc.is_in(table.column("source_file"), pa.array(sorted(files), pa.large_string())))
    if "session_id" in table.column_names:
        return table.filter(pc.is_in(table.column("session_id"), pa.array(sorted(sessions), pa.large_string())))
    return None


def verify_source_stage(
    layout: LakeLayout, stage: Stage, receipt: StageReceipt, sample: int | None
) -> StageCheck:
    sources, why = recorded_sources(layout, stage, receipt)
    if sources is None:
        return StageCheck(stage=stage.name, verdict="sources_unavailable", detail=why)
    inputs = lake_inputs(layout, receipt.inputs)
    if inputs is None:
        return StageCheck(stage=stage.name, verdict="inputs_unavailable",
                          detail="an input object is no longer in the lake")
    all_files = sorted(
        (f for files in sources.values() for f in files if not f.display_path.endswith(".meta.json")),
        key=lambda f: f.digest,
    )
    seed: set[str] | None = None
    recorded: dict[str, pa.Table] = {}
    if sample is not None and not stage.inputs and sample < len(all_files):
        recorded = {
            name: pq.read_table(layout.root / ref.path).cast(output_specs(stage)[name].schema)
            for name, ref in ((r.name, r) for r in receipt.outputs) if name in output_specs(stage)
        }
        seed = {f.display_path for f in all_files[:sample]}  # digest order: spread, reproducible
        needed = _closure(seed, list(recorded.values()))
        # A subagent log's sidecar (agent-<id>.meta.json) goes with it.
        needed |= {p[: -len(".jsonl")] + ".meta.json" for p in needed if p.endswith(".jsonl")}
        sources = {k: [f for f in files if f.display_path in needed] for k, files in sources.items()}
    fresh, artifacts = _rerun(layout, stage, receipt, inputs, sources)
    if seed is None:
        checks = compare_outputs(layout, stage, receipt, fresh) + compare_artifacts(stage, receipt, artifacts)
    else:
        checks = compare_sampled(stage, recorded, fresh, seed)
    return StageCheck(stage=stage.name, verdict=_verdict(checks), tables=checks,
                      sampled_files=sum(len(f) for f in sources.values()) if seed else None)


def compare_sampled(
    stage: Stage, recorded: dict[str, pa.Table], fresh_tables: dict[str, pa.Table], seed: set[str]
) -> list[TableCheck]:
    """Only the seed files' rows are compared; the closure files were context."""
    file_sessions, _, _ = _links(list(recorded.values()))
    sessions = {s for f in seed for s in file_sessions.get(f, set())}
    checks = []
    for name in output_specs(stage):
        if name not in recorded:
            continue
        fresh = fresh_tables[name]
        old, new = _rows_of(recorded[name], seed, sessions), _rows_of(fresh, seed, sessions)
        if old is None or new is None:
            continue  # no per-file identity: not comparable on a sample
        old_digest, new_digest = table_digest(old), table_digest(new)
        checks.append(
            TableCheck(
                table=name, recorded=old_digest, recomputed=new_digest,
                recorded_rows=old.num_rows, recomputed_rows=new.num_rows,
                match=old_digest == new_digest,
                first_differences=[] if old_digest == new_digest else first_differences(old, new),
            )
        )
    return checks


def verify_stage(layout: LakeLayout, stage: Stage | None, receipt: StageReceipt, sample: int | None) -> StageCheck:
    if receipt.status != "ok":
        return StageCheck(stage=receipt.stage, verdict="skipped", detail="stage failed in this run")
    if stage is None:
        return StageCheck(stage=receipt.stage, verdict="skipped", detail="stage is not installed")
    if stage.full_version != receipt.stage_version:
        return StageCheck(stage=stage.name, verdict="skipped",
                          detail=f"recorded version {receipt.stage_version}, installed {stage.full_version}")
    if stage.traits.determinism == "none":
        problem = _recheck_exports(layout, stage, receipt)
        if problem:
            return StageCheck(stage=stage.name, verdict="differs", detail=problem)
        return StageCheck(stage=stage.name, verdict="skipped",
                          detail="not deterministic by declaration: judged by its validation (it passed, and "
                                 "its export firewall passes on the published files)")
    try:
        if stage.source_kinds:
            return verify_source_stage(layout, stage, receipt, sample)
        return verify_lake_stage(layout, stage, receipt)
    except Exception as exc:  # a stage that cannot re-run is a finding, not a crash
        return StageCheck(stage=stage.name, verdict="error", detail=f"{type(exc).__name__}: {exc}")


def deep_verify(
    root: Path, run_id: str | None, sample: int | None, stages: Sequence[Stage] | None = None,
    keys: TrustedKeys | None = None,
) -> DeepVerifyReport:
    """Receipts are read only after their signatures verify with ``keys`` (default: the
    root's trusted keys)."""
    if stages is None:
        from pipeline.stages.registry import STAGES

        stages = STAGES
    layout = LakeLayout(root)
    resolved = resolve_run(layout, run_id)
    by_name = {s.name: s for s in stages}
    order = {s.name: i for i, s in enumerate(stages)}
    trusted = keys if keys is not None else load_trusted(layout)
    receipts = sorted(load_run_receipts(layout, resolved, trusted),
                      key=lambda r: (order.get(r.stage, len(order)), r.stage))
    checks = [verify_stage(layout, by_name.get(r.stage), r, sample) for r in receipts]
    return DeepVerifyReport(
        run_id=resolved, sample=sample, stages=checks,
        passed=all(c.verdict not in ("differs", "error") for c in checks),
    )


# --- output -------------------------------------------------------------------------------

_COLORS = {"match": "green", "differs": "red", "error": "red"}


def print_deep_report(report: DeepVerifyReport, console: Console | None = None) -> None:
    console = console or Console()
    table = Table(title=escape(f"deep verify {report.run_id}" + (f" (sample {report.sample})" if report.sample else "")))
    for column in ("stage", "verdict", "tables", "detail"):
        table.add_column(column)
    for check in report.stages:
        color = _COLORS.get(check.verdict, "yellow")
        differing = [c.table for c in check.tables if not c.match]
        tables = f"{len(check.tables) - len(differing)}/{len(check.tables)} match"
        detail = check.detail or (", ".join(differing) and f"differs: {', '.join(differing)}")
        if check.sampled_files is not None:
            detail = f"sample: re-read {check.sampled_files} file(s); {detail}".rstrip("; ")
        table.add_row(escape(check.stage), f"[{color}]{escape(check.verdict)}[/{color}]",
                      tables if check.tables else "-", escape(detail))
    console.print(table)
    for check in report.stages:
        for t in check.tables:
            for diff in t.first_differences:
                console.print(f"[red]{escape(check.stage)}/{escape(t.table)}[/red] row {diff.index}:")
                console.print(f"  recorded:   {escape(str(diff.recorded))}")
                console.print(f"  recomputed: {escape(str(diff.recomputed))}")
    console.print("[green]deep verify passed[/green]" if report.passed else "[red]deep verify found differences[/red]")
