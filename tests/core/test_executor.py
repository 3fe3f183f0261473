"""The executor seam: a spawned process gives the same digests; a killed stage resumes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from pipeline.audit.deep import deep_verify
from pipeline.core.execute import SubprocessExecutor
from pipeline.core.runner import Runner, RunOptions
from tests.core import toy

REPO = Path(__file__).resolve().parents[2]


def _digests(result) -> dict[str, object]:  # type: ignore[no-untyped-def]
    out: dict[str, object] = {}
    for o in result.outcomes:
        assert o.receipt is not None and o.status == "ok", o
        out.update({ref.name: ref.xxh3_128 for ref in o.receipt.outputs})
        out.update({f"artifact:{a.name}": a.digest for a in o.receipt.artifacts})
    return out


def test_a_spawned_process_gives_identical_digests(tmp_path: Path) -> None:
    stages = [toy.MAKE, toy.SQUARE, toy.ADAPTER, toy.RENDER]
    template = tmp_path / "chat.jinja"
    template.write_text("<{value}>")
    config = {"make": {"n": 9}, "render": {"template_path": str(template)}}
    local = Runner(stages, RunOptions(root=tmp_path / "a", sources=[], stage_config=config)).run()
    spawned = Runner(stages, RunOptions(root=tmp_path / "b", sources=[], stage_config=config,
                                        executor=SubprocessExecutor())).run()
    assert _digests(local) == _digests(spawned)
    assert local.summary.run_hash == spawned.summary.run_hash
    # and deep verify, which re-runs each stage through the same function, agrees
    report = deep_verify(tmp_path / "b", None, None, stages)
    assert report.passed and {c.stage: c.verdict for c in report.stages} == {
        "make": "match", "square": "match", "adapter": "match", "render": "match"}
    adapter = next(c for c in report.stages if c.stage == "adapter")
    assert [t.table for t in adapter.tables] == ["adapter_log", "artifact:adapter"]


_KILLED_RUN = """
import sys
from pathlib import Path
from pipeline.core.runner import Runner, RunOptions
from tests.core import toy
Runner([toy.MAKE, toy.SLOW_SQUARE], RunOptions(root=Path(sys.argv[1]), sources=[],
       stage_config={"make": {"n": 6}})).run()
"""


def test_a_killed_stage_resumes_from_its_checkpoints(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    env = {**os.environ, toy.DIE_AFTER_ENV: "4", "PYTHONPATH": str(REPO)}
    killed = subprocess.run([sys.executable, "-c", _KILLED_RUN, str(lake)], env=env, cwd=REPO,
                            capture_output=True, text=True, timeout=120, check=False)
    assert killed.returncode == 9, killed.stderr
    resume = list((lake / "data" / "cache" / "square" / "resume").iterdir())
    assert len(resume) == 1  # one folder, named by the cache key

    toy.PROCESSED.clear()
    stages = [toy.MAKE, toy.SLOW_SQUARE]
    result = Runner(stages, RunOptions(root=lake, sources=[], stage_config={"make": {"n": 6}})).run()
    assert result.ok
    assert toy.PROCESSED == [4, 5]  # items 0-3 came from the checkpoint
    square = next(o.receipt for o in result.outcomes if o.stage == "square")
    assert square is not None and square.stats["resumed_checkpoints"] == ["done"]
    fresh = Runner(stages, RunOptions(root=tmp_path / "fresh", sources=[],
                                      stage_config={"make": {"n": 6}})).run()
    assert _digests(result) == _digests(fresh)
    assert not resume[0].exists()  # stored: the checkpoints go


def test_a_forged_checkpoint_is_not_read(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    env = {**os.environ, toy.DIE_AFTER_ENV: "3", "PYTHONPATH": str(REPO)}
    subprocess.run([sys.executable, "-c", _KILLED_RUN, str(lake)], env=env, cwd=REPO,
                   capture_output=True, timeout=120, check=False)
    (folder,) = (lake / "data" / "cache" / "square" / "resume").iterdir()
    saved = (folder / "done").read_bytes()
    (folder / "done").write_bytes(saved[:32] + b"[0, 1, 999]")  # a forged tally, old tag
    toy.PROCESSED.clear()
    result = Runner([toy.MAKE, toy.SLOW_SQUARE],
                    RunOptions(root=lake, sources=[], stage_config={"make": {"n": 6}})).run()
    assert result.ok and toy.PROCESSED == [0, 1, 2, 3, 4, 5]  # started over


def test_checkpoints_of_two_attempts_are_never_mixed(tmp_path: Path) -> None:
    """Tags bind the attempt that wrote them: a checkpoint from another attempt of the
    same key (validly tagged, then replaced) is not read."""
    lake = tmp_path / "lake"
    env = {**os.environ, toy.DIE_AFTER_ENV: "2", "PYTHONPATH": str(REPO)}
    subprocess.run([sys.executable, "-c", _KILLED_RUN, str(lake)], env=env, cwd=REPO,
                   capture_output=True, timeout=120, check=False)
    (folder,) = (lake / "data" / "cache" / "square" / "resume").iterdir()
    (folder / "attempt").write_bytes(b"0" * 32)  # as if another attempt wrote the id
    toy.PROCESSED.clear()
    result = Runner([toy.MAKE, toy.SLOW_SQUARE],
                    RunOptions(root=lake, sources=[], stage_config={"make": {"n": 6}})).run()
    assert result.ok and toy.PROCESSED == [0, 1, 2, 3, 4, 5]
    receipt = next(o.receipt for o in result.outcomes if o.stage == "square")
    assert receipt is not None and "resumed_checkpoints" not in receipt.stats
