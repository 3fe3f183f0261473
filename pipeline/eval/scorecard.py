"""The eval's measures, base beside adapter, and the gates that judge them.

``METRICS`` is the one list of what the eval reports: each measure's name, which replay
it comes from, which direction is better and what it counts. A tally turns replays into
(numerator, denominator) pairs; a rate with nothing to count is None, never 0 (a model
that was never asked is not a model that failed). A gate allows the adapter to be worse
than the base by at most its tolerance; a gate over a rate either side could not
measure is not judged.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from pipeline.eval.metrics import Generation, empty_arguments, repeats_a_line, schema_valid
from pipeline.eval.replay import Replay


@dataclass(frozen=True)
class Metric:
    name: str
    source: Literal["points", "rollout", "all"]
    higher_is_better: bool
    counts: str  # what the rate is: "numerator / denominator", in words


METRICS: tuple[Metric, ...] = (
    Metric("call_rate", "points", True,
           "steps where the recorded agent called a tool: the model attempted a call too"),
    Metric("call_parse_rate", "points", True,
           "call blocks the model wrote at those steps that parse"),
    Metric("schema_valid_rate", "points", True,
           "parsed calls (at those steps) whose tool exists and whose arguments validate"),
    Metric("empty_argument_rate", "points", False,
           "parsed calls (at those steps) missing a required argument"),
    Metric("text_answer_rate", "points", True,
           "steps after a tool result where the recorded agent answered: the model answered in text"),
    Metric("unrecorded_call_rate", "points", False,
           "steps where the recorded agent made no call: the model called anyway"),
    Metric("rollout_answer_rate", "rollout", True,
           "rollouts from the first user message that end in a text answer within the step cap"),
    Metric("loop_rate", "rollout", False,
           "rollouts that repeat a call three times in a row, or are still calling at the step cap "
           "(the recorded turn's steps plus a margin) or when the context runs out"),
    Metric("argument_repetition_rate", "all", False,
           "calls with a line repeated more than three times inside an argument"),
    Metric("text_after_call_rate", "all", False,
           "generations with a closed call that go on with text after it"),
    Metric("truncated_rate", "all", False,
           "generations cut at the token budget (neither an answer nor a call)"),
)
METRIC_NAMES: tuple[str, ...] = tuple(m.name for m in METRICS)
BY_NAME: dict[str, Metric] = {m.name: m for m in METRICS}
DEFAULT_GATES: dict[str, float] = {"text_answer_rate": 0.0, "loop_rate": 0.0}


@dataclass
class Tally:
    """(numerator, denominator) per metric over one model's replays."""

    counts: dict[str, list[int]] = field(default_factory=lambda: {name: [0, 0] for name in METRIC_NAMES})
    points: int = 0
    rollouts: int = 0
    generations: int = 0
    prompts_too_long: int = 0  # replay points and rollouts not asked: the prompt did not fit

    def _add(self, name: str, hit: bool | int, total: int = 1) -> None:
        self.counts[name][0] += int(hit)
        self.counts[name][1] += total

    def _generation(self, generation: Generation) -> None:
        self.generations += 1
        self._add("truncated_rate", generation.truncated)
        self._add("argument_repetition_rate", sum(repeats_a_line(c) for c in generation.calls),
                  len(generation.calls))
        if "</tool_call>" in generation.text:
            self._add("text_after_call_rate", generation.text_after_call)

    def add(self, replay: Replay, schemas: Mapping[str, Mapping[str, Any]]) -> None:
        self.prompts_too_long += replay.prompts_too_long
        for point in replay.points:
            self.points += 1
            generation = point.generation
            attempted = bool(generation.calls or generation.parse_failures)
            self._generation(generation)
            if point.recorded_called:
                self._add("call_rate", attempted)
                calls = generation.calls
                self._add("call_parse_rate", len(calls), len(calls) + generation.parse_failures)
                self._add("schema_valid_rate", sum(schema_valid(c, schemas) for c in calls), len(calls))
                self._add("empty_argument_rate", sum(empty_arguments(c, schemas) for c in calls), len(calls))
            else:
                self._add("unrecorded_call_rate", attempted)
            if point.after == "tool" and point.recorded_answered:
                self._add("text_answer_rate", generation.answered_in_text)
        run = replay.rollout
        if run is not None and run.generations:  # a rollout whose first prompt did not fit: not asked
            self.rollouts += 1
            # Its first reply is a replay point's when they share the prompt: counted once.
            for generation in run.generations[1 if run.first_is_point else 0:]:
                self._generation(generation)
            self._add("rollout_answer_rate", run.answered)
            self._add("loop_rate", run.looped)

    def rate(self, name: str) -> float | None:
        hit, total = self.counts[name]
        return round(hit / total, 6) if total else None


def schemas_of(tools: Sequence[Mapping[str, Any]] | None) -> dict[str, Mapping[str, Any]]:
    """Tool name -> its schema, from an OpenAI ``tools`` list."""
    found: dict[str, Mapping[str, Any]] = {}
    for tool in tools or []:
        function = tool.get("function", tool)
        if isinstance(function, Mapping) and isinstance(function.get("name"), str):
            found[function["name"]] = tool
    return found


def gate_text(name: str, tolerance: float) -> str:
    metric = BY_NAME[name]
    sign = ">=" if metric.higher_is_better else "<="
    slack = "-" if metric.higher_is_better else "+"
    return f"adapter {sign} base" + (f" {slack} {tolerance:g}" if tolerance else "")


def gate_passes(name: str, base: float | None, adapter: float | None, tolerance: float) -> bool | None:
    if base is None or adapter is None:
        return None
    metric = BY_NAME[name]
    if metric.higher_is_better:
        return adapter >= base - tolerance - 1e-12
    return adapter <= base + tolerance + 1e-12


def scorecard(base: Tally, adapter: Tally | None, gates: Mapping[str, float]) -> list[dict[str, Any]]:
    """The ``eval`` table's rows, in ``METRICS`` order."""
    rows = []
    for metric in METRICS:
        before = base.rate(metric.name)
        after = adapter.rate(metric.name) if adapter is not None else None
        tolerance = gates.get(metric.name)
        rows.append({
            "metric": metric.name,
            "source": metric.source,
            "base": before,
            "adapter": after,
            "delta": round(after - before, 6) if before is not None and after is not None else None,
            "base_n": base.counts[metric.name][1],
            "adapter_n": adapter.counts[metric.name][1] if adapter is not None else None,
            "higher_is_better": metric.higher_is_better,
            "gate": gate_text(metric.name, tolerance) if tolerance is not None else None,
            "passed": gate_passes(metric.name, before, after, tolerance) if tolerance is not None else None,
        })
    return rows


def gate_failures(rows: Sequence[Mapping[str, Any]], adapter: bool) -> list[str]:
    """A gate that fails, and, when there is an adapter to judge, a gate that could not be
    judged (a rate over nothing): an eval that measured nothing passes nothing."""
    failures = []
    for row in rows:
        if row["passed"] is False:
            failures.append(f"eval gate {row['metric']}: {row['gate']} fails "
                            f"(base {row['base']}, adapter {row['adapter']})")
        elif adapter and row["gate"] is not None and row["passed"] is None:
            failures.append(f"eval gate {row['metric']}: not judged, no case to count it on "
                            f"(base over {row['base_n']}, adapter over {row['adapter_n']})")
    return failures


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "pass" if value else "FAIL"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def markdown(rows: Sequence[Mapping[str, Any]], header: Mapping[str, Any]) -> str:
    """``eval.md``: the scorecard as a Markdown table that fits 80 columns, then what each
    measure counts."""
    lines = ["# tracelake eval: adapter against its base model", ""]
    lines += [f"- {key}: {value}" for key, value in header.items()]
    lines += ["", "| metric | base | adapter | delta | gate |", "|---|---:|---:|---:|---|"]
    for row in rows:
        gate = "-" if row["gate"] is None else f"{_cell(row['passed'])}: {row['gate']}"
        lines.append(f"| {row['metric']} | {_cell(row['base'])} | {_cell(row['adapter'])} | "
                     f"{_cell(row['delta'])} | {gate} |")
    lines += ["", "A dash: nothing to count (a rate over no cases) or no adapter.", ""]
    lines += [f"- **{m.name}** ({'higher' if m.higher_is_better else 'lower'} is better): {m.counts}."
              for m in METRICS]
    return "\n".join(lines) + "\n"
