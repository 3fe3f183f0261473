"""Run stages in dependency order: hit the content-keyed cache or execute, then receipt.

The cache key H(stage name, version, canonical config, sorted input digests) is computed
before a stage runs. A key with a stored receipt whose outputs are intact is a hit. A
failing stage (exception, broken count conservation, failed validation) stops every
stage downstream of it, which is recorded as skipped rather than fed stale data.
"""

from __future__ import annotations

import datetime as dt
import secrets
import shutil
import subprocess
import time
import traceback
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import pyarrow as pa
from pydantic import BaseModel

from pipeline import __version__
from pipeline.core import exports
from pipeline.core.errors import ConservationError, TracelakeError
from pipeline.core.hashing import digest_json
from pipeline.core.receipts import RUN_FILE, SUMMARY_FILE, cached_receipt, run_hash, write_receipt
from pipeline.core.signing import load_or_create_key
from pipeline.core.sources import (
    SourceFile,
    SourceSpec,
    StatCache,
    resolve_sources,
    save_manifest,
)
from pipeline.core.stage import ExportContext, Stage, StageContext, StageResult, Tracker
from pipeline.core.store import (
    LakeLayout,
    TableStream,
    atomic_write_text,
    canonicalize,
    object_intact,
    put_stream,
    put_table,
)
from schemas.receipt import (
    InputRef,
    ObjectRef,
    RunSummary,
    StageReceipt,
    StageStatus,
    Timings,
    Validation,
)
from schemas.records import QUARANTINE

DATASET_TABLES = ("sft", "rag", "preference")


@lru_cache(maxsize=1)
def git_sha() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    sha = out.stdout.strip()
    return sha if out.returncode == 0 and len(sha) == 40 else None


def utc_now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def new_run_id() -> str:
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%fZ")
    return f"{stamp}-{secrets.token_hex(2)}"


@dataclass
class RunOptions:
    root: Path
    sources: list[SourceSpec]
    stage_config: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    recorded_at: str | None = None
    workers: int = 2
    tracker: Tracker = field(default_factory=Tracker)
    key_path: Path | None = None


@dataclass
class StageOutcome:
    stage: str
    status: str
    receipt: StageReceipt | None
    error: str | None = None


@dataclass
class RunResult:
    run_id: str
    summary: RunSummary
    outcomes: list[StageOutcome]

    @property
    def ok(self) -> bool:
        return self.summary.overall_passed


def closure(stages: Sequence[Stage], targets: Sequence[str] | None) -> list[Stage]:
    """Stages needed for ``targets`` (all when None), in declaration (topological) order."""
    if not targets:
        return list(stages)
    producer = {name: s for s in stages for name in s.output_names}
    by_name = {s.name: s for s in stages}
    needed: set[str] = set()
    pending = list(targets)
    while pending:
        name = pending.pop()
        if name not in by_name:
            raise TracelakeError(f"unknown stage {name!r}; known: {', '.join(by_name)}")
        if name in needed:
            continue
        needed.add(name)
        pending.extend(producer[table].name for table in by_name[name].inputs)
    return [s for s in stages if s.name in needed]


def build_config(stage: Stage, options: RunOptions) -> BaseModel:
    return stage.config_model.model_validate(dict(options.stage_config.get(stage.name, {})))


def cache_key(stage: Stage, config: BaseModel, inputs: list[InputRef]) -> str:
    return digest_json(
        {
            "stage": stage.name,
            "version": stage.version,
            "config": config.model_dump(mode="json"),
            "inputs": sorted([i.name, i.xxh3_128] for i in inputs),
        }
    )


def check_conservation(stage: Stage, result: StageResult) -> None:
    total = result.records_out + sum(result.quarantined.values()) + sum(result.filtered.values())
    if result.records_in != total:
        raise ConservationError(
            f"{stage.name}: records_in={result.records_in} != out {result.records_out} + "
            f"quarantined {sum(result.quarantined.values())} + "
            f"filtered {sum(result.filtered.values())}"
        )


class Runner:
    def __init__(self, stages: Sequence[Stage], options: RunOptions) -> None:
        self.stages = list(stages)
        self.options = options
        self.layout = LakeLayout(options.root.resolve())
        self.key = load_or_create_key(options.key_path)
        self.run_id = new_run_id()
        self.recorded_at = options.recorded_at or utc_now()
        self.tables: dict[str, ObjectRef] = {}
        self.sources: dict[str, list[SourceFile]] = {}

    def _resolve_sources(self, kinds: Sequence[str], fold_home: bool) -> None:
        wanted = [s for s in self.options.sources if s.kind in kinds]
        cache = StatCache(self.layout.cache / "stat-cache.json")
        files = resolve_sources(wanted, cache, fold_home=fold_home)
        for kind in kinds:
            self.sources[kind] = [f for f in files if f.kind == kind]

    def _inputs(self, stage: Stage, config: BaseModel) -> list[InputRef]:
        refs: list[InputRef] = []
        if stage.source_kinds:
            fold_home = bool(getattr(config, "fold_home", True))
            self._resolve_sources(stage.source_kinds, fold_home)
            for kind in stage.source_kinds:
                files = self.sources[kind]
                digest = save_manifest(self.layout.cache, files)  # deep verify re-reads these
                refs.append(InputRef(name=f"source:{kind}", xxh3_128=digest, rows=len(files)))
        for name in stage.inputs:
            ref = self.tables[name]
            refs.append(InputRef(name=name, xxh3_128=ref.xxh3_128, sha256=ref.sha256, rows=ref.rows))
        return refs

    def _execute(self, stage: Stage, config: BaseModel) -> tuple[StageResult, list[ObjectRef]]:
        ctx = StageContext(
            layout=self.layout,
            config=config,
            inputs={name: self.tables[name] for name in stage.inputs},
            sources={k: self.sources.get(k, []) for k in stage.source_kinds},
            recorded_at=self.recorded_at,
            workers=self.options.workers,
            tracker=self.options.tracker,
            scratch=self.layout.cache / stage.name,
        )
        result = stage.run(ctx)
        check_conservation(stage, result)
        metadata = {"tracelake.recorded_at": self.recorded_at, "tracelake.stage": stage.name}
        specs = {spec.name: spec for spec in stage.outputs}
        specs[stage.quarantine_table] = QUARANTINE
        missing = [
            n for n in stage.output_names
            if ("quarantine" if n == stage.quarantine_table else n) not in result.tables
        ]
        if missing:
            raise TracelakeError(f"{stage.name} did not produce tables {missing}")

        def store(name: str, raw: pa.Table | TableStream) -> ObjectRef:
            spec = specs[name]
            if isinstance(raw, TableStream):
                return put_stream(self.layout, name, spec.schema, spec.sort_keys, raw, metadata)
            return put_table(self.layout, name, canonicalize(raw, spec.schema, spec.sort_keys), metadata)

        # Sorting, hashing and Parquet encoding release the GIL: two tables at a time keep
        # both cores busy. Popping frees each raw table as soon as it is handed over.
        with ThreadPoolExecutor(max_workers=max(1, self.options.workers)) as pool:
            futures = [
                pool.submit(
                    store,
                    name,
                    result.tables.pop("quarantine" if name == stage.quarantine_table else name),
                )
                for name in stage.output_names
            ]
            refs = [future.result() for future in futures]
        return result, refs

    def _export_and_validate(
        self, stage: Stage, config: BaseModel, outputs: list[ObjectRef], key: str, hit: bool
    ) -> list[str]:
        """Materialise and validate exports once per cache key; link them into the run."""
        if stage.materialize is None and stage.validate is None:
            return []
        run_dir = self.layout.exports / self.run_id
        keyed = exports.keyed_dir(self.layout, key)
        if hit and exports.intact(keyed):
            exports.link_into(keyed, run_dir)
            return []
        scratch = exports.scratch_dir(self.layout, key)
        ctx = ExportContext(
            layout=self.layout,
            config=config,
            run_id=self.run_id,
            outputs={ref.name: ref for ref in outputs},
            export_dir=scratch,
        )
        try:
            if stage.materialize is not None:
                stage.materialize(ctx)
            errors = stage.validate(ctx) if stage.validate is not None else []
            if errors:
                # Never publish what failed the firewall; keep it aside for inspection.
                failed = run_dir / "_failed" / stage.name
                if scratch.exists():
                    exports.link_into(scratch, failed)
                return errors
            exports.seal(scratch, keyed)
        finally:
            if scratch.exists():
                shutil.rmtree(scratch)
        exports.link_into(keyed, run_dir)
        return []

    def run_stage(self, stage: Stage) -> StageOutcome:
        started_wall, started = utc_now(), time.perf_counter()
        config = build_config(stage, self.options)
        inputs = self._inputs(stage, config)
        key = cache_key(stage, config, inputs)
        cached = cached_receipt(self.layout, key)
        hit = cached is not None and all(object_intact(self.layout, o) for o in cached.outputs)
        error: str | None = None
        if cached is not None and hit:
            outputs = list(cached.outputs)
            counts = cached
            records = (counts.records_in, counts.records_out, dict(counts.quarantined), dict(counts.filtered))
            stats = dict(counts.stats)
            errors = list(counts.validation.errors)
        else:
            try:
                result, outputs = self._execute(stage, config)
            except Exception as exc:  # recorded in a failed receipt, then re-raised as status
                error = f"{type(exc).__name__}: {exc}"
                if not isinstance(exc, TracelakeError):
                    error += "\n" + traceback.format_exc(limit=8)
                result, outputs = StageResult(tables={}, records_in=0, records_out=0), []
            records = (result.records_in, result.records_out, result.quarantined, result.filtered)
            stats = result.stats
            errors = list(result.validation_errors)
        if error is None:
            try:
                errors += self._export_and_validate(stage, config, outputs, key, hit)
            except Exception as exc:
                error = f"{type(exc).__name__}: {exc}"
        passed = error is None and not errors
        finished = time.perf_counter()
        receipt = StageReceipt(
            run_id=self.run_id,
            stage=stage.name,
            stage_version=stage.version,
            status="ok" if passed else "failed",
            cache_key=key,
            cache_hit=hit,
            config=config.model_dump(mode="json"),
            config_hash=digest_json(config.model_dump(mode="json")),
            inputs=inputs,
            outputs=outputs,
            records_in=records[0],
            records_out=records[1],
            quarantined=dict(sorted(records[2].items())),
            filtered=dict(sorted(records[3].items())),
            stats=stats,
            validation=Validation(passed=passed, errors=errors + ([error] if error else [])),
            error=error,
            tracelake_version=__version__,
            git_sha=git_sha(),
            recorded_at=self.recorded_at,
            timings=Timings(
                started_at=started_wall, finished_at=utc_now(), duration_s=round(finished - started, 4)
            ),
        )
        write_receipt(self.layout, receipt, self.key)
        if passed:
            self.tables.update({ref.name: ref for ref in outputs})
        return StageOutcome(stage.name, receipt.status, receipt, error)

    def run(self, targets: Sequence[str] | None = None) -> RunResult:
        plan = closure(self.stages, targets)
        outcomes: list[StageOutcome] = []
        failed: set[str] = set()
        producer = {name: s.name for s in plan for name in s.output_names}
        for stage in plan:
            upstream = {producer[t] for t in stage.inputs if t in producer}
            if upstream & failed:
                failed.add(stage.name)
                outcomes.append(StageOutcome(stage.name, "skipped_upstream_failed", None))
                continue
            with self.options.tracker.stage(stage.name):
                outcome = self.run_stage(stage)
            outcomes.append(outcome)
            if outcome.status != "ok":
                failed.add(stage.name)
        summary = self._summarise(outcomes)
        self._write_run_files(summary)
        return RunResult(self.run_id, summary, outcomes)

    def _summarise(self, outcomes: list[StageOutcome]) -> RunSummary:
        receipts = [o.receipt for o in outcomes if o.receipt is not None]
        statuses = []
        for o in outcomes:
            r = o.receipt
            statuses.append(
                StageStatus(
                    stage=o.stage,
                    status=o.status,  # type: ignore[arg-type]
                    cache_hit=bool(r and r.cache_hit),
                    cache_key=r.cache_key if r else None,
                    records_in=r.records_in if r else 0,
                    records_out=r.records_out if r else 0,
                    quarantined=sum(r.quarantined.values()) if r else 0,
                    filtered=sum(r.filtered.values()) if r else 0,
                    outputs={ref.name: ref.xxh3_128 for ref in r.outputs} if r else {},
                    validation_passed=bool(r and r.validation.passed),
                )
            )
        return RunSummary(
            run_id=self.run_id,
            tracelake_version=__version__,
            stages=statuses,
            tables=dict(sorted(self.tables.items())),
            total_records_in=sum(s.records_in for s in statuses),
            total_records_out=sum(s.records_out for s in statuses),
            total_quarantined=sum(s.quarantined for s in statuses),
            total_filtered=sum(s.filtered for s in statuses),
            datasets={n: self.tables[n].rows for n in DATASET_TABLES if n in self.tables},
            overall_passed=all(o.status == "ok" for o in outcomes),
            run_hash=run_hash(receipts),
        )

    def _write_run_files(self, summary: RunSummary) -> None:
        from pipeline.core.report import summary_markdown

        run_dir = self.layout.run_dir(self.run_id)
        atomic_write_text(
            run_dir / RUN_FILE,
            digestless_json({n: r.model_dump() for n, r in summary.tables.items()}),
        )
        atomic_write_text(run_dir / "summary.md", summary_markdown(self.layout, self.run_id, summary))
        # summary.json last: its presence marks the run as complete (see list_runs).
        atomic_write_text(run_dir / SUMMARY_FILE, summary.model_dump_json(indent=2) + "\n")


def digestless_json(obj: object) -> str:
    import json

    return json.dumps(obj, indent=2, sort_keys=True) + "\n"
