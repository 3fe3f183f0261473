"""Two runs at once, and runs killed at any point: every run left behind verifies, no
half-written run is ever listed, and the next run clears the debris."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipeline.audit.verify import verify_run
from pipeline.cli.main import app
from pipeline.core.lock import writer_lock
from pipeline.core.receipts import list_runs, load_run_summary, run_state
from pipeline.core.store import LakeLayout
from pipeline.core.trust import load_trusted
from pipeline.synth import synthesize

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("corpus")
    synthesize(folder / "cc", 40, 5, "claude-code")
    synthesize(folder / "cx", 10, 5, "codex")
    # Every stage runs, the model ones briefly: what is tested is the lake, not the model.
    (folder / "config.toml").write_text("[train]\nmax_steps = 3\n\n[eval]\nmax_examples = 2\nmax_new_tokens = 8\n")
    return folder


def start(root: Path, corpus: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli.main", "run-all", "--root", str(root), "--quiet",
         "--source", f"claude-code:{corpus / 'cc'}", "--source", f"codex:{corpus / 'cx'}",
         "--config", str(corpus / "config.toml"), *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)}, start_new_session=True,
    )


def assert_sound(root: Path) -> list[str]:
    """Every listed run verifies; nothing unfinished or temporary is left."""
    layout = LakeLayout(root)
    runs = list_runs(layout)
    keys = load_trusted(layout)
    for run_id in runs:
        assert verify_run(layout, run_id, keys).problems == [], run_id
    leftovers = [p for p in root.rglob(".tmp-*")]
    assert leftovers == [], leftovers
    folders = [p.name for p in layout.receipts.iterdir() if p.is_dir() and p.name != "cache"]
    assert all(run_state(layout, name) == "complete" for name in folders), folders
    return runs


def test_two_runs_at_once_take_turns_and_both_verify(corpus: Path, tmp_path: Path) -> None:
    for trial in range(3):
        root = tmp_path / f"trial{trial}"
        first, second = start(root, corpus), start(root, corpus)
        outputs = [p.communicate(timeout=300) for p in (first, second)]
        assert [first.returncode, second.returncode] == [0, 0], outputs
        waited = [err for _, err in outputs if "waiting for the run holding" in err]
        assert len(waited) == 1, outputs  # one ran, the other waited for it and said so
        runs = assert_sound(root)
        assert len(runs) == 2
        layout = LakeLayout(root)
        hashes = {load_run_summary(layout, r, load_trusted(layout)).run_hash for r in runs}
        assert len(hashes) == 1


def test_no_wait_exits_2_while_another_run_writes(corpus: Path, tmp_path: Path) -> None:
    layout = LakeLayout(tmp_path)
    with writer_lock(layout):
        busy = start(tmp_path, corpus, "--no-wait")
        _, err = busy.communicate(timeout=120)
        assert busy.returncode == 2
        assert "another run is writing this root" in err and str(layout.root) in err
        # Readers never wait for the lock.
        listed = CliRunner().invoke(app, ["receipts", "list", "--root", str(tmp_path)])
        assert listed.exit_code == 0
    assert list_runs(layout) == []


def test_kill_9_at_any_point_leaves_a_sound_lake(corpus: Path, tmp_path: Path) -> None:
    timed = time.perf_counter()
    whole = start(tmp_path / "timing", corpus)
    assert whole.wait(timeout=300) == 0
    duration = time.perf_counter() - timed
    killed_mid_run = 0
    for point in (0.2, 0.45, 0.7, 0.9):
        for attempt in range(3):  # a run faster than the timed one (a busy machine, then a quiet
            root = tmp_path / f"killed-at-{point}-{attempt}"  # one) is tried again, killed earlier
            run = start(root, corpus)
            time.sleep(duration * point / 2**attempt)
            if run.poll() is None:
                killed_mid_run += 1
                os.killpg(run.pid, signal.SIGKILL)  # the CLI and its parse workers
                run.wait()
                break
            run.wait()
        layout = LakeLayout(root)
        # Whatever the kill left, a reader sees only complete runs, and they verify.
        for run_id in list_runs(layout):
            assert verify_run(layout, run_id, load_trusted(layout)).problems == []
        final = start(root, corpus)
        _, err = final.communicate(timeout=300)
        assert final.returncode == 0, err
        assert len(assert_sound(root)) >= 1
    assert killed_mid_run >= 3
