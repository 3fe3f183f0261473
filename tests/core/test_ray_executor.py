"""The Ray executor on a local cluster: the local executor's digests, a killed worker
survived, a poisoned file quarantined, and a clear error without the extra."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from pipeline.collate import jobs
from pipeline.core.errors import TracelakeError
from pipeline.core.progress import Tracker
from pipeline.core.ray_executor import RayExecutor
from pipeline.core.runner import Runner, RunOptions
from pipeline.core.sources import SourceSpec
from pipeline.export import prepare
from pipeline.stages.registry import load_stages
from pipeline.synth import synthesize
from tests.core.ray_faults import FAULTS_ENV

REPO = Path(__file__).resolve().parents[2]
THROUGH_EXPORTS = ["export-sft", "export-rag", "export-preference"]


@pytest.fixture(scope="module")
def faults(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("faults")


@pytest.fixture(scope="module")
def cluster(faults: Path) -> Iterator[None]:
    ray = pytest.importorskip("ray")  # the ray extra is in the dev lock: this never skips in CI
    from tests.core import ray_faults

    # One logical GPU (Ray schedules by it; torch, CPU-only here, still trains on the CPU).
    ray.init(num_cpus=2, num_gpus=1, include_dashboard=False, log_to_driver=False, configure_logging=False,
             runtime_env={"env_vars": {FAULTS_ENV: str(faults), "PYTHONPATH": str(REPO)},
                          "worker_process_setup_hook": ray_faults.install})
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> list[SourceSpec]:
    out = tmp_path_factory.mktemp("synthetic")
    synthesize(out / "claude-code", sessions=40, seed=11)
    synthesize(out / "codex", sessions=12, seed=11, fmt="codex")
    return [SourceSpec("claude-code", out / "claude-code"), SourceSpec("codex", out / "codex")]


class Recording(Tracker):
    """The last (done, running, failed) each task bar showed."""

    def __init__(self) -> None:
        self.last: dict[str, tuple[int, int, int, int]] = {}

    @contextmanager
    def tasks(self, total: int, description: str) -> Iterator[Callable[[int, int, int], None]]:
        def show(done: int, running: int, failed: int) -> None:
            self.last[description] = (total, done, running, failed)

        yield show


def _run(root: Path, sources: list[SourceSpec], targets: list[str], workers: int = 2,
         executor: Any = None, tracker: Tracker | None = None) -> Any:
    options = RunOptions(root=root, sources=sources, workers=workers, recorded_at="2026-01-01T00:00:00Z",
                         tracker=tracker or Tracker())
    if executor is not None:
        options.executor = executor
    result = Runner(load_stages(targets), options).run(targets)
    assert result.ok, [(o.stage, o.error, o.receipt and o.receipt.validation.errors) for o in result.outcomes]
    return result


def _digests(result: Any) -> dict[str, str]:
    return {name: ref.xxh3_128 for name, ref in sorted(result.summary.tables.items())}


def _receipt(result: Any, stage: str) -> Any:
    return next(o.receipt for o in result.outcomes if o.stage == stage)


pytestmark = pytest.mark.ray


def test_ray_gives_the_local_digests_for_any_workers_and_completion_order(
        cluster: None, faults: Path, synthetic: list[SourceSpec], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    # collate's units go to the pool from its first example on (the demo-sized export
    # stays under the local threshold otherwise)
    monkeypatch.setattr(jobs, "PARALLEL_MIN_EXAMPLES", 1)
    monkeypatch.setattr(prepare, "POOL_TASKS", 7)  # score's partitions: several, uneven
    targets = [*THROUGH_EXPORTS, "collate"]
    local = _run(tmp_path / "local", synthetic, targets, workers=1)
    (faults / "jitter").touch()
    try:
        on_ray = [_run(tmp_path / f"ray-{w}", synthetic, targets, workers=w, executor=RayExecutor())
                  for w in (2, 5)]
    finally:
        (faults / "jitter").unlink()
    for result in on_ray:
        assert _digests(result) == _digests(local)
        assert result.summary.run_hash == local.summary.run_hash
        collect, collate = _receipt(result, "collect"), _receipt(result, "collate")
        assert collect.execution.executor == "ray" and collect.execution.tasks > 1
        assert collate.execution.tasks == -(-collate.records_in // jobs.POOL_CHUNK)
        assert _receipt(result, "score").execution.tasks > 1
        assert collect.execution.retries == collect.execution.failed == 0
    assert _receipt(local, "collect").execution.executor == "local"
    assert _receipt(local, "collect").execution.tasks == 0


def test_train_runs_whole_as_one_task_holding_the_clusters_gpu(cluster: None, tmp_path: Path) -> None:
    """Train wants a GPU: on a cluster with one, the stage runs as one task holding it
    (the receipt says so), and trains on the same rows to the same losses as here."""
    import pyarrow.compute as pc

    synthesize(tmp_path / "corpus", sessions=8, seed=5)
    sources = [SourceSpec("claude-code", tmp_path / "corpus")]
    local = _run(tmp_path / "local", sources, ["train"], workers=1)
    on_ray = _run(tmp_path / "ray", sources, ["train"], executor=RayExecutor())
    train = _receipt(on_ray, "train")
    assert (train.execution.executor, train.execution.tasks, train.execution.gpus) == ("ray", 1, 1)
    assert train.execution.retries == train.execution.failed == 0
    assert _receipt(on_ray, "collect").execution.gpus == 0  # the other stages' units hold none
    assert _receipt(local, "train").execution.gpus == 0
    digests = {name: _digests(result) for name, result in (("local", local), ("ray", on_ray))}
    assert {k: v for k, v in digests["ray"].items() if k != "train_steps"} == \
           {k: v for k, v in digests["local"].items() if k != "train_steps"}
    steps = [pq.read_table(root / result.summary.tables["train_steps"].path)
             for result, root in ((local, tmp_path / "local"), (on_ray, tmp_path / "ray"))]
    assert steps[0].num_rows == steps[1].num_rows > 0
    # A task's threads differ from this process's: float sums may differ in the last bits.
    difference = pc.max(pc.abs(pc.subtract(steps[0]["loss"], steps[1]["loss"]))).as_py()
    assert difference <= 1e-5


def test_a_stage_run_on_a_gpu_node_is_keyed_by_that_nodes_engines(cluster: None,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The cache key and the receipt name the engines (device class included) of the
    node that trains, asked of that node, with the driver's code: a GPU node's adapter
    is never filed under this machine's CPU key (nor the reverse)."""
    stages = {stage.name: stage for stage in load_stages(["train"])}
    train, collect = stages["train"], stages["collect"]
    executor = RayExecutor()
    assert executor.placed(train) is train  # the cluster's GPU node is this machine: the same version
    assert executor.placed(collect) is collect  # wants no GPU: never asked
    node, _ = executor._probe(train, 1)
    monkeypatch.setattr(RayExecutor, "_probe", lambda self, stage, gpus: (node, "torch-9+cuda"))
    moved = executor.placed(train)
    assert moved.full_version == train.version_with("torch-9+cuda") != train.full_version
    assert moved.full_version.endswith(train.full_version.rsplit("+", 1)[1])  # the driver's code digest
    assert (moved.name, moved.outputs, moved.resources) == (train.name, train.outputs, train.resources)


def test_a_gpu_node_that_differs_from_its_probe_fails_the_stage_with_a_receipt(
        cluster: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What the node runs is checked against the version the key was made with: a node
    whose engines are not the ones its probe reported fails the stage (a failed receipt,
    the run goes on to write its statement), and so does a GPU that never comes free."""
    synthesize(tmp_path / "corpus", sessions=6, seed=5)
    sources = [SourceSpec("claude-code", tmp_path / "corpus")]
    real_probe = RayExecutor._probe
    monkeypatch.setattr(RayExecutor, "_probe", lambda self, stage, gpus: (real_probe(self, stage, gpus)[0], "other"))
    options = RunOptions(root=tmp_path / "ray", sources=sources, workers=2, recorded_at="2026-01-01T00:00:00Z",
                         executor=RayExecutor(retries=1))
    result = Runner(load_stages(["train"]), options).run(["train"])
    train = _receipt(result, "train")
    expected = next(stage for stage in load_stages(["train"]) if stage.name == "train").version_with("other")
    assert train.status == "failed" and train.stage_version == expected
    assert "other tracelake code" in (next(o.error for o in result.outcomes if o.stage == "train") or "")
    assert train.execution.gpus == 1 and train.execution.retries == 0  # refused at once, never retried

    def busy(self: RayExecutor, stage: Any, gpus: int) -> tuple[str, str | None]:
        raise TracelakeError("train: no GPU of the cluster ray came free within 300 s")

    monkeypatch.setattr(RayExecutor, "_probe", busy)
    result = Runner(load_stages(["train"]), RunOptions(root=tmp_path / "busy", sources=sources, workers=2,
                                                       recorded_at="2026-01-01T00:00:00Z",
                                                       executor=RayExecutor())).run(["train"])
    outcome = next(o for o in result.outcomes if o.stage == "train")
    assert outcome.receipt is not None and outcome.receipt.status == "failed"
    assert "came free" in (outcome.error or "")
    assert (tmp_path / "busy" / "receipts").is_dir() and result.summary.run_hash


def test_real_sessions_give_the_local_digests(cluster: None, teich_examples: Path, tmp_path: Path) -> None:
    source = tmp_path / "real" / "claude-code"
    source.mkdir(parents=True)
    for k in range(6):  # real sessions, each under its own project folder
        (source / f"project-{k}").mkdir()
        shutil.copy(teich_examples / "example_claude_code.jsonl", source / f"project-{k}" / f"s{k}.jsonl")
    codex = tmp_path / "real" / "codex"
    codex.mkdir()
    for name in os.listdir(teich_examples):
        if "codex" in name and name.endswith(".jsonl"):
            shutil.copy(teich_examples / name, codex / name)
    sources = [SourceSpec("claude-code", source), SourceSpec("codex", codex)]
    local = _run(tmp_path / "local", sources, THROUGH_EXPORTS, workers=1)
    on_ray = _run(tmp_path / "ray", sources, THROUGH_EXPORTS, executor=RayExecutor())
    assert _digests(on_ray) == _digests(local)
    assert on_ray.summary.run_hash == local.summary.run_hash


def test_a_killed_worker_is_retried_and_the_digests_hold(
        cluster: None, faults: Path, synthetic: list[SourceSpec], tmp_path: Path) -> None:
    local = _run(tmp_path / "local", synthetic, ["collect"], workers=1)
    (faults / "kill-once").touch()
    result = _run(tmp_path / "ray", synthetic, ["collect"], executor=RayExecutor())
    assert not (faults / "kill-once").exists()
    killed = [p for p in faults.iterdir() if p.name.startswith("killed-")]
    assert len(killed) == 1  # a worker really died mid-task (SIGKILL)
    execution = _receipt(result, "collect").execution
    assert execution.retries == 1 and execution.failed == 0
    assert _digests(result) == _digests(local)


def test_a_poisoned_file_is_quarantined_after_its_retries_and_the_run_goes_on(
        cluster: None, synthetic: list[SourceSpec], tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    shutil.copytree(synthetic[0].path, corpus)
    clean = _run(tmp_path / "clean", [SourceSpec("claude-code", corpus)], ["collect"], workers=1)
    first = sorted(corpus.rglob("*.jsonl"))[0]
    poison = first.parent / "poison-session.jsonl"
    shutil.copy(first, poison)
    tracker = Recording()
    result = _run(tmp_path / "ray", [SourceSpec("claude-code", corpus)], ["collect"], executor=RayExecutor(retries=2),
                  tracker=tracker)
    receipt = _receipt(result, "collect")
    # the progress showed every unit done, none left running, and the failures
    (batches, done, running, failed), = [v for k, v in tracker.last.items() if k == "collect tasks"]
    assert done == batches and running == 0 and failed == 1
    assert tracker.last["collect retries"][1:] == (tracker.last["collect retries"][0], 0, 1)
    # its batch failed 3 times, was split, and the file alone failed 3 times more
    assert receipt.execution.failed == 2 and receipt.execution.retries == 4
    assert receipt.quarantined.get("task_failed") == 1
    assert receipt.stats["files"]["failed"] == 1
    assert receipt.records_in == receipt.records_out + sum(receipt.quarantined.values()) + sum(
        receipt.filtered.values())
    quarantine = pq.read_table(tmp_path / "ray" / result.summary.tables["collect_quarantine"].path).to_pylist()
    rows = [r for r in quarantine if r["reason"] == "task_failed"]
    assert len(rows) == 1 and rows[0]["source_file"].endswith("poison-session.jsonl")
    # every other table is what the corpus gives without the poisoned file
    for name in ("sessions", "messages", "tool_calls", "prompts"):
        assert result.summary.tables[name].xxh3_128 == clean.summary.tables[name].xxh3_128
    # recorded as set aside, not as its content: the next run parses it again (here,
    # where nothing poisons the parse)
    again = _receipt(_run(tmp_path / "ray", [SourceSpec("claude-code", corpus)], ["collect"], workers=1), "collect")
    assert not again.cache_hit and "task_failed" not in again.quarantined


def test_a_cluster_that_fails_every_unit_fails_the_stage_instead_of_quarantining_everything(
        cluster: None, faults: Path, synthetic: list[SourceSpec], tmp_path: Path) -> None:
    (faults / "break-all").touch()
    try:
        result = Runner(load_stages(["collect"]), RunOptions(
            root=tmp_path / "ray", sources=synthetic, executor=RayExecutor(retries=1))).run(["collect"])
    finally:
        (faults / "break-all").unlink()
    receipt = _receipt(result, "collect")
    assert not result.ok and receipt.status == "failed"
    assert "every unit of work failed on every attempt" in (receipt.error or "")
    # what its units did is still recorded
    assert receipt.execution.executor == "ray" and receipt.execution.failed > 0
    assert receipt.execution.failed <= receipt.execution.tasks


def test_a_worker_with_other_code_fails_the_stage_at_once(
        cluster: None, faults: Path, synthetic: list[SourceSpec], tmp_path: Path) -> None:
    (faults / "other-code").touch()
    try:
        result = Runner(load_stages(["collect"]), RunOptions(
            root=tmp_path / "ray", sources=synthetic, executor=RayExecutor())).run(["collect"])
    finally:
        (faults / "other-code").unlink()
    receipt = _receipt(result, "collect")
    assert receipt.status == "failed" and "runs other tracelake code than the driver" in (receipt.error or "")
    assert receipt.execution.retries == 0  # not retried: the same code fails everywhere
    assert not list((tmp_path / "ray" / "data" / "objects").rglob("*.parquet"))


def test_a_ray_client_address_without_the_client_is_one_clear_error(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "s.jsonl").write_text("{}\n")
    done = subprocess.run([sys.executable, "-m", "pipeline.cli.main", "run", "collect", "--root", str(tmp_path / "lake"),
                           "--source", f"claude-code:{corpus}", "--executor", "ray://127.0.0.1:1", "--quiet"],
                          cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [
        "error: --executor ray://127.0.0.1:1 needs Ray's client: pip install 'tracelake[ray-client]'"]
    assert not (tmp_path / "lake" / "receipts").exists()


def test_without_the_extra_the_ray_executor_is_one_clear_error(tmp_path: Path) -> None:
    fake = tmp_path / "site" / "ray"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('No module named ray')\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site")}
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    done = subprocess.run([sys.executable, "-m", "pipeline.cli.main", "run", "collect", "--root", str(tmp_path / "lake"),
                           "--source", f"claude-code:{corpus}", "--executor", "ray", "--quiet"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [
        "error: the Ray executor needs Ray, which is not installed: pip install 'tracelake[ray]'"]
    assert not (tmp_path / "lake").exists()


def test_an_unknown_executor_names_the_known_ones(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "pipeline.cli.main", "run", "collect", "--root", str(tmp_path),
                           "--executor", "dask"], cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 2
    assert "unknown executor 'dask'" in done.stderr and "ray://HOST:PORT" in done.stderr
