"""The Ray executor: a stage's units of work as plain Ray tasks across a cluster.

``--executor ray`` starts a local cluster in this process; ``--executor ray://HOST:PORT``
(or ``ray:auto``, the cluster this machine belongs to) joins an existing one. The
stage itself runs here, in the driver: it decides its units, hands them to
``RayPool.map`` and does its reduce (collect's cross-file merge and sort, collate's
table, the exports' firewall) as it does locally, so the outputs and their digests are
the local executor's whatever the number of workers or the order tasks finish in.

Plain tasks, not Ray Data: each unit is one function call on one picklable argument,
results come back in input order, and every unit's failure is handled here: a unit
is tried up to ``1 + retries`` times (a killed worker, an out-of-memory kill, an
exception), then handed back as ``Failed`` for the stage to decide on. Workers check,
once per process, that their code is the driver's (the stage's code digest, which the
cache key holds): a node running other code fails its units instead of writing what
the receipt does not describe.

Ray is the optional extra ``tracelake[ray]``; nothing here imports it until a Ray
executor is asked for.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pipeline.core.errors import TracelakeError
from pipeline.core.progress import Tracker
from pipeline.core.workpool import Failed, PoolStats, one_line

T = TypeVar("T")
R = TypeVar("R")

RETRIES = 3  # attempts after the first, per unit
_WAIT_S = 0.2  # how often progress is refreshed while tasks run


def is_ray(name: str) -> bool:
    return name == "ray" or name.startswith(("ray://", "ray:"))


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise TracelakeError(
            "the Ray executor needs Ray, which is not installed: pip install 'tracelake[ray]'"
        ) from None
    return ray


@dataclass
class RayExecutor:
    """Runs each stage here with a ``RayPool`` for its units; ``close`` stops a cluster
    this executor started."""

    address: str | None = None  # None: a local cluster with ``num_cpus`` CPUs
    num_cpus: int | None = None
    retries: int = RETRIES
    runtime_env: dict[str, Any] | None = None  # passed to ray.init (env vars, setup hooks)
    name: str = "ray"
    dashboard: str | None = field(default=None, init=False)
    _started: bool = field(default=False, init=False)

    @classmethod
    def parse(cls, name: str, workers: int) -> RayExecutor:
        if name == "ray":
            return cls(num_cpus=workers)
        if name.startswith("ray://"):
            return cls(address=name, name=name)
        if name == "ray:auto":
            return cls(address="auto", name=name)
        raise TracelakeError(f"unknown Ray executor {name!r}; use ray, ray://HOST:PORT or ray:auto")

    def connect(self) -> Any:
        ray = import_ray()
        if not ray.is_initialized():
            try:
                context = ray.init(
                    address=self.address, num_cpus=self.num_cpus if self.address is None else None,
                    include_dashboard=False if self.address is None else None,
                    log_to_driver=False, logging_level=logging.ERROR, configure_logging=True,
                    runtime_env=self.runtime_env,
                )
            except (ConnectionError, RuntimeError, ValueError) as error:
                raise TracelakeError(f"cannot start or reach the Ray cluster {self.name}: {one_line(error)}") from None
            self._started = True
            url = getattr(context, "dashboard_url", None)
            self.dashboard = f"http://{url}" if url and not str(url).startswith("http") else url or None
        return ray

    def run(self, task: Any, tracker: Tracker) -> Any:
        from pipeline.core.execute import execute_task

        self.connect()
        pool = RayPool(self.retries, tracker, self.name, expected_code=task.stage.full_version,
                       stage=task.stage, dashboard=self.dashboard)
        done = execute_task(task, tracker, pool=pool)
        done.pool = pool.stats
        return done

    def close(self) -> None:
        if self._started:
            import ray

            ray.shutdown()
            self._started = False


@functools.cache
def _code_of(stage: Any) -> str:
    return str(stage.full_version)


def _run_unit(expected_code: str, stage: Any, fn: Callable[[T], R], item: T) -> tuple[R, float]:
    """A unit on a worker, after checking the worker runs the driver's code; with its
    run time."""
    if stage is not None and _code_of(stage) != expected_code:
        raise TracelakeError(
            f"worker on {os.uname().nodename} runs other tracelake code than the driver "
            f"({_code_of(stage)} != {expected_code}): install the same version on every node"
        )
    started = time.perf_counter()
    result = fn(item)
    return result, time.perf_counter() - started


@dataclass
class RayPool:
    retries: int
    tracker: Tracker
    name: str
    expected_code: str
    stage: Any = None
    dashboard: str | None = None  # shown beside the progress, where the cluster has one
    stats: PoolStats = field(default_factory=PoolStats)

    def map(self, fn: Callable[[T], R], items: Sequence[T], description: str) -> Iterator[R | Failed]:
        import ray

        remote: Any = ray.remote(_run_unit).options(max_retries=0, num_cpus=1)
        fn_ref = ray.put(fn)
        stage_ref = ray.put(self.stage)
        # Enough in flight to keep every CPU busy with the next unit queued; bounded so
        # that a big stage's arguments and results do not all sit in the object store.
        resources: dict[str, float] = ray.cluster_resources()  # type: ignore[no-untyped-call]
        window = max(2, 2 * int(resources.get("CPU", 1)))
        pending: dict[Any, tuple[int, int]] = {}  # ref -> (index, attempt)
        results: dict[int, R | Failed] = {}
        submitted = yielded = failed = 0

        def submit(index: int, attempt: int) -> None:
            ref = remote.remote(self.expected_code, stage_ref, fn_ref, items[index])
            pending[ref] = (index, attempt)

        started = time.perf_counter()
        shown = f"{description} ({self.dashboard})" if self.dashboard else description
        with self.tracker.tasks(len(items), shown) as show:
            try:
                while yielded < len(items):
                    while len(pending) < window and submitted < len(items):
                        submit(submitted, 1)
                        submitted += 1
                    ready, _ = ray.wait(list(pending), num_returns=1, timeout=_WAIT_S)
                    for ref in ready:
                        index, attempt = pending.pop(ref)
                        try:
                            results[index], seconds = ray.get(ref)
                            self.stats.unit_s += seconds
                        except ray.exceptions.RayError as error:
                            if attempt <= self.retries:
                                self.stats.retries += 1
                                submit(index, attempt + 1)
                                continue
                            failed += 1
                            self.stats.failed += 1
                            results[index] = Failed(_cause(error), attempt)
                        self.stats.tasks += 1
                    show(len(results) + yielded, len(pending), failed)
                    while yielded in results:
                        yield results.pop(yielded)
                        yielded += 1
            finally:
                for ref in pending:  # a consumer that stopped early, an interrupt
                    ray.cancel(ref, force=True)
                self.stats.map_s += time.perf_counter() - started


def _cause(error: BaseException) -> str:
    """The failure as one line: a task's own exception rather than Ray's wrapper."""
    cause = getattr(error, "cause", None)
    if isinstance(cause, BaseException):
        return one_line(cause)
    return one_line(error)
