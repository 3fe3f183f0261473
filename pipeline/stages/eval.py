"""eval: the adapter beside its base model on held-out conversations, replayed the way
they failed in use (``pipeline.eval.replay``), judged by gates.

It reads the held-out split of the SFT export (the conversations, with their recorded
tool results and tool schemas), the train stage's adapter (an artifact input: its
digest is in the cache key) and the base model (the same external input train reads).
Without an adapter (train had nothing to learn from) the base is measured alone and no
gate is judged. Decoding is greedy, so a re-run on the same machine gives the same
tables; across machines and thread counts a near-tie in the logits may flip a token,
hence the ``tolerance`` trait. A failed gate fails the stage's validation: run-all
exits non-zero and says which gate.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, Field, field_validator

from pipeline.collate.jobs import parse_json, tools_of
from pipeline.collate.masks import stage_renderer
from pipeline.core.errors import TracelakeError
from pipeline.core.stage import (
    ExportContext,
    ExternalInput,
    Stage,
    StageContext,
    StageResult,
    Traits,
)
from pipeline.eval.replay import Replay, replay
from pipeline.eval.scorecard import (
    DEFAULT_GATES,
    METRIC_NAMES,
    Tally,
    gate_failures,
    markdown,
    schemas_of,
    scorecard,
)
from pipeline.train.loop import restore_deterministic, torch_deterministic
from pipeline.train.model import BASE_PREFIX, default_model
from schemas.datasets import EVAL, EVAL_GENERATIONS
from schemas.tables import from_rows

STAGE_NAME, VERSION = "eval", "1.0.0"


class EvalConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field("", description="The base model folder train read (default: the tiny Qwen3). Its "
                                        "digest, not its path, is in the cache key.")
    template: str = Field("auto", description="The chat template prompts are rendered with (as collate's).")
    template_kwargs: dict[str, bool | int | float | str] = Field(default_factory=dict)
    split: str = Field("valid", description="The SFT split evaluated (never train, the one trained on).")
    max_examples: int = Field(16, ge=1, description="Held-out conversations replayed (by task_id order).")
    max_new_tokens: int = Field(64, ge=1, description="Token budget of one generation.")
    max_prompt_tokens: int = Field(4096, ge=16, description="Longer prompts are not asked.")
    step_margin: int = Field(3, ge=1, description="Steps a rollout may take beyond the recorded turn's own "
                                                  "before, still calling, it counts as a loop.")
    threads: int = Field(0, ge=0, description="CPU threads for decoding; 0: one for a model under 50M "
                                              "parameters (its per-token ops are too small to split), else "
                                              "torch's default.")
    gates: dict[str, float] = Field(
        default_factory=lambda: dict(DEFAULT_GATES),
        description="Metric -> how much worse than the base the adapter may be (0: no worse), on top of the "
                    f"defaults (text_answer_rate and loop_rate at 0). Metrics: {', '.join(METRIC_NAMES)}.",
    )
    gates_off: list[str] = Field(default_factory=list, description="Default gates to drop, by metric.")

    @field_validator("split")
    @classmethod
    def _held_out(cls, split: str) -> str:
        if split == "train":
            raise ValueError("eval measures a held-out split; train is the one the adapter learned from")
        return split

    @field_validator("gates", "gates_off")
    @classmethod
    def _known_metrics(cls, value: Any) -> Any:
        import math

        unknown = sorted(set(value) - set(METRIC_NAMES))
        if unknown:
            raise ValueError(f"unknown metric {unknown[0]!r}; known: {', '.join(METRIC_NAMES)}")
        if isinstance(value, dict) and any(not math.isfinite(v) or v < 0 for v in value.values()):
            raise ValueError("a gate's tolerance is a finite amount >= 0")
        return value

    def active_gates(self) -> dict[str, float]:
        """The defaults, then the given gates over them, less the ones turned off."""
        merged = {**DEFAULT_GATES, **self.gates}
        return {name: value for name, value in sorted(merged.items()) if name not in self.gates_off}


def _engines() -> str:
    from importlib.metadata import version

    return "+".join(f"{p}-{version(p)}" for p in ("torch", "transformers", "peft", "trl", "jsonschema"))


def run(ctx: StageContext[EvalConfig]) -> StageResult:
    from pipeline.eval.generate import Generator, load_models

    config = ctx.config
    table = ctx.table("sft", columns=["task_id", "session_id", "split", "messages", "tools"])
    held_out = table.filter(pc.equal(table["split"], config.split)).sort_by("task_id")
    chosen = held_out.slice(0, config.max_examples).to_pylist()
    filtered = {"not_held_out": table.num_rows - held_out.num_rows,
                "beyond_max_examples": held_out.num_rows - len(chosen)}
    folder = ctx.external("model")
    adapter_folder = ctx.upstream_artifact("adapter")
    if adapter_folder is not None:
        _check_base(adapter_folder, ctx.externals["model"].sha256 or "")
    renderer = stage_renderer(STAGE_NAME, folder, config.template, config.template_kwargs)
    template = renderer.template
    from pipeline.core.imports import allow_pandas

    allow_pandas()  # torch's deterministic switch imports its compiler, which imports pandas
    deterministic = torch_deterministic()
    import torch

    threads = torch.get_num_threads()
    try:
        torch.use_deterministic_algorithms(True)
        model = load_models(folder, adapter_folder)
        torch.set_num_threads(decode_threads(model, config.threads))
        generator = Generator(model, renderer, config.max_new_tokens, config.max_prompt_tokens)
        models = ["base"] + (["adapter"] if adapter_folder is not None else [])
        tallies = {name: Tally() for name in models}
        generations: list[dict[str, Any]] = []
        evaluated, nothing_to_ask = 0, 0
        for row in ctx.tracker.track(chosen, len(chosen), "eval"):
            messages, tools = parse_json(row["messages"]) or [], tools_of(row["tools"])
            replays = {name: replay(messages, tools, generator.for_model(name == "adapter"), config.step_margin)
                       for name in models}
            if all(not r.points and r.rollout is None for r in replays.values()):
                nothing_to_ask += 1
                continue
            evaluated += 1
            for name, done in replays.items():
                tallies[name].add(done, schemas_of(tools))
                generations += _generation_rows(row, name, done)
    finally:
        restore_deterministic(deterministic)
        torch.set_num_threads(threads)
    filtered["nothing_to_ask"] = nothing_to_ask
    rows = scorecard(tallies["base"], tallies.get("adapter"), config.active_gates())
    # Nothing held out to replay (a small corpus): nothing to judge, said in the receipt,
    # as train says it had nothing to train. Once anything was replayed, a gate with no
    # case to count fails: an eval that measured nothing passes nothing.
    failures = gate_failures(rows, adapter_folder is not None and evaluated > 0)
    if not evaluated:
        reason = f"no {config.split}-split conversation to replay ({held_out.num_rows} held out)"
    return StageResult(
        tables={"eval": from_rows(EVAL, rows), "eval_generations": from_rows(EVAL_GENERATIONS, generations)},
        records_in=table.num_rows,
        records_out=evaluated,
        filtered={k: v for k, v in filtered.items() if v},
        stats={
            **({"evaluated": False, "reason": reason} if not evaluated else {"evaluated": True}),
            "adapter": adapter_folder is not None,
            "template": template.name,
            "conversations": evaluated,
            "points": {name: t.points for name, t in tallies.items()},
            "rollouts": {name: t.rollouts for name, t in tallies.items()},
            "prompts_too_long": {name: t.prompts_too_long for name, t in tallies.items()},
            "generations": generator.prompts,
            "generated_tokens": generator.generated_tokens,
            "gates": {row["metric"]: row["passed"] for row in rows if row["gate"] is not None},
        },
        validation_errors=failures,
    )


def _check_base(adapter: Path, base_digest: str) -> None:
    """The adapter's config names the base it was trained on by digest (train writes it):
    applied to another base, its scores would describe a model nobody trained."""
    try:
        named = json.loads((adapter / "adapter_config.json").read_text(encoding="utf-8")).get(
            "base_model_name_or_path")
    except (OSError, ValueError):
        named = None
    if named != f"{BASE_PREFIX}{base_digest}":
        raise TracelakeError(f"eval was given base model sha256 {base_digest[:16]}, but the adapter was trained "
                             f"on {str(named).removeprefix(BASE_PREFIX)[:16]}: give eval the model train read "
                             "([eval] model, or --external model=PATH for both)")


SMALL_MODEL = 50_000_000


def decode_threads(model: Any, wanted: int) -> int:
    """Greedy decoding runs one token at a time: a small model's ops take microseconds,
    and a second thread only adds synchronisation, which turns into spinning when other
    processes share the cores (docs/EVAL.md has the measurement)."""
    import torch

    if wanted:
        return wanted
    parameters = sum(p.numel() for p in model.parameters())
    return 1 if parameters < SMALL_MODEL else int(torch.get_num_threads())


def _generation_rows(row: dict[str, Any], model: str, done: Replay) -> list[dict[str, Any]]:
    def one(mode: str, position: int, recorded: bool | None, generation: Any) -> dict[str, Any]:
        return {"task_id": row["task_id"], "session_id": row["session_id"], "model": model, "mode": mode,
                "position": position, "recorded_called": recorded, "text": generation.text,
                "calls": len(generation.calls), "parse_failures": generation.parse_failures,
                "answered_in_text": generation.answered_in_text, "text_after_call": generation.text_after_call}

    rows = [one("point", p.index, p.recorded_called, p.generation) for p in done.points]
    if done.rollout is not None:
        rows += [one("rollout", step, None, g) for step, g in enumerate(done.rollout.generations)]
    return rows


def materialize(ctx: ExportContext[EvalConfig]) -> None:
    order = {name: n for n, name in enumerate(METRIC_NAMES)}
    rows = sorted(ctx.table("eval").to_pylist(), key=lambda row: order.get(row["metric"], len(order)))
    digests = {ref.name: ref.sha256 for ref in ctx.input_refs}
    adapter = digests.get("artifact:adapter")
    header = {"base model": f"sha256 {digests.get('external:model')}",
              "adapter": f"sha256 {adapter}" if adapter else "none (train had nothing to learn from)",
              "held-out split": ctx.config.split}
    folder = ctx.export_dir / "eval"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "eval.md").write_text(markdown(rows, header), encoding="utf-8")


STAGE = Stage(
    name=STAGE_NAME,
    version=VERSION,
    engines=_engines,
    config_model=EvalConfig,
    inputs=("sft",),
    outputs=(EVAL, EVAL_GENERATIONS),
    run=run,
    materialize=materialize,
    traits=Traits(determinism="tolerance", tolerance=1e-6, maps_records=False),
    artifact_inputs=("adapter",),
    externals=(ExternalInput("model", "model", "model", default=default_model),),
)
