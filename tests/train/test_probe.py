"""The training-drift probe against hand-computed curves."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from pipeline.train.probe import instability_events, probe, probe_log, read_losses


def test_a_smooth_decay_passes() -> None:
    losses = [4.0 * math.exp(-step / 6) + 0.5 for step in range(20)]
    result = probe(losses)
    assert result.verdict == "PASS" and result.instability_events == 0
    assert result.convergence_ratio == pytest.approx(losses[-1] / losses[0], abs=1e-6)
    deltas = [b - a for a, b in zip(losses, losses[1:], strict=False)]
    mean, dmean = sum(losses) / len(losses), sum(deltas) / len(deltas)
    variance = sum((x - mean) ** 2 for x in losses) / len(losses)
    dvariance = sum((d - dmean) ** 2 for d in deltas) / len(deltas)
    assert result.smoothness == pytest.approx(1 - dvariance / variance, abs=1e-6) and result.smoothness > 0.9


def test_a_spike_warns_and_a_nan_is_counted() -> None:
    losses = [3.0 - 0.1 * step for step in range(20)]
    losses[12] += 1.0  # one jump up, far beyond 3x the median |dloss| (0.1) around it
    result = probe(losses)
    assert result.verdict == "WARN" and result.instability_events == 1
    assert instability_events([3.0, 2.9, float("nan"), 2.7], 3.0, 5) == 1


def test_a_flat_curve_has_no_smoothness_and_short_runs_skip() -> None:
    flat = probe([2.0] * 12)
    assert flat.smoothness == 0.0 and flat.verdict == "WARN"
    assert probe([3.0, 2.0, 1.0]).verdict == "SKIP"


def test_resumed_duplicates_keep_the_latest_and_a_bad_log_is_an_error(tmp_path: Path) -> None:
    log = tmp_path / "train.jsonl"
    lines = [{"type": "banner"}, *({"type": "step", "step": s, "loss": 5.0 - s} for s in range(4)),
             {"type": "step", "step": 2, "loss": 9.0}, {"type": "run_complete"}]
    log.write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert read_losses(log) == [5.0, 4.0, 9.0, 2.0]
    log.write_text("{not json\n")
    assert probe_log(log).verdict == "ERROR"
    assert probe_log(tmp_path / "missing.jsonl").verdict == "ERROR"


def test_a_zero_initial_loss_has_no_ratio_and_says_so() -> None:
    result = probe([0.0] * 12)
    assert result.convergence_ratio is None and result.verdict == "WARN"
    assert any("initial loss" in reason for reason in result.reasons)
