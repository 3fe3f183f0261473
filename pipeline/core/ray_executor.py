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
exception), then handed back as ``Failed`` for the stage to decide on. Before each
unit, the worker checks that its installed code gives the stage the version the
driver keyed it by: a node running other code fails the stage at once instead of
writing what the receipt does not describe.

Ray is the optional extra ``tracelake[ray]``; nothing here imports it until a Ray
executor is asked for.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import logging
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
PROBE_TIMEOUT_S = 300  # how long a GPU stage waits for a GPU of the cluster to come free
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
    num_gpus: int | None = None  # a local cluster's GPUs; None: the ones Ray finds here
    retries: int = RETRIES
    runtime_env: dict[str, Any] | None = None  # passed to ray.init (env vars, setup hooks)
    name: str = "ray"
    dashboard: str | None = field(default=None, init=False)
    # The current (or last) stage's units, kept here so that a stage that fails still
    # records what its units did.
    stats: PoolStats | None = field(default=None, init=False)
    _started: bool = field(default=False, init=False)
    _placement: dict[str, str] = field(default_factory=dict, init=False)  # stage -> the GPU node it runs on

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
        """Start or join the cluster (once): the CLI calls this before anything runs, so
        an address that cannot be reached is one line and exit 2, not a failed stage."""
        ray = import_ray()
        if self.address is not None and self.address.startswith("ray://") and importlib.util.find_spec("grpc") is None:
            raise TracelakeError(f"--executor {self.name} needs Ray's client: pip install 'tracelake[ray-client]'")
        if not ray.is_initialized():
            try:
                context = ray.init(
                    # "local": a new cluster here even when RAY_ADDRESS names another one
                    address=self.address or "local", num_cpus=self.num_cpus if self.address is None else None,
                    num_gpus=self.num_gpus if self.address is None else None,
                    include_dashboard=False if self.address is None else None,
                    log_to_driver=False, logging_level=logging.ERROR, configure_logging=True,
                    runtime_env=self.runtime_env,
                )
            except Exception as error:  # ConnectionError, a refused address, a version mismatch
                raise TracelakeError(f"cannot start or reach the Ray cluster {self.name}: {one_line(error)}") from None
            self._started = True
            url = getattr(context, "dashboard_url", None)
            self.dashboard = f"http://{url}" if url and not str(url).startswith("http") else url or None
        return ray

    def placed(self, stage: Any) -> Any:
        """The stage as the node that will run it sees it. A stage that wants a GPU runs
        on a GPU node when the cluster has one: one small task holding a GPU names the
        node and its engines (device class included), the stage will run pinned to that
        node, and its version (so its cache key and its receipt) names those engines with
        this driver's code: an adapter trained in bf16 on a GPU is not filed under a
        CPU's key, and a node running other code still fails the stage (``_run_unit``).
        Decided once per stage of a run; ``run`` follows the decision."""
        self._placement.pop(stage.name, None)
        gpus = stage.resources.gpu
        if not gpus or _cluster_gpus(self.connect()) < gpus:
            return stage
        node_id, engines = self._probe(stage, gpus)
        version = stage.version_with(engines)
        self._placement[stage.name] = node_id
        if version == stage.full_version:
            return stage
        moved = dataclasses.replace(stage)
        moved.__dict__["full_version"] = version  # the cached property, as the node computes it
        return moved

    def _probe(self, stage: Any, gpus: int) -> tuple[str, str | None]:
        ray = self.connect()
        probe: Any = ray.remote(_node_engines).options(num_cpus=0, num_gpus=gpus, max_retries=self.retries)
        ref = probe.remote(stage)
        try:
            node_id, engines = ray.get(ref, timeout=PROBE_TIMEOUT_S)
        except ray.exceptions.GetTimeoutError:
            with contextlib.suppress(Exception):
                ray.cancel(ref, force=True)
            raise TracelakeError(f"{stage.name}: no GPU of the cluster {self.name} came free within "
                                 f"{PROBE_TIMEOUT_S} s") from None
        except ray.exceptions.RayError as error:
            raise TracelakeError(f"{stage.name}: cannot reach a GPU node of {self.name}: {_cause(error)}") from None
        return str(node_id), None if engines is None else str(engines)

    def run(self, task: Any, tracker: Tracker) -> Any:
        from pipeline.core.execute import execute_task

        self.stats = None
        self.connect()
        node_id = self._placement.get(task.stage.name)
        if node_id is not None:
            return self._run_whole(task, tracker, task.stage.resources.gpu, node_id)
        pool = RayPool(self.retries, tracker, self.name, expected_code=task.stage.full_version,
                       stage=task.stage, dashboard=self.dashboard)
        self.stats = pool.stats
        done = execute_task(task, tracker, pool=pool)
        done.pool = pool.stats
        return done

    def _run_whole(self, task: Any, tracker: Tracker, gpus: int, node_id: str) -> Any:
        """A stage placed on a GPU node: the whole stage as one task holding the GPU on
        that node, writing its outputs to the root (which every node sees, as for every
        other unit). A lost worker or node is retried; the stage's own error is not (a
        deterministic failure would burn GPU hours three more times)."""
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        from pipeline.core.execute import execute_task

        pool = RayPool(self.retries, tracker, self.name, expected_code=task.stage.full_version,
                       stage=task.stage, dashboard=self.dashboard, num_cpus=task.stage.resources.cpu,
                       num_gpus=gpus, scheduling=NodeAffinitySchedulingStrategy(node_id, soft=False),
                       retry_own_errors=False)
        pool.stats.gpus = gpus
        self.stats = pool.stats
        [outcome] = list(pool.map(execute_task, [task], f"{task.stage.name} (one task, {gpus} GPU)"))
        if isinstance(outcome, Failed):
            raise TracelakeError(f"{task.stage.name} failed on its GPU node: {outcome.error}")
        outcome.pool = pool.stats
        return outcome

    def close(self) -> None:
        if self._started:
            import ray

            ray.shutdown()
            self._started = False


class OtherCode(TracelakeError):
    """A worker whose installed tracelake is not the driver's: fatal to the stage."""


def _run_unit(expected_code: str, stage: Any, fn: Callable[[T], R], item: T) -> tuple[R, float]:
    """A unit on a worker, after checking that the worker's installed code gives the
    stage the version the driver keyed it by (code digests are cached per process, so
    this costs microseconds after a worker's first unit); with its run time."""
    if stage is not None:
        installed = stage.installed_version()
        if installed != expected_code:
            raise OtherCode(
                f"a Ray worker runs other tracelake code than the driver ({stage.name} "
                f"{installed} != {expected_code}): install the same version on every node"
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
    num_cpus: float = 1.0  # what each unit holds while it runs
    num_gpus: int = 0
    scheduling: Any = None  # a Ray scheduling strategy (a node to pin to), None: Ray's choice
    retry_own_errors: bool = True  # False: only a lost worker or node is retried

    def map(self, fn: Callable[[T], R], items: Sequence[T], description: str) -> Iterator[R | Failed]:
        import ray

        remote: Any = ray.remote(_run_unit).options(max_retries=0, num_cpus=self.num_cpus, num_gpus=self.num_gpus,
                                                    scheduling_strategy=self.scheduling)
        fn_ref = ray.put(fn)
        stage_ref = ray.put(self.stage)
        # Enough in flight to keep every CPU busy with the next unit queued; bounded,
        # results waiting on a slow head unit included, so that a big stage's arguments
        # and results never all sit here or in the object store.
        resources: dict[str, float] = ray.cluster_resources()  # type: ignore[no-untyped-call]
        window = max(2, 2 * int(resources.get("CPU", 1)))
        pending: dict[Any, tuple[int, int]] = {}  # ref -> (index, attempt)
        results: dict[int, R | Failed] = {}
        submitted = yielded = failed = 0

        def submit(index: int, attempt: int) -> None:
            ref = remote.remote(self.expected_code, stage_ref, fn_ref, items[index])
            pending[ref] = (index, attempt)

        shown = f"{description} ({self.dashboard})" if self.dashboard else description
        clock: float | None = time.perf_counter()  # None while the consumer has a result
        with self.tracker.tasks(len(items), shown) as show:
            try:
                while yielded < len(items):
                    while submitted < len(items) and submitted - yielded < window:
                        submit(submitted, 1)
                        submitted += 1
                    ready, _ = ray.wait(list(pending), num_returns=1, timeout=_WAIT_S)
                    for ref in ready:
                        index, attempt = pending.pop(ref)
                        try:
                            results[index], seconds = ray.get(ref)
                            self.stats.unit_s += seconds
                        except ray.exceptions.RayError as error:
                            cause = getattr(error, "cause", None)
                            if isinstance(cause, OtherCode):
                                raise cause from None
                            own = isinstance(cause, BaseException)  # the unit's exception, not a lost worker
                            if attempt <= self.retries and (self.retry_own_errors or not own):
                                self.stats.retries += 1
                                submit(index, attempt + 1)
                                continue
                            failed += 1
                            self.stats.failed += 1
                            results[index] = Failed(_cause(error), attempt)
                        self.stats.tasks += 1
                    show(len(results) + yielded, len(pending), failed)
                    while yielded in results:
                        outcome = results.pop(yielded)
                        yielded += 1
                        if clock is not None:
                            self.stats.map_s += time.perf_counter() - clock
                        clock = None
                        yield outcome  # the consumer's time is its own, not the pool's
                        clock = time.perf_counter()
            finally:
                if clock is not None:
                    self.stats.map_s += time.perf_counter() - clock
                for ref in pending:  # a consumer that stopped early, an interrupt
                    try:
                        ray.cancel(ref, force=True)
                    except Exception:  # the cluster is already gone: nothing left to stop
                        pass


def _node_engines(stage: Any) -> tuple[str, str | None]:
    """On the node: its id and the stage's engines as installed there."""
    import ray

    return str(ray.get_runtime_context().get_node_id()), None if stage.engines is None else str(stage.engines())


def _cluster_gpus(ray: Any) -> float:
    resources: dict[str, float] = ray.cluster_resources()
    return float(resources.get("GPU", 0))


# A failure with no exception of the unit's own: said the same way every time (Ray's
# own message holds object ids and addresses, which would make the quarantine differ
# from run to run).
_SYSTEM_FAILURES = {
    "WorkerCrashedError": "the worker died (killed, out of memory, or a crash in native code)",
    "OutOfMemoryError": "the worker was killed for running out of memory",
    "NodeDiedError": "the node running the unit died",
    "TaskCancelledError": "the unit was cancelled",
}


def _cause(error: BaseException) -> str:
    """The failure as one line: a task's own exception rather than Ray's wrapper."""
    cause = getattr(error, "cause", None)
    if isinstance(cause, BaseException):
        return one_line(cause)
    name = type(error).__name__
    return f"{name}: {_SYSTEM_FAILURES.get(name, 'Ray could not run the unit')}"
