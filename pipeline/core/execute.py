"""The executor seam: one module-level function runs a stage from a picklable task.

The runner decides *whether* a stage runs (cache key, verified lookup) and what its
receipt says; an executor decides *where* it runs. ``execute_task`` is the whole of one
execution (context, the stage's function, count conservation, writing its tables and
artifacts to the store), and a ``StageTask`` is plain data (the stage, which pickles
by reference, its config as JSON, its input refs, the root), so any process that sees
the root can run it. ``LocalExecutor`` runs it in this process (with the CLI's progress bars);
``SubprocessExecutor`` in a spawned one, which proves that nothing but the task and its
result crosses the boundary: what a Ray or GPU executor will build on, by the stage's
declared ``Resources``. Deep verify calls the same function with ``store=False`` to get
the canonical tables to compare instead of writing them.
"""

from __future__ import annotations

import multiprocessing
import shutil
import tempfile
from collections.abc import Mapping
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import pyarrow as pa

from pipeline.core.artifacts import put_artifact
from pipeline.core.cache import conservation_problem
from pipeline.core.errors import ConservationError, TracelakeError
from pipeline.core.hashing import CacheMac
from pipeline.core.progress import Tracker
from pipeline.core.sources import SourceFile
from pipeline.core.stage import Stage, StageContext, StageResult
from pipeline.core.store import (
    LakeLayout,
    TableStream,
    canonicalize,
    materialize,
    put_stream,
    put_table,
)
from pipeline.core.trees import manifest, tree_digest
from pipeline.core.workpool import PoolStats, WorkPool
from schemas.receipt import ArtifactRef, InputRef, ObjectRef
from schemas.records import QUARANTINE
from schemas.tables import TableSpec


@dataclass(frozen=True)
class StageTask:
    # Pickles by reference: its functions and config model by module and name, its
    # declared fields (version, traits, specs) as data.
    stage: Stage
    config: dict[str, Any]  # the full config as JSON (external paths included)
    inputs: dict[str, ObjectRef]
    sources: dict[str, list[SourceFile]]
    externals: dict[str, InputRef]
    root: str
    recorded_at: str
    workers: int
    cache_key: str
    cache_mac: CacheMac
    artifact_inputs: dict[str, InputRef] = field(default_factory=dict)
    scratch: str | None = None  # None: the lake's data/cache/<stage>, resumable by key
    store: bool = True  # False: hand back canonical tables instead of storing them


@dataclass
class TaskResult:
    outputs: list[ObjectRef]
    artifacts: list[ArtifactRef]
    records_in: int
    records_out: int
    quarantined: dict[str, int]
    filtered: dict[str, int]
    stats: dict[str, Any]
    validation_errors: list[str]
    sources_read: dict[str, list[SourceFile]] | None
    tables: dict[str, pa.Table] = field(default_factory=dict)  # store=False only
    pool: PoolStats | None = None  # the executor's units of work, where it ran them


def output_specs(stage: Stage) -> dict[str, TableSpec]:
    """Lake table name -> spec, the quarantine table included where the stage has one."""
    specs = {spec.name: spec for spec in stage.outputs}
    if stage.traits.maps_records:
        specs[stage.quarantine_table] = QUARANTINE
    return specs


def resume_dir(layout: LakeLayout, stage: Stage, key: str) -> Path:
    return layout.cache / stage.name / "resume" / key


def execute_task(task: StageTask, tracker: Tracker | None = None, pool: WorkPool | None = None) -> TaskResult:
    stage = task.stage
    layout = LakeLayout(Path(task.root))
    scratch = Path(task.scratch) if task.scratch is not None else layout.cache / stage.name
    resume = resume_dir(layout, stage, task.cache_key) if task.scratch is None else None
    scratch.mkdir(parents=True, exist_ok=True)
    artifacts_root = Path(tempfile.mkdtemp(prefix=".tmp-artifacts-", dir=scratch)) if stage.artifacts else None
    try:
        return _execute(task, stage, layout, scratch, resume, artifacts_root, tracker, pool)
    finally:
        if artifacts_root is not None:
            shutil.rmtree(artifacts_root, ignore_errors=True)


def _execute(task: StageTask, stage: Stage, layout: LakeLayout, scratch: Path, resume: Path | None,
             artifacts_root: Path | None, tracker: Tracker | None, pool: WorkPool | None) -> TaskResult:
    ctx = StageContext(
        layout=layout,
        config=stage.config_model.model_validate(task.config),
        inputs=dict(task.inputs),
        sources=dict(task.sources),
        recorded_at=task.recorded_at,
        workers=task.workers,
        tracker=tracker or Tracker(),
        scratch=scratch,
        cache_mac=task.cache_mac,
        externals=dict(task.externals),
        artifact_inputs=dict(task.artifact_inputs),
        resume_dir=resume,
        artifacts_root=artifacts_root,
        cache_externals=task.store,  # deep verify: every byte, and the lake's caches untouched
        pool=pool,
    )
    result = stage.run(ctx)
    problem = conservation_problem(result.records_in, result.records_out, result.quarantined, result.filtered)
    if problem:
        raise ConservationError(f"{stage.name}: {problem}")
    missing = [n for n in stage.output_names if stage.result_key(n) not in result.tables]
    missing += [a.name for a in stage.artifacts if a.name not in result.artifacts and not a.optional]
    if missing:
        raise TracelakeError(f"{stage.name} did not produce {missing}")
    undeclared = sorted(set(result.artifacts) - {a.name for a in stage.artifacts})
    if undeclared:
        raise TracelakeError(f"{stage.name} produced undeclared artifacts {undeclared}")
    for name, folder in result.artifacts.items():
        if artifacts_root is None or folder != artifacts_root / name:
            raise TracelakeError(f"{stage.name}: artifact {name} must be written into ctx.artifact_dir({name!r})")
    if ctx.resumed_from:
        result.stats = {**result.stats, "resumed_checkpoints": sorted(set(ctx.resumed_from))}
    done = TaskResult(
        outputs=[], artifacts=[], records_in=result.records_in, records_out=result.records_out,
        quarantined=dict(result.quarantined), filtered=dict(result.filtered), stats=dict(result.stats),
        validation_errors=list(result.validation_errors), sources_read=result.sources_read,
    )
    if not task.store:
        done.tables = _canonical_tables(stage, result)
        done.artifacts = [_described(a.name, result.artifacts[a.name]) for a in stage.artifacts
                          if a.name in result.artifacts]
        return done
    done.outputs = _store_tables(layout, stage, result, task.workers)
    done.artifacts = [put_artifact(layout, a.name, result.artifacts[a.name]) for a in stage.artifacts
                      if a.name in result.artifacts]
    if resume is not None and resume.exists():
        shutil.rmtree(resume)  # stored: nothing left to resume
    return done


def _described(name: str, folder: Path) -> ArtifactRef:
    """An artifact as it would be stored (its digest and manifest), without storing it."""
    files = manifest(folder)
    return ArtifactRef(name=name, digest=tree_digest(files), files=files, bytes=sum(f.size for f in files), path="")


def _canonical_tables(stage: Stage, result: StageResult) -> dict[str, pa.Table]:
    """Gathered while the scratch area (that a stream may read from) is still there."""
    return {
        name: canonicalize(materialize(result.tables[stage.result_key(name)]), spec.schema, spec.sort_keys)
        for name, spec in output_specs(stage).items()
    }


def _store_tables(layout: LakeLayout, stage: Stage, result: StageResult, workers: int) -> list[ObjectRef]:
    specs = output_specs(stage)

    def store(name: str, raw: pa.Table | TableStream) -> ObjectRef:
        spec = specs[name]
        if isinstance(raw, TableStream):
            return put_stream(layout, name, spec.schema, spec.sort_keys, raw)
        return put_table(layout, name, canonicalize(raw, spec.schema, spec.sort_keys))

    # Sorting, hashing and Parquet encoding release the GIL: two tables at a time keep
    # both cores busy. Popping frees each raw table as soon as it is handed over.
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        futures = [pool.submit(store, name, result.tables.pop(stage.result_key(name))) for name in stage.output_names]
        return [future.result() for future in futures]


class Executor(Protocol):
    name: str  # as the receipt records it

    def run(self, task: StageTask, tracker: Tracker) -> TaskResult: ...


class LocalExecutor:
    """In this process: today's behaviour, with the caller's progress bars."""

    name = "local"

    def run(self, task: StageTask, tracker: Tracker) -> TaskResult:
        return execute_task(task, tracker)


class SubprocessExecutor:
    """In a freshly spawned interpreter per task (no state inherited from this one)."""

    name = "subprocess"

    def run(self, task: StageTask, tracker: Tracker) -> TaskResult:
        with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
            return pool.submit(execute_task, task).result()


EXECUTORS: Mapping[str, type[LocalExecutor] | type[SubprocessExecutor]] = {
    "local": LocalExecutor, "subprocess": SubprocessExecutor,
}
EXECUTOR_NAMES = (*EXECUTORS, "ray", "ray://HOST:PORT", "ray:auto")


def make_executor(name: str, workers: int) -> Executor:
    """The executor ``--executor`` (or ``[run] executor``) names: a clear error for an
    unknown name, and for Ray when the optional extra is not installed."""
    from pipeline.core.ray_executor import RayExecutor, import_ray, is_ray

    if name in EXECUTORS:
        return EXECUTORS[name]()
    if is_ray(name):
        executor = RayExecutor.parse(name, workers)
        import_ray()
        return executor
    raise TracelakeError(f"unknown executor {name!r}; known: {', '.join(EXECUTOR_NAMES)}")
