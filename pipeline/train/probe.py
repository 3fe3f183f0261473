"""The training-drift probe: how a run's loss curve went, as four numbers and a verdict.

- ``final_loss``;
- ``convergence_ratio``: final / initial;
- ``smoothness``: 1 - var(dloss) / var(loss), clipped at 0; 0 for a flat curve;
- ``instability_events``: loss increases greater than ``spike_factor`` times the median
  |dloss| of a centred window that leaves the point out; a non-finite loss is an event.

PASS when smoothness and convergence clear their thresholds and nothing spiked; WARN
otherwise; SKIP under ``min_steps`` steps; ERROR when the step log cannot be read. A
resumed run logs some steps twice: the latest line of a step wins.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from statistics import median, pvariance
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Verdict = Literal["PASS", "WARN", "SKIP", "ERROR"]


class ProbeThresholds(BaseModel):
    model_config = ConfigDict(extra="forbid")

    min_smoothness: float = Field(0.7, description="PASS needs at least this smoothness.")
    max_convergence_ratio: float = Field(0.7, description="PASS needs final/initial loss at most this.")
    spike_factor: float = Field(3.0, gt=0, description="An increase over this many median |dloss| is an event.")
    window: int = Field(5, ge=1, description="Half-width of the centred window the median is taken over.")
    min_steps: int = Field(10, ge=2, description="Fewer logged steps: SKIP.")


class ProbeResult(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    verdict: Verdict
    steps: int
    initial_loss: float | None = None
    final_loss: float | None = None
    convergence_ratio: float | None = None
    smoothness: float | None = None
    instability_events: int = 0
    reasons: list[str] = Field(default_factory=list)


def read_losses(path: Path) -> list[float]:
    """Losses by step from a step log (``{"type": "step", "step": n, "loss": x}`` lines),
    the latest line of each step kept; ``sft_loss`` where a line has it (one cycled SDPO
    row and pair per step make the weighted total noisy). Raises ValueError on an
    unreadable log."""
    by_step: dict[int, float] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        record = json.loads(line)
        if not isinstance(record, dict):
            raise ValueError(f"line {number} is not an object")
        if record.get("type") == "step":  # the SFT loss where the step logs it apart from the weighted total
            loss = record.get("sft_loss")
            by_step[int(record["step"])] = float(record["loss"] if loss is None else loss)
    return [by_step[step] for step in sorted(by_step)]


def instability_events(losses: Sequence[float], factor: float, window: int) -> int:
    events = sum(1 for loss in losses if not math.isfinite(loss))
    finite = [loss for loss in losses if math.isfinite(loss)]
    deltas = [b - a for a, b in zip(finite, finite[1:], strict=False)]
    for i, delta in enumerate(deltas):
        neighbours = [abs(deltas[j]) for j in range(max(0, i - window), min(len(deltas), i + window + 1)) if j != i]
        if delta > 0 and neighbours and delta > factor * median(neighbours):
            events += 1
    return events


def probe(losses: Sequence[float], thresholds: ProbeThresholds | None = None) -> ProbeResult:
    limits = thresholds or ProbeThresholds.model_validate({})
    if len(losses) < limits.min_steps:
        return ProbeResult(verdict="SKIP", steps=len(losses), reasons=[f"{len(losses)} steps < {limits.min_steps}"])
    events = instability_events(losses, limits.spike_factor, limits.window)
    finite = [loss for loss in losses if math.isfinite(loss)]
    if len(finite) < 2:
        return ProbeResult(verdict="WARN", steps=len(losses), instability_events=events,
                           reasons=["fewer than two finite losses"])
    initial, final = finite[0], finite[-1]
    ratio = final / initial if initial > 0 else None
    spread = pvariance(finite)
    deltas = [b - a for a, b in zip(finite, finite[1:], strict=False)]
    smoothness = 0.0 if spread == 0 else max(0.0, 1.0 - pvariance(deltas) / spread)
    reasons = []
    if smoothness < limits.min_smoothness:
        reasons.append(f"smoothness {smoothness:.3f} < {limits.min_smoothness}")
    if ratio is None:
        reasons.append("the initial loss is not positive: no convergence ratio")
    elif ratio > limits.max_convergence_ratio:
        reasons.append(f"convergence_ratio {ratio:.3f} > {limits.max_convergence_ratio}")
    if events:
        reasons.append(f"{events} instability event(s)")
    return ProbeResult(
        verdict="WARN" if reasons else "PASS", steps=len(losses), initial_loss=initial, final_loss=final,
        convergence_ratio=round(ratio, 6) if ratio is not None else None, smoothness=round(smoothness, 6),
        instability_events=events, reasons=reasons,
    )


def probe_log(path: Path, thresholds: ProbeThresholds | None = None) -> ProbeResult:
    try:
        losses = read_losses(path)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return ProbeResult(verdict="ERROR", steps=0, reasons=[f"unreadable step log: {exc}"])
    return probe(losses, thresholds)
