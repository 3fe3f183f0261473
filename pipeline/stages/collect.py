"""collect: Claude Code transcripts and Codex rollouts -> sessions, messages, tool calls,
prompts, branches, subagents (+ quarantine).

Every input line lands in exactly one tally: mapped, counted (a known non-message
entry), exact duplicate, blank, or quarantined with a reason. Files are parsed in worker
processes into cached per-file shards keyed by content, so adding sessions re-parses only
new or changed files; the merge over all shards is what makes the result independent of
file order, worker count and which shards came from cache.
"""

from __future__ import annotations

import functools
import gc
import logging
import multiprocessing
import os
import sys
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from pipeline.collect.errors import prepare_screen as prepare_error_screen
from pipeline.collect.merge import merge_shards
from pipeline.collect.redact import Redactor, prepare_screens
from pipeline.collect.shard import build_batch, load_index, prune, shard_key
from pipeline.collect.tasks import CollectSettings, ShardTask
from pipeline.core.errors import TracelakeError
from pipeline.core.hashing import CacheMac
from pipeline.core.imports import block_pandas
from pipeline.core.sources import SET_ASIDE, TASK_FAILED, SourceFile
from pipeline.core.stage import Stage, StageContext, StageResult
from pipeline.core.workpool import Failed, WorkPool
from pipeline.secrets import catalogue
from schemas.records import COLLECT_TABLES

VERSION = "2"  # 2: Claude Code Bash exit codes
log = logging.getLogger(__name__)


class CollectConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    fold_home: bool = Field(True, description="Write paths under the home directory as ~/...")
    max_line_bytes: int = Field(
        4 * 1024 * 1024, gt=0,
        description="Lines longer than this are quarantined as oversized_line without parsing.",
    )
    max_input_bytes: int = Field(
        16 * 1024, gt=0, description="tool_calls.input_json is cut above this many UTF-8 bytes."
    )
    max_result_bytes: int = Field(
        16 * 1024, gt=0, description="tool_calls.result_text is cut above this many UTF-8 bytes."
    )
    max_content_bytes: int = Field(
        64 * 1024, gt=0,
        description="Any single string inside messages.content_json is cut above this many bytes.",
    )


def _settings(config: CollectConfig) -> CollectSettings:
    """The config as the (pydantic-free, compiled) workers take it: field for field, so
    a field added to one and not the other fails here (and in its test)."""
    return CollectSettings(**config.model_dump())


SIDECAR = ".meta.json"


def _sidecar_name(display_path: str) -> str | None:
    """Claude subagent sidecar: ``agent-<id>.meta.json`` beside ``agent-<id>.jsonl``."""
    name = display_path.rsplit("/", 1)[-1]
    if not name.startswith("agent-") or not display_path.endswith(".jsonl"):
        return None
    return display_path[: -len(".jsonl")] + SIDECAR


def _tasks(ctx: StageContext[Any], settings: CollectSettings) -> list[ShardTask]:
    tasks = []
    shard_dir = ctx.scratch / "shards"
    version = STAGE.full_version  # a shard is reused only by the same collect code
    for kind in ("claude-code", "codex"):
        sources = ctx.sources.get(kind, [])
        sidecars = {f.display_path: f for f in sources if f.display_path.endswith(SIDECAR)}
        for source in sources:
            if source.display_path.endswith(SIDECAR) or source.set_aside is not None:
                continue
            name = _sidecar_name(source.display_path) if kind == "claude-code" else None
            meta = sidecars.get(name) if name else None
            digest = meta.digest if meta else None
            key = shard_key(kind, source.display_path, source.digest, digest, settings, version)
            tasks.append(
                ShardTask(
                    kind=kind, path=str(source.path), display_path=source.display_path, key=key,
                    digest=source.digest, shard_dir=str(shard_dir),
                    meta_path=str(meta.path) if meta else None, settings=settings,
                    stage_version=version, cache_mac=ctx.cache_mac,
                )
            )
    # Merge order is by recorded path, never by discovery or completion order.
    tasks.sort(key=lambda t: (t.display_path, t.kind))
    return tasks


def _set_aside(ctx: StageContext[Any]) -> list[tuple[str, str, str]]:
    """(path, reason) of the files discovery could not read or name, the path redacted
    (a token in a folder name goes): each one quarantine row, and a warning, while the
    run goes on."""
    unread = sorted((f.display_path, f.set_aside) for files in ctx.sources.values() for f in files
                    if f.set_aside is not None)
    if not unread:
        return []
    shown = Redactor(fold_home=False).redact_many([path for path, _ in unread])
    redacted = [(str(path), reason, "") for path, (_, reason) in zip(shown, unread, strict=True)]
    for path, reason, _ in redacted:
        log.warning("collect: %s set aside (%s)", path, reason.replace("_", " "))
    return redacted


def _failed_files(failed: list[ShardTask], failures: dict[str, str], fold_home: bool) -> list[tuple[str, str, str]]:
    """(redacted path, reason, detail) of the files whose parse failed on every attempt:
    each one quarantine row naming the last error (redacted as the tables are, the
    file's absolute path shown as it is recorded), and a warning, while the run goes on."""
    if not failed:
        return []
    redactor = Redactor(fold_home=fold_home)
    shown = redactor.redact_many([task.display_path for task in failed])
    errors = redactor.redact_many([failures[task.key].replace(task.path, task.display_path) for task in failed])
    out = []
    for path, error in zip(shown, errors, strict=True):
        log.warning("collect: %s quarantined, its parse failed on every attempt (%s)", path, error)
        out.append((str(path), TASK_FAILED, f"its parse failed on every attempt on the executor's pool: {error}"))
    return out


def _as_read(ctx: StageContext[Any], tasks: list[ShardTask], members: list[dict[str, Any]],
             failed: list[ShardTask]) -> dict[str, list[SourceFile]] | None:
    """The sources with the digests of what the workers actually read, when any file
    (or sidecar) changed after the runner digested it, or failed to parse (recorded
    as set aside: a later run parses it again); None when none did."""
    read: dict[str, tuple[str, int | None]] = {task.path: (SET_ASIDE + TASK_FAILED, None) for task in failed}
    for task, member in zip(tasks, members, strict=True):
        if member.get("cached"):
            continue
        read[task.path] = (member["digest"], int(member["stats"]["bytes"]))
        if task.meta_path is not None:
            read[task.meta_path] = (member["meta_digest"], None)
    changed = False
    out: dict[str, list[SourceFile]] = {}
    for kind, files in ctx.sources.items():
        out[kind] = []
        for f in files:
            digest, size = read.get(str(f.path), (f.digest, f.size))
            if digest != f.digest:
                changed = True
                f = SourceFile(f.kind, f.path, f.display_path, f.size if size is None else size, digest)
            out[kind].append(f)
    return out if changed else None


# A batch (one container) is a run of consecutive files of about this many bytes: big
# enough that per-container costs vanish, small enough to balance two workers and keep a
# worker's column lists small.
_BATCH_BYTES = 8 << 20
_BATCHES_PER_WORKER = 4


def _session_order(task: ShardTask) -> tuple[str, str]:
    """About where a file's rows fall in the tables' canonical (session id) order: a
    Claude session file is named by its id, and a subagent's id is its parent's plus
    its own name. Containers cut in this order let the final write walk them almost
    sequentially (only layout: merge order is by display path whatever the batches)."""
    path = Path(task.display_path)
    if path.parent.name == "subagents":
        return f"{path.parent.parent.name}/{path.stem}", task.display_path
    return path.stem, task.display_path


def _batches(pending: list[ShardTask], sizes: dict[str, int], workers: int) -> list[list[ShardTask]]:
    """Files in about session order, cut at ~``_BATCH_BYTES``, or finer when the total
    would leave a worker idle; biggest first so one late giant does not leave a worker
    idle at the end."""
    pending = sorted(pending, key=_session_order)
    target = min(_BATCH_BYTES, sum(sizes.values()) // max(1, workers * _BATCHES_PER_WORKER) + 1)
    batches: list[list[ShardTask]] = []
    current: list[ShardTask] = []
    size = 0
    for task in pending:
        current.append(task)
        size += sizes[task.key]
        if size >= target:
            batches.append(current)
            current, size = [], 0
    if current:
        batches.append(current)
    return sorted(batches, key=lambda b: -sum(sizes[t.key] for t in b))


def _build_all(ctx: StageContext[Any], tasks: list[ShardTask]) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Each file's member entry (container, row ranges, stats), parsing only the files
    no container holds yet; and the files whose parse failed on every attempt on the
    executor's pool (task key -> error), which have no entry."""
    index = load_index(ctx.scratch / "shards", ctx.cache_mac)
    results: dict[str, dict[str, Any]] = {}
    failures: dict[str, str] = {}
    pending = []
    for task in tasks:
        cached = index.get(task.key)
        if cached is None:
            pending.append(task)
        else:
            results[task.key] = {**cached, "cached": True}
    sizes = {t.key: Path(t.path).stat().st_size for t in pending}
    batches = _batches(pending, sizes, ctx.workers)
    with ctx.tracker.meter(sum(sizes.values()), "collect") as advance:
        _build_pending(ctx, pending, batches, sizes, results, advance, failures)
    return [results[t.key] for t in tasks if t.key not in failures], failures


def _build_pending(
    ctx: StageContext[Any], pending: list[ShardTask], batches: list[list[ShardTask]], sizes: dict[str, int],
    results: dict[str, dict[str, Any]], advance: Callable[[int], None], failures: dict[str, str],
) -> None:
    def done(members: list[dict[str, Any]]) -> None:
        _record(results, members)
        advance(sum(sizes[m["task_key"]] for m in members))

    if pending:
        # The secret catalogue's rules take ~0.4 s of native code to load: unless the CLI
        # started them already (a root's first run), they load now that there are files
        # to parse, while the first batches parse here; a collect whose files all come
        # from the shard cache never loads them.
        catalogue.prefetch()
        # Compile (or load) the redaction screens here, once: forked workers inherit
        # them (compiling the catalogue's screen takes seconds; the build or the lake's
        # cache keep it compiled).
        screens = ctx.scratch / "screens"
        prepare_screens(pending[0].settings.fold_home, screens, ctx.cache_mac)
        prepare_error_screen(screens, ctx.cache_mac)
        if ctx.pool is not None:
            unit = functools.partial(build_prepared, str(screens), pending[0].settings.fold_home, ctx.cache_mac)
            _build_on_pool(ctx.pool, unit, batches, done, failures)
            return
    batches = list(batches)
    if ctx.workers > 1:
        # No fork while the catalogue's rules load in a thread (unsafe, and each worker
        # would load its own): parse here meanwhile; the workers then inherit the rules.
        while len(batches) > 1 and catalogue.loading():
            done(build_batch(batches.pop(0)))
    if ctx.workers <= 1 or len(batches) <= 1:
        for batch in batches:
            done(build_batch(batch))
    else:
        finished = 0
        # Freeze the parent's objects out of the cyclic GC before forking: otherwise the
        # children's collections touch (and so copy) every inherited page.
        gc.collect()
        gc.freeze()
        try:
            with ProcessPoolExecutor(
                max_workers=ctx.workers, mp_context=_pool_context(), initializer=_worker_init
            ) as pool:
                for stats_list in pool.map(build_batch, batches, chunksize=1):
                    done(stats_list)
                    finished += 1
        except BrokenProcessPool as error:
            # A worker died (killed, out of memory, a crash in native code). Batches are
            # pure and written atomically, so the rest is simply parsed here instead.
            log.warning("collect: worker pool broke (%s); parsing %d batches in-process",
                        error, len(batches) - finished)
            for batch in batches[finished:]:
                done(build_batch(batch))
        finally:
            gc.unfreeze()


def _build_on_pool(pool: WorkPool, unit: Callable[[list[ShardTask]], list[dict[str, Any]]],
                   batches: list[list[ShardTask]], done: Callable[[list[dict[str, Any]]], None],
                   failures: dict[str, str]) -> None:
    """Batches as the executor's tasks. A batch that fails on every attempt is split
    into its files, each its own task: the files that parse go on, and a file that
    still fails alone is recorded in ``failures`` (quarantined as ``task_failed``).
    When no unit succeeds at all, the failure is the cluster's (a node without the
    root, a broken install), not the files': the stage fails instead of quarantining
    every file."""
    singles: list[list[ShardTask]] = []
    succeeded = split = 0
    for batch, outcome in zip(batches, pool.map(unit, batches, "collect tasks"), strict=True):
        if not isinstance(outcome, Failed):
            done(outcome)
            succeeded += 1
        elif len(batch) == 1:
            failures[batch[0].key] = outcome.error
        else:
            split += 1
            singles += [[task] for task in batch]
    if singles:
        log.warning("collect: %d batch(es) failed on every attempt; their %d files run one by one",
                    split, len(singles))
    for single, outcome in zip(singles, pool.map(unit, singles, "collect retries"), strict=True):
        if isinstance(outcome, Failed):
            failures[single[0].key] = outcome.error
        else:
            done(outcome)
            succeeded += 1
    if failures and not succeeded:
        first = sorted(failures.values())[0]
        raise TracelakeError(f"collect: every unit of work failed on every attempt on the executor's pool, "
                             f"so the cause is not one file (e.g. {first})")


_PREPARED: tuple[str, bool] | None = None


def build_prepared(screens: str, fold_home: bool, mac: CacheMac, batch: list[ShardTask]) -> list[dict[str, Any]]:
    """``build_batch`` in a process that did not fork from the stage's: the redaction
    screens load once per process from the lake's compiled cache instead of being
    compiled again."""
    global _PREPARED
    if _PREPARED != (screens, fold_home):
        prepare_screens(fold_home, Path(screens), mac)
        prepare_error_screen(Path(screens), mac)
        _PREPARED = (screens, fold_home)
    return build_batch(batch)


# Libraries known to run native thread pools that make ``fork`` unsafe once imported.
_THREADED = ("torch", "tokenizers", "transformers")
# Modules a pool worker needs, imported once in the fork server rather than per worker.
_PRELOAD = ["pipeline.collect.shard", "pipeline.collect.claude_code", "pipeline.collect.codex"]


def _pool_context() -> multiprocessing.context.BaseContext:
    """``fork``, unless the process has loaded a library with native thread pools.

    ``fork`` copies the caller's memory without its other threads: a process that runs
    thread pools (tokenizers, torch) can hand a child a lock held forever, and a child
    that blocks or dies on it breaks the pool. Such a process gets a fork server (a
    clean process the workers fork from). It is not the default because it costs
    0.4-1.1 s of wall time per run (measured on the 50 MB corpus): each worker also
    re-imports the caller's ``__main__`` (the CLI: polars, duckdb...), as
    multiprocessing does for every start method but ``fork``. ``TRACELAKE_COLLECT_START``
    (fork, forkserver, spawn) overrides the choice.
    """
    method = os.environ.get("TRACELAKE_COLLECT_START") or (
        "forkserver" if any(name in sys.modules for name in _THREADED) else "fork"
    )
    context = multiprocessing.get_context(method)
    if method == "forkserver":
        context.set_forkserver_preload(_PRELOAD)
    return context


def _worker_init() -> None:
    """Pool workers only parse and never need pandas (see pipeline.core.imports)."""
    block_pandas()


def _record(results: dict[str, dict[str, Any]], members: list[dict[str, Any]]) -> None:
    for member in members:
        results[member["task_key"]] = {**member, "cached": False}


def run(ctx: StageContext[CollectConfig]) -> StageResult:
    config = ctx.config
    assert isinstance(config, CollectConfig)
    settings = _settings(config)
    tasks = _tasks(ctx, settings)
    started = time.time()
    members, failures = _build_all(ctx, tasks)
    failed = [task for task in tasks if task.key in failures]
    tasks = [task for task in tasks if task.key not in failures]
    shard_lines: Counter[str] = Counter()
    repairs: Counter[str] = Counter()
    redactions: Counter[str] = Counter()
    redaction_rules: Counter[str] = Counter()
    for member in members:
        shard_lines.update(member["stats"]["lines"])
        repairs.update(member["stats"]["repairs"])
        redactions.update(member["stats"]["redactions"])
        redaction_rules.update(member["stats"].get("redaction_rules", {}))
    # A path appearing twice (same file under two kinds) would duplicate its shard.
    unique = list({m["key"]: m for m in members}.values())
    shard_dir = ctx.scratch / "shards"
    prune(shard_dir, {m["container"] for m in unique}, older_than=started)
    unread = sorted(_set_aside(ctx) + _failed_files(failed, failures, settings.fold_home))
    merged = merge_shards(shard_dir, unique, shard_lines, ctx.scratch / "spill", unread)
    redactions.update(merged.redactions)
    redaction_rules.update(merged.redaction_rules)
    lines = merged.lines
    records_in = sum(lines.values())
    quarantined = {k.split(":", 1)[1]: n for k, n in lines.items() if k.startswith("quarantined:")}
    filtered = {k: n for k, n in lines.items() if k.startswith("counted:")}
    for name in ("exact_duplicate", "blank_line"):
        if lines.get(name):
            filtered[name] = lines[name]
    files = {
        "total": len(tasks) + len(failed),
        "failed": len(failed),  # on every attempt on the executor's pool: quarantined as task_failed
        "parsed": sum(1 for m in members if not m["cached"]),
        "cached": sum(1 for m in members if m["cached"]),
        "bytes": sum(int(m["stats"]["bytes"]) for m in members),
        "empty": sum(1 for m in members if not m["stats"]["lines"]),
    }
    return StageResult(
        sources_read=_as_read(ctx, tasks, members, failed),
        tables=merged.tables,
        records_in=records_in,
        records_out=lines.get("mapped", 0),
        quarantined=dict(sorted(quarantined.items())),
        filtered=dict(sorted(filtered.items())),
        stats={
            "files": files,
            "lines": dict(sorted(lines.items())),
            "repairs": dict(sorted(repairs.items())),
            "redactions": dict(sorted(redactions.items())),
            "redaction_rules": dict(sorted(redaction_rules.items())),
            "set_aside": merged.set_aside,
            "rows": {name: table.rows for name, table in sorted(merged.tables.items())},
        },
    )


def _folds_home(config: CollectConfig) -> bool:
    return config.fold_home


STAGE = Stage(
    name="collect",
    version=VERSION,
    config_model=CollectConfig,
    inputs=(),
    outputs=tuple(COLLECT_TABLES.values()),
    run=run,
    source_kinds=("claude-code", "codex"),
    folds_home=_folds_home,
)
