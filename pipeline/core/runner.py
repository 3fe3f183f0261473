"""Run stages in dependency order: reuse a verified cache entry or execute, then receipt.

The cache key H(stage name, version, canonical config, sorted input digests) is computed
before a stage runs; a stored entry is reused only after it verifies (see
``pipeline.core.cache``). A failing stage (exception, broken count conservation, failed
validation) stops every stage downstream of it, which is recorded as skipped rather than
fed stale data. A run holds the root's writer lock from start to end, clears what killed
runs left, and becomes visible only when its signed run statement lands.
"""

from __future__ import annotations

import datetime as dt
import secrets
import shutil
import subprocess
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from pipeline import __version__
from pipeline.core import exports, externals, openssf
from pipeline.core.artifacts import INPUT_PREFIX as ARTIFACT_INPUT_PREFIX
from pipeline.core.artifacts import artifact_input, artifact_inputs
from pipeline.core.cache import Lookup, cache_key, lookup
from pipeline.core.errors import TracelakeError
from pipeline.core.execute import Executor, LocalExecutor, StageTask
from pipeline.core.externals import external_refs, key_config
from pipeline.core.hashing import digest_json
from pipeline.core.housekeeping import clean_leftovers
from pipeline.core.lock import writer_lock
from pipeline.core.progress import Tracker
from pipeline.core.receipts import (
    SUMMARY_FILE,
    SUMMARY_MD,
    as_signed,
    begin_run,
    run_hash,
    summary_json,
    write_receipt,
    write_run_statement,
)
from pipeline.core.report import summary_markdown
from pipeline.core.signing import cache_mac, load_or_create_key
from pipeline.core.sources import (
    SourceFile,
    SourceSpec,
    StatCache,
    resolve_sources,
    save_manifest,
)
from pipeline.core.stage import ExportContext, Stage
from pipeline.core.store import LakeLayout
from pipeline.core.trust import TrustedKeys, ensure_trusted_signer
from pipeline.core.workpool import PoolStats
from schemas.datasets import DATASET_TABLES
from schemas.receipt import (
    ArtifactRef,
    Cleanup,
    Execution,
    ExportFile,
    InputRef,
    ObjectRef,
    RejectedCacheEntry,
    RunSummary,
    SecretRescan,
    StageReceipt,
    StageStatus,
    Timings,
    Validation,
)


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
    wait: bool = True  # for another run holding the root; False: RootBusy at once
    on_wait: Callable[[str], None] | None = None
    # External input name -> path, over the config field the stage names (CLI --external).
    externals: Mapping[str, Path] = field(default_factory=dict)
    executor: Executor = field(default_factory=LocalExecutor)


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
    producer = _producers(stages)
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
        pending.extend(producer[item].name for item in _reads(by_name[name]) if item in producer)
    return [s for s in stages if s.name in needed]


def _reads(stage: Stage) -> tuple[str, ...]:
    """What a stage needs from upstream: its input tables and artifacts."""
    return (*stage.inputs, *(ARTIFACT_INPUT_PREFIX + name for name in stage.artifact_inputs))


def _producers(stages: Sequence[Stage]) -> dict[str, Stage]:
    """Table name, or ``artifact:<name>``, -> the stage that makes it."""
    made: dict[str, Stage] = {name: s for s in stages for name in s.output_names}
    made.update({ARTIFACT_INPUT_PREFIX + a.name: s for s in stages for a in s.artifacts})
    return made


def build_config(stage: Stage, options: RunOptions) -> BaseModel:
    return stage.config_model.model_validate(dict(options.stage_config.get(stage.name, {})))


@dataclass
class _Execution:
    """What a stage's execution (or a verified reuse of one) leaves for its receipt."""

    inputs: list[InputRef]
    key: str
    outputs: list[ObjectRef] = field(default_factory=list)
    artifacts: list[ArtifactRef] = field(default_factory=list)
    exports: list[ExportFile] = field(default_factory=list)
    records: tuple[int, int, dict[str, int], dict[str, int]] = (0, 0, {}, {})
    stats: dict[str, Any] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    error: str | None = None
    reused: StageReceipt | None = None
    secret_rescan: SecretRescan | None = None
    execution: Execution | None = None


class Runner:
    def __init__(self, stages: Sequence[Stage], options: RunOptions) -> None:
        self.stages = list(stages)
        self.options = options
        self.layout = LakeLayout(options.root.resolve())
        self.key = load_or_create_key(options.key_path)
        self.mac = cache_mac(self.key)
        self.run_id = new_run_id()
        self.recorded_at = options.recorded_at or utc_now()
        self.tables: dict[str, ObjectRef] = {}
        self.artifacts: dict[str, ArtifactRef] = {}  # artifacts of this run's passed stages
        self.sources: dict[str, list[SourceFile]] = {}
        self.exports: dict[str, list[ExportFile]] = {}
        self.receipt_digests: dict[str, str] = {}
        self.rejected: list[RejectedCacheEntry] = []
        self.resolved_externals: dict[str, list[InputRef]] = {}
        self.cleanup = Cleanup()
        # A cache entry is reused only if this very key signed it (see pipeline.core.cache).
        self.signer = TrustedKeys((self.key.public_key(),), "this run's signing key")

    # --- inputs -------------------------------------------------------------------------

    def _resolve_sources(self, kinds: Sequence[str], fold_home: bool) -> None:
        wanted = [s for s in self.options.sources if s.kind in kinds]
        cache = StatCache(self.layout.cache / "stat-cache.json", self.mac)
        files = resolve_sources(wanted, cache, fold_home=fold_home)
        for kind in kinds:
            self.sources[kind] = [f for f in files if f.kind == kind]

    def _inputs(self, stage: Stage, config: BaseModel) -> list[InputRef]:
        if stage.source_kinds:
            fold_home = stage.folds_home(config) if stage.folds_home is not None else True
            self._resolve_sources(stage.source_kinds, fold_home)
        self.resolved_externals[stage.name] = externals.resolve(self.layout, self.mac, stage, config, self.options.externals)
        return self._input_refs(stage)

    def _input_refs(self, stage: Stage) -> list[InputRef]:
        refs: list[InputRef] = list(self.resolved_externals.get(stage.name, []))
        for kind in stage.source_kinds:
            files = self.sources[kind]
            digest = save_manifest(self.layout.cache, files)  # deep verify re-reads these
            refs.append(InputRef(name=f"source:{kind}", xxh3_128=digest, rows=len(files)))
        for name in stage.inputs:
            ref = self.tables[name]
            refs.append(InputRef(name=name, xxh3_128=ref.xxh3_128, sha256=ref.sha256, rows=ref.rows))
        # An optional artifact its stage left out this run is no input (the stage sees None).
        refs += [artifact_input(self.artifacts[name]) for name in stage.artifact_inputs if name in self.artifacts]
        return refs

    # --- execution ----------------------------------------------------------------------

    def _execute(self, stage: Stage, config: BaseModel, run: _Execution) -> None:
        task = StageTask(
            stage=stage,
            config=key_config(stage, config),  # external paths only through ctx.external
            inputs={name: self.tables[name] for name in stage.inputs},
            sources={k: self.sources.get(k, []) for k in stage.source_kinds},
            externals=external_refs(run.inputs),
            artifact_inputs=artifact_inputs(run.inputs),
            root=str(self.layout.root),
            recorded_at=self.recorded_at,
            workers=self.options.workers,
            cache_key=run.key,
            cache_mac=self.mac,
        )
        done = self.options.executor.run(task, self.options.tracker)
        if done.sources_read is not None:
            # A source changed after it was digested: record (and key) what was read.
            self.sources.update(done.sources_read)
            run.inputs = self._input_refs(stage)
            run.key = cache_key(stage.name, stage.full_version, key_config(stage, config), run.inputs)
        run.outputs = done.outputs
        run.artifacts = done.artifacts
        run.records = (done.records_in, done.records_out, done.quarantined, done.filtered)
        run.stats = done.stats
        run.errors = list(done.validation_errors)
        run.execution = self._execution(done.pool)

    def _execution(self, pool: PoolStats | None) -> Execution:
        executor = self.options.executor
        name = str(getattr(executor, "name", type(executor).__name__))
        if pool is None:
            return Execution(executor=name)
        return Execution(executor=name, tasks=pool.tasks, retries=pool.retries, failed=pool.failed,
                         unit_s=round(pool.unit_s, 3), map_s=round(pool.map_s, 3), gpus=pool.gpus)

    def _export(self, stage: Stage, config: BaseModel, run: _Execution) -> None:
        """Materialise and validate a fresh execution's exports into
        ``exports/.by-key/<key>/``, then link them into the run."""
        if stage.materialize is None and stage.validate is None and not run.artifacts:
            return
        scratch = exports.scratch_dir(self.layout, run.key)
        keyed = self.layout.keyed_exports(run.key)
        ctx = ExportContext(
            layout=self.layout,
            config=config,
            run_id=self.run_id,
            outputs={ref.name: ref for ref in run.outputs},
            export_dir=scratch,
            inputs={name: self.tables[name] for name in stage.inputs},
            input_refs=list(run.inputs),
            artifacts={ref.name: ref for ref in run.artifacts},
        )
        try:
            for artifact in run.artifacts:  # published as copies: an edit there never reaches the store
                exports.copy_tree(self.layout.root / artifact.path, scratch / artifact.name)
            if stage.materialize is not None:
                stage.materialize(ctx)
            errors = stage.validate(ctx) if stage.validate is not None else []
            run.secret_rescan = ctx.secret_rescan
            run.errors += errors
            if run.errors:  # the stage's own verdict (a failed gate) or its validate hook's
                # Never published: kept out of exports/ for inspection.
                if scratch.exists():
                    exports.link_into(scratch, None, self.layout.failed_exports / self.run_id / stage.name)
                return
            scratch.mkdir(parents=True, exist_ok=True)
            # Only what is published is signed for model_signing (a withheld adapter never is).
            for spec in stage.artifacts:
                if spec.model and (scratch / spec.name).is_dir():
                    openssf.sign_model(scratch / spec.name, scratch / f"{spec.name}.sig", self.key)
                    (scratch / f"{spec.name}.pub.pem").write_bytes(openssf.public_pem(self.key))
            files = exports.describe(scratch)
            exports.seal(scratch, keyed)
        finally:
            if scratch.exists():
                shutil.rmtree(scratch)
        exports.link_into(keyed, files, self.layout.export_dir(self.run_id))
        run.exports = files

    def _reuse(self, stage: Stage, run: _Execution, reused: StageReceipt) -> None:
        run.reused = reused
        run.outputs = list(reused.outputs)
        run.artifacts = list(reused.artifacts)
        run.exports = list(reused.exports)
        run.records = (reused.records_in, reused.records_out, dict(reused.quarantined), dict(reused.filtered))
        run.stats = dict(reused.stats)
        run.errors = list(reused.validation.errors)
        run.secret_rescan = reused.validation.secret_rescan
        if run.exports:
            exports.link_into(self.layout.keyed_exports(run.key), run.exports, self.layout.export_dir(self.run_id))

    def run_stage(self, stage: Stage) -> StageOutcome:
        started_wall, started = utc_now(), time.perf_counter()
        config = build_config(stage, self.options)
        config_json = key_config(stage, config)
        placed = getattr(self.options.executor, "placed", None)
        try:
            # Where the executor will run it may change its version (a GPU node's device
            # class): the key, the lookup and the receipt all take the version it gives.
            if placed is not None:
                stage = placed(stage)
            inputs, unresolved = self._inputs(stage, config), None
        except TracelakeError as exc:  # an external input that is not there, no GPU free: this stage fails
            inputs, unresolved = [], str(exc)
        run = _Execution(inputs=inputs, key=cache_key(stage.name, stage.full_version, config_json, inputs))
        found = Lookup(None)
        if unresolved is None:
            found = lookup(self.layout, stage, run.key, inputs, self.signer)
        if found.rejected is not None:
            self.rejected.append(RejectedCacheEntry(stage=stage.name, cache_key=run.key, reason=found.rejected))
        try:
            if unresolved is not None:
                raise TracelakeError(unresolved)
            if found.receipt is not None:
                self._reuse(stage, run, found.receipt)
            else:
                self._execute(stage, config, run)
                self._export(stage, config, run)
        except Exception as exc:  # recorded in a failed receipt, then reported as status
            run.error = f"{type(exc).__name__}: {exc}"
            if not isinstance(exc, TracelakeError):
                run.error += "\n" + traceback.format_exc(limit=8)
            run.outputs, run.artifacts, run.exports, run.records, run.stats = [], [], [], (0, 0, {}, {}), {}
            if run.reused is None:  # what its units did, where the executor kept it
                run.execution = self._execution(getattr(self.options.executor, "stats", None))
        passed = run.error is None and not run.errors
        reused = run.reused
        receipt = StageReceipt(
            run_id=self.run_id,
            stage=stage.name,
            stage_version=stage.full_version,
            status="ok" if passed else "failed",
            cache_key=run.key,
            cache_hit=reused is not None,
            config=config_json,
            config_hash=digest_json(config_json),
            inputs=run.inputs,
            outputs=run.outputs,
            records_in=run.records[0],
            records_out=run.records[1],
            quarantined=dict(sorted(run.records[2].items())),
            filtered=dict(sorted(run.records[3].items())),
            stats=run.stats,
            exports=run.exports if passed else [],
            artifacts=run.artifacts,
            determinism=stage.traits.determinism,
            validation=Validation(passed=passed, errors=run.errors + ([run.error] if run.error else []),
                                  secret_rescan=run.secret_rescan),
            error=run.error,
            cached_from=(reused.cached_from or reused.run_id) if reused is not None else None,
            tracelake_version=__version__,
            git_sha=git_sha(),
            recorded_at=self.recorded_at,
            timings=Timings(
                started_at=started_wall, finished_at=utc_now(),
                duration_s=round(time.perf_counter() - started, 4),
            ),
            execution=run.execution,
        )
        self.receipt_digests[stage.name] = write_receipt(self.layout, receipt, self.key)
        if passed:
            self.tables.update({ref.name: ref for ref in run.outputs})
            self.artifacts.update({ref.name: ref for ref in run.artifacts})
            if receipt.exports:
                self.exports[stage.name] = receipt.exports
        return StageOutcome(stage.name, receipt.status, receipt, run.error)

    def run(self, targets: Sequence[str] | None = None) -> RunResult:
        plan = closure(self.stages, targets)
        with writer_lock(self.layout, wait=self.options.wait, on_wait=self.options.on_wait):
            ensure_trusted_signer(self.layout, self.key.public_key())
            self.cleanup = clean_leftovers(self.layout, self.signer)
            begin_run(self.layout, self.run_id)
            outcomes: list[StageOutcome] = []
            failed: set[str] = set()
            producer = {name: s.name for name, s in _producers(plan).items()}
            for stage in plan:
                upstream = {producer[t] for t in _reads(stage) if t in producer}
                if upstream & failed:
                    failed.add(stage.name)
                    outcomes.append(StageOutcome(stage.name, "skipped_upstream_failed", None))
                    continue
                with self.options.tracker.stage(stage.name):
                    outcome = self.run_stage(stage)
                outcomes.append(outcome)
                if outcome.status != "ok":
                    failed.add(stage.name)
            summary = as_signed(self._summarise(outcomes))
            receipts = [o.receipt for o in outcomes if o.receipt is not None]
            write_run_statement(
                self.layout, summary, self.receipt_digests, self.exports, self.key,
                {SUMMARY_FILE: summary_json(summary), SUMMARY_MD: summary_markdown(summary, receipts)},
            )
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
            rejected_cache=self.rejected,
            cleanup=self.cleanup,
        )
