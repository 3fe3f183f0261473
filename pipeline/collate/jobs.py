"""One example in, one proven row or one refusal out; run here or in worker processes.

The stage hands every SFT row and preference pair to ``collate_all``. Below
``parallel_min_examples()`` (or with one worker) they run in this process; above, in
``workers`` processes. On Linux they are forked from this one and use its renderer as
it is (a worker is ready at once, and the tokenizer's memory is shared); elsewhere, or
with ``TRACELAKE_COLLATE_START=spawn``, they are spawned and each loads the tokenizer
from the same folder and checks its digest again after loading, so a folder swapped
mid-run fails the stage instead of collating with what the receipt does not name.
Results come back in input order: the output is the same whatever the worker count and
start method (tested).
"""

from __future__ import annotations

import contextlib
import functools
import gc
import itertools
import json
import multiprocessing
import multiprocessing.context
import os
import sys
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

from pipeline.collate.masks import IGNORE, Masked, Refused, Renderer, mask_conversation
from pipeline.collate.sdpo import sdpo_row, strip_thinking_from
from pipeline.collate.tokenizer import ChatTemplate, load_tokenizer
from pipeline.core.errors import TracelakeError
from pipeline.core.lock import drop_inherited_locks
from pipeline.core.workpool import Failed, WorkPool

C = TypeVar("C")
R = TypeVar("R")

# Below this many examples one process does it all: a spawned worker first imports
# transformers and loads the tokenizer (about 2 s), more than it saves on a small
# export. A forked one starts in milliseconds: a few units of work pay for it.
PARALLEL_MIN_EXAMPLES = 1000
PARALLEL_MIN_EXAMPLES_FORKED = 256


@dataclass(frozen=True)
class Job:
    kind: Literal["sft", "preference", "sdpo"]
    row: dict[str, Any]


@dataclass
class Done:
    row: dict[str, Any] | None  # the collated row, or None when refused
    record_id: str
    session_id: str | None
    reason: str | None = None
    detail: str = ""
    masks: list[tuple[int, int, int, int]] = field(default_factory=list)  # tokens, trained, turns/tokens cut
    renders: dict[str, int] = field(default_factory=dict)  # conversations rendered per engine
    kind: Literal["sft", "preference", "sdpo"] = "sft"  # the job's
    site: int = -1  # an SDPO job's failing index


def parse_json(text: str | None) -> Any:
    try:
        return json.loads(text) if text else None
    except (ValueError, RecursionError):
        return None


def tools_of(text: str | None) -> list[dict[str, Any]] | None:
    tools = parse_json(text)
    return tools if isinstance(tools, list) and tools else None


def _size(masked: Masked) -> tuple[int, int, int, int]:
    return len(masked.input_ids), masked.trained, masked.dropped_turns, masked.dropped_tokens


def collate_job(renderer: Renderer, job: Job, max_length: int) -> Done:
    before = Counter(renderer.renders)
    done = _collate_job(renderer, job, max_length)
    done.renders = dict(renderer.renders - before)
    done.kind = job.kind
    if job.kind == "sdpo":
        done.site = job.row["site"].failing
    return done


def _collate_job(renderer: Renderer, job: Job, max_length: int) -> Done:
    row = job.row
    if job.kind == "sft":
        done = Done(None, row["task_id"], row["session_id"])
        try:
            masked = mask_conversation(renderer, parse_json(row["messages"]), tools_of(row["tools"]), max_length=max_length)
        except Refused as refused:
            done.reason, done.detail = refused.reason, refused.detail
            return done
        done.masks.append(_size(masked))
        done.row = {
            "task_id": row["task_id"], "session_id": row["session_id"], "split": row["split"],
            "input_ids": masked.input_ids,  # (the stage adds the attention mask, all ones)
            "labels": masked.labels, "n_tokens": len(masked.input_ids), "n_trained": masked.trained,
            "assistant_turns": masked.assistant_turns, "dropped_turns": masked.dropped_turns,
            "template": renderer.template.name,
        }
        return done
    if job.kind == "sdpo":
        site = row["site"]
        done = Done(None, row["task_id"], row["session_id"])
        messages = parse_json(row["messages"])  # parsed here, in the worker: the parent keeps only text
        if row["strip_thinking"]:
            messages = strip_thinking_from(messages)
        try:
            collated = sdpo_row(renderer, messages, tools_of(row["tools"]), site, row["hint"], row["hint_role"],
                                max_length)
        except Refused as refused:
            done.reason, done.detail = refused.reason, refused.detail
            return done
        done.masks.append((len(collated["student_input_ids"]), len(collated["student_response_idx"]), 0, 0))
        done.row = {"task_id": row["task_id"], "session_id": row["session_id"], "split": row["split"],
                    "failing_index": site.failing,
                    **collated, "template": renderer.template.name}
        return done
    done = Done(None, row["pair_id"], None)
    try:
        done.row = preference_row(renderer, row, max_length, done.masks)
    except Refused as refused:
        done.reason, done.detail = refused.reason, refused.detail
    return done


def preference_row(renderer: Renderer, row: dict[str, Any], max_length: int,
                   sizes: list[tuple[int, int, int, int]]) -> dict[str, Any]:
    """Prompt ids (through the generation prompt) and each side's completion ids with
    the mask of its own assistant turns; both sides must give the same prompt ids, and
    neither may be cut (a pair with one side truncated is not a fair comparison)."""
    prompt, tools = parse_json(row["prompt"]), tools_of(row["tools"])
    if not isinstance(prompt, list):
        raise Refused("bad_messages", "prompt")
    sides: dict[str, tuple[list[int], list[int], list[int]]] = {}
    for side in ("chosen", "rejected"):
        completion = parse_json(row[side])
        if not isinstance(completion, list):
            raise Refused("bad_messages", side)
        masked = mask_conversation(renderer, prompt + completion, tools, train_from=len(prompt),
                                   max_length=max_length)
        if masked.dropped_tokens:
            raise Refused("too_long", f"the {side} side exceeds max_length")
        start = masked.spans[0][0]
        ids = masked.input_ids
        sides[side] = (ids[:start], ids[start:], [int(label != IGNORE) for label in masked.labels[start:]])
        sizes.append(_size(masked))
    if sides["chosen"][0] != sides["rejected"][0]:
        raise Refused("prompt_ids_differ", "the two sides render the shared prompt differently")
    return {
        "pair_id": row["pair_id"],
        "prompt_input_ids": sides["chosen"][0],
        "chosen_input_ids": sides["chosen"][1], "chosen_mask": sides["chosen"][2],
        "rejected_input_ids": sides["rejected"][1], "rejected_mask": sides["rejected"][2],
        "template": renderer.template.name,
    }


@dataclass(frozen=True)
class WorkerSetup:
    """What a worker needs to build the parent's renderer (all picklable)."""

    folder: str
    template: ChatTemplate
    kwargs: dict[str, Any]
    recheck: Callable[[], Path]  # the external input's digest check
    max_length: int


_WORKER: tuple[Renderer, int] | None = None
_WORKER_KEY: str | None = None  # of the setup the worker's renderer was built from


def _key(setup: WorkerSetup) -> str:
    # Not the setup itself: its recheck (a partial) never equals its own unpickled copy.
    return json.dumps([setup.folder, setup.template.name, setup.template.text, setup.kwargs, setup.max_length],
                      sort_keys=True, default=str)


def _start_worker(setup: WorkerSetup) -> None:
    global _WORKER, _WORKER_KEY
    tokenizer = load_tokenizer(Path(setup.folder))
    setup.recheck()  # the folder was read between the parent's check and this one
    _WORKER = (Renderer(tokenizer, setup.template, setup.kwargs), setup.max_length)
    _WORKER_KEY = _key(setup)


def _adopt_renderer(renderer: Renderer, setup: WorkerSetup, parent: int) -> None:
    """A forked worker's start: the parent's renderer, built and checked there, as is.

    What the child inherits and must not use is replaced first: the standard streams
    (another thread, the progress display, may have held their buffers' locks at the
    fork) and the parent's writer-lock descriptors (a collate worker never writes the
    root). The child dies with the parent: an orphan would wait on its queue forever."""
    global _WORKER, _WORKER_KEY
    _die_with_parent(parent)
    _fresh_standard_streams()
    drop_inherited_locks()
    _WORKER = (renderer, setup.max_length)
    _WORKER_KEY = _key(setup)


def _die_with_parent(parent: int) -> None:
    import ctypes
    import signal

    pr_set_pdeathsig = 1  # linux/prctl.h
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before the call above
        os._exit(1)


def _fresh_standard_streams() -> None:
    """New stream objects on the same descriptors (new buffers, new locks), and every
    logging handler that wrote to the old ones pointed at them."""
    import logging

    replaced: dict[int, Any] = {}
    for name, fd in (("stdout", 1), ("stderr", 2)):
        old = getattr(sys, name)
        fresh = open(fd, "w", encoding=getattr(old, "encoding", None) or "utf-8", errors="backslashreplace",
                     buffering=1, closefd=False)
        replaced[id(old)] = fresh
        replaced[id(getattr(sys, f"__{name}__"))] = fresh
        setattr(sys, name, fresh)
        setattr(sys, f"__{name}__", fresh)
    loggers = [logging.getLogger(), *(v for v in logging.Logger.manager.loggerDict.values()
                                      if isinstance(v, logging.Logger))]
    for logger in loggers:
        for handler in logger.handlers:
            stream = getattr(handler, "stream", None)
            if isinstance(handler, logging.StreamHandler) and id(stream) in replaced:
                handler.setStream(replaced[id(stream)])


def start_method() -> str:
    """``fork`` on Linux: a collate worker runs only the renderer (the tokenizer, jinja,
    minijinja, numpy), never the parent's DuckDB, Arrow or polars pools, whose threads
    are idle at the fork; tokenizers disables its own thread pool in a forked child. What
    the child could share with a live thread, the standard streams and the writer lock,
    it replaces or drops (``_adopt_renderer``). ``spawn`` elsewhere (macOS's system
    libraries are not fork-safe), and ``TRACELAKE_COLLATE_START`` (fork or spawn)
    overrides the choice."""
    chosen = os.environ.get("TRACELAKE_COLLATE_START") or ("fork" if sys.platform == "linux" else "spawn")
    if chosen not in ("fork", "spawn"):
        raise TracelakeError(f"TRACELAKE_COLLATE_START must be fork or spawn, not {chosen!r}")
    return chosen


def parallel_min_examples() -> int:
    return PARALLEL_MIN_EXAMPLES_FORKED if start_method() == "fork" else PARALLEL_MIN_EXAMPLES


def _in_worker(job: Job) -> Done:
    assert _WORKER is not None
    renderer, max_length = _WORKER
    return collate_job(renderer, job, max_length)


def collate_chunk(setup: WorkerSetup, jobs: Sequence[Job]) -> list[Done]:
    """A chunk of jobs as one unit on an executor's pool: the worker builds the renderer
    once per process (and checks the folder's digest after loading it)."""
    if _WORKER is None or _WORKER_KEY != _key(setup):
        _start_worker(setup)
    return [_in_worker(job) for job in jobs]


# Examples per unit of work (an executor's task, a worker process's chunk): enough that
# a unit's overhead vanishes, few enough to balance the workers.
POOL_CHUNK = 64
# A worker process's chunk: small, so that the last chunks leave neither process idle
# for long (a unit here costs only its pickling).
PROCESS_CHUNK = 16
# Units in flight at once: the parent holds only these jobs and their results (the rest
# are still unread rows), so its memory does not grow with the export.
WINDOW_PER_WORKER = 4
# An executor's pool takes its units a window at a time (its map waits for the window).
POOL_WINDOW = 256


def _chunks(jobs: Iterable[Job], size: int) -> Iterator[list[Job]]:
    chunk: list[Job] = []
    for job in jobs:
        chunk.append(job)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def collate_all(renderer: Renderer, jobs: Iterable[Job], total: int, setup: WorkerSetup, workers: int,
                track: Callable[[Iterator[Done], int], Iterator[Done]], pool: WorkPool | None = None) -> Iterator[Done]:
    """Each job's result, in job order, as it comes. ``jobs`` is read as the work goes
    (``total`` of them), a bounded window ahead: the caller turns rows into Arrow as
    they come, so a run never holds every example, nor every result, in memory. Each call
    starts with no encoded pieces cached (a run's cost and memory never depend on what
    ran before it in the process)."""
    if renderer.pieces is not None:
        renderer.pieces.clear()
    if pool is not None and total >= PARALLEL_MIN_EXAMPLES:
        unit = functools.partial(collate_chunk, setup)
        chunks = _chunks(jobs, POOL_CHUNK)
        while window := list(itertools.islice(chunks, POOL_WINDOW)):
            for outcome in pool.map(unit, window, "collate tasks"):
                if isinstance(outcome, Failed):  # a unit that fails everywhere fails the stage
                    raise TracelakeError(f"collate: a chunk of examples failed on every attempt: {outcome.error}")
                yield from outcome
        return
    if workers <= 1 or total < parallel_min_examples():
        yield from track((collate_job(renderer, job, setup.max_length) for job in jobs), total)
        return
    method = start_method()
    context = multiprocessing.get_context(method)
    if method == "fork":  # as a spawned worker does after loading: the folder was read since the stage checked it
        setup.recheck()
    start: tuple[Callable[..., None], tuple[Any, ...]] = (
        (_adopt_renderer, (renderer, setup, os.getpid())) if method == "fork" else (_start_worker, (setup,)))
    with _pool(workers, context, *start) as processes:
        try:
            def submit(chunk: list[Job]) -> Future[list[Done]]:
                return processes.submit(collate_chunk, setup, chunk)

            yield from track(_windowed(submit, _chunks(jobs, PROCESS_CHUNK), workers * WINDOW_PER_WORKER), total)
        finally:  # a consumer that stops early: the queued jobs are dropped, not computed
            processes.shutdown(wait=True, cancel_futures=True)


def _pool(workers: int, context: multiprocessing.context.BaseContext, initializer: Callable[..., None],
          initargs: tuple[Any, ...]) -> ProcessPoolExecutor:
    """The worker processes, all started now (a fork context starts them at once, from
    this thread). What this process holds is frozen out of the collector while they
    fork: a child's garbage collection would otherwise write to every inherited object's
    header and copy the pages the parent shares with it."""
    processes = ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=initializer,
                                    initargs=initargs)
    if context.get_start_method() != "fork":
        return processes
    frozen_here = gc.get_freeze_count() == 0  # a caller's own freeze is left as it was
    gc.freeze()
    try:
        processes.submit(int).result()  # the pool forks every worker on its first submission
    except BaseException:
        processes.shutdown(wait=False, cancel_futures=True)
        raise
    finally:
        if frozen_here:
            gc.unfreeze()
    return processes


def _windowed(submit: Callable[[C], Future[list[R]]], chunks: Iterator[C], window: int) -> Iterator[R]:
    """The chunks' results in order, at most ``window`` chunks submitted ahead."""
    pending: deque[Future[list[R]]] = deque()
    for chunk in chunks:
        pending.append(submit(chunk))
        if len(pending) >= window:
            yield from pending.popleft().result()
    while pending:
        yield from pending.popleft().result()
