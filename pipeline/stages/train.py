"""train: a LoRA adapter from the collated SFT rows, bound to the digests of its data and
its base model.

The base model is an external input (``--external model=PATH`` or ``[train] model``; by
default the tiny Qwen3 built from a config, kept as a lake artifact). Train-split rows
are packed (``pipeline.train.packing``) and trained with peft on torch
(``pipeline.train.loop``); the adapter (safetensors and ``adapter_config.json``, which
``PeftModel.from_pretrained`` loads as they are), the step log and the loss-curve PNG are
artifacts. The training-drift probe reads the step log after training; an unreadable
log fails validation, its verdict is in the receipt's stats.
"""

from __future__ import annotations

import base64
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.compute as pc
from pydantic import ConfigDict, Field

from pipeline.core.stage import ExternalInput, Resources, Stage, StageContext, StageResult, Traits
from pipeline.train.loop import (
    Step,
    TrainSettings,
    device_class,
    load_lora,
    resolve_device,
    restore_deterministic,
    torch_deterministic,
    train,
    used_packs,
    write_log,
)
from pipeline.train.model import BASE_PREFIX, default_model
from pipeline.train.objectives import PreferenceExample, SdpoExample
from pipeline.train.packing import Pack, pack
from pipeline.train.probe import ProbeResult, ProbeThresholds, probe_log
from schemas.datasets import TRAIN_ROWS, TRAIN_STEPS
from schemas.tables import ArtifactSpec, empty_table, from_rows

STAGE_NAME, VERSION = "train", "1.0.0"


class TrainConfig(TrainSettings):
    model_config = ConfigDict(extra="forbid")

    model: str = Field("", description="A local model folder (config and weights; default: the tiny "
                                        "Qwen3). Its digest, not its path, is in the cache key.")
    probe: ProbeThresholds = Field(default_factory=lambda: ProbeThresholds.model_validate({}))


def _engines() -> str:
    """Library versions, and the accelerator class of this machine: an adapter trained
    in bf16 on a GPU is not the one fp32 on a CPU gives, so they are cached apart
    (``device_class``, read without importing torch)."""
    from importlib.metadata import version

    libraries = "+".join(f"{p}-{version(p)}" for p in ("torch", "transformers", "peft"))
    return f"{libraries}+{device_class()}"


@dataclass
class Auxiliary:
    """The SDPO rows and preference pairs a run adds, and what it left out, by reason."""

    sdpo: list[SdpoExample] = field(default_factory=list)
    sdpo_rows: list[tuple[str, str]] = field(default_factory=list)  # (task_id, session_id) of each
    pairs: list[PreferenceExample] = field(default_factory=list)
    pair_tasks: list[tuple[tuple[str, str], tuple[str, str]]] = field(default_factory=list)  # chosen, rejected
    rows_in: int = 0
    filtered: Counter[str] = field(default_factory=Counter)


def _auxiliary(ctx: StageContext[TrainConfig]) -> Auxiliary:
    config, aux = ctx.config, Auxiliary()
    # An objective that is off reads nothing of its table but its row count (recorded).
    aux.rows_in = ctx.inputs["collated_sdpo"].rows + ctx.inputs["collated_preference"].rows
    if not config.sdpo_weight:
        aux.filtered["sdpo_off"] += ctx.inputs["collated_sdpo"].rows
    else:
        sdpo = ctx.table("collated_sdpo", columns=["task_id", "session_id", "split", "student_input_ids",
                                                   "teacher_input_ids", "student_response_idx",
                                                   "teacher_response_idx"])
        for row in sdpo.to_pylist():
            if row["split"] != "train":
                aux.filtered["sdpo_held_out"] += 1
            elif max(len(row["student_input_ids"]), len(row["teacher_input_ids"])) > config.pack_tokens:
                aux.filtered["sdpo_longer_than_pack"] += 1
            else:
                aux.sdpo.append(SdpoExample(row["student_input_ids"], row["teacher_input_ids"],
                                            row["student_response_idx"], row["teacher_response_idx"]))
                aux.sdpo_rows.append((row["task_id"], row["session_id"]))
    if not config.dpo_weight:
        aux.filtered["dpo_off"] += ctx.inputs["collated_preference"].rows
        return aux
    pairs = ctx.table("collated_preference")
    # The split is by session: a pair with a task from a session eval replays (whichever
    # of its tasks reached the SFT export) would train on the eval's context.
    sft = ctx.table("sft", columns=["session_id", "split"])
    held_out = set(sft.filter(pc.not_equal(sft["split"], "train"))["session_id"].to_pylist())
    tasks = ctx.table("preference", columns=["pair_id", "chosen_task_id", "rejected_task_id"]).to_pylist()
    of_pair = {r["pair_id"]: (r["chosen_task_id"], r["rejected_task_id"]) for r in tasks}
    all_tasks = ctx.table("tasks", columns=["task_id", "session_id"])
    session = dict(zip(all_tasks["task_id"].to_pylist(), all_tasks["session_id"].to_pylist(), strict=True))
    for row in pairs.to_pylist():
        chosen, rejected = of_pair.get(row["pair_id"], ("", ""))
        longest = len(row["prompt_input_ids"]) + max(len(row["chosen_input_ids"]), len(row["rejected_input_ids"]))
        if chosen not in session or rejected not in session:
            aux.filtered["pair_without_tasks"] += 1
        elif session[chosen] in held_out or session[rejected] in held_out:
            aux.filtered["pair_held_out"] += 1
        elif longest > config.pack_tokens:
            aux.filtered["pair_longer_than_pack"] += 1
        else:
            aux.pairs.append(PreferenceExample(row["prompt_input_ids"], row["chosen_input_ids"], row["chosen_mask"],
                                               row["rejected_input_ids"], row["rejected_mask"]))
            aux.pair_tasks.append(((chosen, session[chosen]), (rejected, session[rejected])))
    return aux


def _auxiliary_rows(aux: Auxiliary, config: TrainConfig) -> tuple[list[dict[str, object]], int]:
    """train_rows for the SDPO rows and pairs the steps reached, and how many were reached."""
    seen: Counter[tuple[str, str, str]] = Counter()
    reached = 0
    if config.sdpo_weight and aux.sdpo:
        used = Counter(step % len(aux.sdpo) for step in range(config.max_steps))
        reached += len(used)
        for index, times in used.items():
            seen[("sdpo", *aux.sdpo_rows[index])] += times
    if config.dpo_weight and aux.pairs:
        used = Counter(step % len(aux.pairs) for step in range(config.max_steps))
        reached += len(used)
        for index, times in used.items():
            for task in aux.pair_tasks[index]:
                seen[("dpo", *task)] += times
    rows: list[dict[str, object]] = [{"objective": o, "task_id": t, "session_id": s, "times_seen": n}
                                     for (o, t, s), n in sorted(seen.items())]
    return rows, reached


def run(ctx: StageContext[TrainConfig]) -> StageResult:
    config = ctx.config
    folder = ctx.external("model")
    aux = _auxiliary(ctx)
    table = ctx.table("collated_sft", columns=["task_id", "session_id", "split", "n_tokens", "input_ids", "labels"])
    in_train = pc.equal(table["split"], "train")
    fits = pc.and_(in_train, pc.less_equal(table["n_tokens"], config.pack_tokens))
    # Only what can be trained becomes Python lists (ids as Python ints are ~70 bytes each).
    candidates = table.filter(fits).to_pylist()
    filtered = {"held_out": table.num_rows - int(pc.sum(in_train).as_py() or 0),
                "longer_than_pack": int(pc.sum(in_train).as_py() or 0) - len(candidates)}
    packs = pack([(r["input_ids"], r["labels"]) for r in candidates], config.pack_tokens)
    packed = {row for p in packs for row in p.rows}
    filtered["nothing_to_predict"] = len(candidates) - len(packed)
    filtered.update(aux.filtered)
    if not packs:  # a small corpus: no adapter, and the receipt says why
        filtered["untrained"] = len(aux.sdpo) + len(aux.pairs)
        return _untrained(table.num_rows + aux.rows_in, filtered, config)
    seen = Counter(row for index in used_packs(len(packs), config) for row in packs[index].rows)
    trained_rows: list[dict[str, object]] = [
        {"objective": "sft", "task_id": candidates[i]["task_id"], "session_id": candidates[i]["session_id"],
         "times_seen": seen[i]} for i in sorted(seen)]
    filtered["not_reached"] = len(packed) - len(trained_rows)  # max_steps ended first
    extra_rows, extra_reached = _auxiliary_rows(aux, config)
    filtered["aux_not_reached"] = len(aux.sdpo) + len(aux.pairs) - extra_reached
    device = resolve_device(config)
    deterministic = torch_deterministic()
    try:
        model = load_lora(folder, config, device)
        steps, log_dir, base_digest, saved = _train(ctx, model, packs, len(candidates), aux)
    finally:
        restore_deterministic(deterministic)
    adapter = ctx.artifact_dir("adapter")
    _save_adapter(model, adapter, base_digest or "")
    result = probe_log(log_dir / "train.jsonl", config.probe)
    _loss_curve(ctx.artifact_dir("loss_curve") / "loss.png", [(s.step, s.loss) for s in steps])
    rows: list[dict[str, object]] = [{"step": s.step, "loss": s.loss, "lr": s.lr, "grad_norm": s.grad_norm,
                                      "tokens": s.tokens, "sft_loss": s.sft_loss, "sdpo_loss": s.sdpo_loss,
                                      "dpo_loss": s.dpo_loss} for s in steps]
    errors = [f"training-drift probe: {'; '.join(result.reasons)}"] if result.verdict == "ERROR" else []
    used = {index for index in used_packs(len(packs), config)}
    return StageResult(
        tables={"train_steps": from_rows(TRAIN_STEPS, rows),
                "train_rows": from_rows(TRAIN_ROWS, trained_rows + extra_rows)},
        records_in=table.num_rows + aux.rows_in,
        records_out=len(trained_rows) + extra_reached,
        filtered={k: v for k, v in filtered.items() if v},
        stats={
            "trained": True,
            "probe": result.model_dump(mode="json"),
            "packs": len(packs),
            "packs_trained": len(used),
            "tokens": sum(packs[i].tokens for i in used_packs(len(packs), config)),
            "trained_tokens": sum(len(packs[i].targets) for i in used_packs(len(packs), config)),
            "base_model": base_digest,
            "resumed": saved,
            "device": device.name,
            "dtype": device.dtype,
            "objectives": {"sft": 1.0, "sdpo": config.sdpo_weight if aux.sdpo else 0.0,
                           "dpo": config.dpo_weight if aux.pairs else 0.0},
        },
        validation_errors=errors,
        artifacts={"adapter": adapter, "train_log": log_dir, "loss_curve": ctx.artifact_dir("loss_curve")},
    )


def _untrained(rows: int, filtered: dict[str, int], config: TrainConfig) -> StageResult:
    reason = f"no train-split row fits pack_tokens={config.pack_tokens} with a token to predict"
    skipped = ProbeResult(verdict="SKIP", steps=0, reasons=[reason])
    return StageResult(
        tables={"train_steps": empty_table(TRAIN_STEPS), "train_rows": empty_table(TRAIN_ROWS)},
        records_in=rows, records_out=0, filtered={k: v for k, v in filtered.items() if v},
        stats={"trained": False, "reason": reason, "probe": skipped.model_dump(mode="json")},
    )


def _train(ctx: StageContext[TrainConfig], model: Any, packs: list[Pack], rows: int, aux: Auxiliary
           ) -> tuple[list[Step], Path, str | None, bool]:
    config = ctx.config
    log_dir = ctx.artifact_dir("train_log")
    log = write_log(log_dir / "train.jsonl")
    base_digest = ctx.externals["model"].sha256
    log({"type": "banner", "base_model": base_digest, "rows": rows, "packs": len(packs),
         "settings": TrainSettings.model_validate(config.model_dump(exclude={"model", "probe"})).model_dump()})
    saved = ctx.resumed("state")
    steps = train(model, packs, config, log, lambda state: ctx.checkpoint("state", state), saved,
                  sdpo=aux.sdpo, pairs=aux.pairs)
    log({"type": "run_complete", "steps": config.max_steps})
    return steps, log_dir, base_digest, saved is not None


def _save_adapter(model: Any, folder: Path, base_digest: str) -> None:
    """safetensors + adapter_config.json, the base named by its digest (a path would make
    the bytes depend on where the model sat) and its lists sorted (the same adapter is
    the same bytes in every process); peft's README card is left out."""
    model.save_pretrained(str(folder), safe_serialization=True)
    (folder / "README.md").unlink(missing_ok=True)
    config_path = folder / "adapter_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["base_model_name_or_path"] = f"{BASE_PREFIX}{base_digest}"
    for name, value in config.items():  # peft writes sets (target_modules) in hash-seed order
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            config[name] = sorted(value)
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _loss_curve(path: Path, points: list[tuple[int, float]]) -> None:
    from pipeline.report.charts import line_chart

    uri = line_chart([p[0] for p in points], [p[1] for p in points], "training loss", "step", "loss")
    path.write_bytes(base64.b64decode(uri.split(",", 1)[1]))


STAGE = Stage(
    name=STAGE_NAME,
    version=VERSION,
    engines=_engines,
    config_model=TrainConfig,
    # The preference, sft and tasks tables: a DPO pair's tasks, their sessions (lineage),
    # and whether it holds a conversation eval replays (then it is left out).
    inputs=("collated_sft", "collated_sdpo", "collated_preference", "preference", "sft", "tasks"),
    outputs=(TRAIN_STEPS, TRAIN_ROWS),
    run=run,
    traits=Traits(determinism="tolerance", tolerance=1e-5, maps_records=False),
    artifacts=(
        ArtifactSpec("adapter", "LoRA adapter: adapter_model.safetensors and adapter_config.json", optional=True,
                     model=True),
        ArtifactSpec("train_log", "step log: banner, step and run_complete lines", optional=True),
        ArtifactSpec("loss_curve", "the loss curve as a PNG", optional=True),
    ),
    externals=(ExternalInput("model", "model", "model", default=default_model),),
    # On a Ray cluster with a GPU, the whole stage runs as one task holding one
    # (pipeline.core.ray_executor); elsewhere ``device = "auto"`` picks what is there.
    resources=Resources(cpu=1.0, memory_gb=4.0, gpu=1),
)

