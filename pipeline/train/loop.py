"""LoRA training on packed, masked sequences: the loop the train stage runs.

The LM head and the cross-entropy run only at trained positions (``packing``); the
forward always passes ``use_cache=False``. Under a seed on the CPU the run is
deterministic (``torch.use_deterministic_algorithms``). State (adapter weights,
optimizer, step) is checkpointed every ``checkpoint_every`` steps through the stage's
resumable checkpoints; a resumed run logs the steps it repeats again (the probe keeps
the latest line of a step).
"""

from __future__ import annotations

import io
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from pipeline.core.errors import TracelakeError
from pipeline.train.objectives import PreferenceExample, SdpoExample, dpo_loss, sdpo_loss
from pipeline.train.packing import Pack


class TrainSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    lora_rank: int = Field(8, ge=1)
    lora_alpha: int = Field(16, ge=1)
    lora_dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: list[str] = Field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    learning_rate: float = Field(1e-3, gt=0)
    schedule: Literal["constant", "linear", "cosine"] = "cosine"
    warmup_steps: int = Field(0, ge=0)
    max_steps: int = Field(10, ge=1, description="Optimizer steps (packs are cycled as needed).")
    pack_tokens: int = Field(512, ge=16, description="Tokens per packed sequence.")
    gradient_accumulation: int = Field(1, ge=1)
    seed: int = 0
    checkpoint_every: int = Field(5, ge=1)
    sdpo_weight: float = Field(0.0, ge=0, description="Weight of the SDPO hint-distillation loss (0: off); "
                                                      "one train-split SDPO row per step, cycled.")
    sdpo_divergence: Literal["reverse_kl", "jsd"] = Field("reverse_kl", description="Student to teacher, per token.")
    dpo_weight: float = Field(0.0, ge=0, description="Weight of the DPO loss on preference pairs (0: off); one "
                                                     "pair per step, cycled.")
    dpo_beta: float = Field(0.1, gt=0)
    device: Literal["auto", "cpu", "cuda", "mps"] = Field("auto", description="auto: cuda, then mps, then cpu.")
    precision: Literal["auto", "fp32", "bf16"] = Field("auto", description="auto: bf16 where the device supports "
                                                                          "it (cuda), else fp32.")


@dataclass
class Step:
    step: int
    loss: float  # the weighted total the optimizer stepped on
    lr: float
    grad_norm: float
    tokens: int
    tokens_per_sec: float
    timestamp: float
    sft_loss: float | None = None
    sdpo_loss: float | None = None  # unweighted; None when SDPO is off
    dpo_loss: float | None = None

    def record(self) -> dict[str, Any]:
        """The step log's line for this step."""
        return {"type": "step", "step": self.step, "loss": self.loss, "lr": self.lr, "grad_norm": self.grad_norm,
                "tokens_per_sec": round(self.tokens_per_sec, 1), "timestamp": self.timestamp,
                "sft_loss": self.sft_loss, "sdpo_loss": self.sdpo_loss, "dpo_loss": self.dpo_loss}


@dataclass(frozen=True)
class Device:
    name: str  # cpu, cuda, mps
    dtype: str  # float32, bfloat16


def device_class() -> str:
    """cuda, mps or cpu: what ``device = "auto"`` would most likely pick here, from the
    driver's files and the platform, without importing torch (the cache key needs it on
    every run, a no-op one included)."""
    import platform
    from pathlib import Path

    if Path("/proc/driver/nvidia/version").exists() or Path("/dev/kfd").exists():
        return "cuda"
    if platform.system() == "Darwin" and platform.machine() == "arm64":
        return "mps"
    return "cpu"


def resolve_device(settings: TrainSettings) -> Device:
    import torch

    name = settings.device
    if name == "auto":
        mps = getattr(torch.backends, "mps", None)
        name = "cuda" if torch.cuda.is_available() else "mps" if mps is not None and mps.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise TracelakeError("train: device = cuda, but torch sees no CUDA device")
    bf16 = name == "cuda" and torch.cuda.is_bf16_supported()
    if settings.precision == "bf16" and name != "cuda":
        raise TracelakeError(f"train: precision = bf16 needs a CUDA device (this one: {name})")
    dtype = "bfloat16" if settings.precision == "bf16" or (settings.precision == "auto" and bf16) else "float32"
    return Device(name, dtype)


def used_packs(count: int, settings: TrainSettings) -> list[int]:
    """The pack each micro-step trains on, in order (packs are cycled)."""
    return [i % count for i in range(settings.max_steps * settings.gradient_accumulation)]


def _lr(settings: TrainSettings, step: int) -> float:
    base = settings.learning_rate
    if step < settings.warmup_steps:
        return base * (step + 1) / settings.warmup_steps
    if settings.schedule == "constant":
        return base
    progress = (step - settings.warmup_steps) / max(1, settings.max_steps - settings.warmup_steps)
    if settings.schedule == "linear":
        return base * (1 - progress)
    return base * 0.5 * (1 + math.cos(math.pi * progress))


def pack_loss(model: Any, pack: Pack) -> Any:
    """Summed cross-entropy over the pack's trained tokens, the LM head run on those rows
    only (the caller divides by the trained tokens of the whole accumulation group, so
    every token weighs the same, whichever pack it is in). The decoder and the head come
    from the model's own accessors; logit post-processing some families add (Gemma's
    soft-capping) is not applied."""
    import torch
    import torch.nn.functional as F

    base = model.get_base_model()
    decoder, head = base.get_decoder(), base.get_output_embeddings()
    if decoder is None or head is None:
        raise TracelakeError(f"train cannot split {type(base).__name__} into a decoder and an LM head")
    device = next(model.parameters()).device
    input_ids = torch.tensor([pack.input_ids], device=device)
    position_ids = torch.tensor([pack.position_ids], device=device)
    hidden = decoder(input_ids=input_ids, position_ids=position_ids, use_cache=False).last_hidden_state
    chosen = hidden[0, torch.tensor(pack.sources, dtype=torch.long, device=device)]
    logits = head(chosen).float()
    return F.cross_entropy(logits, torch.tensor(pack.targets, dtype=torch.long, device=device), reduction="sum")


def torch_deterministic() -> bool:
    import torch

    return bool(torch.are_deterministic_algorithms_enabled())


def restore_deterministic(before: bool) -> None:
    """Training turns deterministic algorithms on; whatever runs next in the process gets
    back what it had."""
    import torch

    torch.use_deterministic_algorithms(before)


def load_lora(model_folder: Path, settings: TrainSettings, device: Device | None = None) -> Any:
    from pipeline.core.imports import allow_pandas, quiet_transformers

    allow_pandas()  # transformers' model classes import it
    quiet_transformers()
    import torch
    import transformers
    from peft import LoraConfig, get_peft_model

    device = device or Device("cpu", "float32")
    torch.manual_seed(settings.seed)
    # Deterministic on the CPU; on an accelerator some kernels have no deterministic
    # version, so it warns instead of failing (the stage's trait is tolerance).
    torch.use_deterministic_algorithms(True, warn_only=device.name != "cpu")
    model_class: Any = transformers.AutoModelForCausalLM
    base = model_class.from_pretrained(str(model_folder), local_files_only=True, dtype=getattr(torch, device.dtype))
    config = LoraConfig(r=settings.lora_rank, lora_alpha=settings.lora_alpha, lora_dropout=settings.lora_dropout,
                        target_modules=list(settings.target_modules), task_type="CAUSAL_LM")
    return get_peft_model(base, config).to(device.name)


def train(
    model: Any, packs: Sequence[Pack], settings: TrainSettings, log: Callable[[dict[str, Any]], None],
    save_state: Callable[[bytes], None], saved_state: bytes | None,
    sdpo: Sequence[SdpoExample] = (), pairs: Sequence[PreferenceExample] = (),
) -> list[Step]:
    """Runs ``settings.max_steps`` optimizer steps over ``packs`` (cycled in order); with
    a weight, each step adds one SDPO row and one preference pair (each cycled)."""
    import torch

    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=settings.learning_rate)
    start = 0
    steps: list[Step] = []
    if saved_state is not None:
        device = next(model.parameters()).device
        state = torch.load(io.BytesIO(saved_state), weights_only=False, map_location=device)
        model.load_state_dict(state["model"], strict=False)
        optimizer.load_state_dict(state["optimizer"])
        torch.random.set_rng_state(state["rng"].cpu())
        if state.get("cuda_rng") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([r.cpu() for r in state["cuda_rng"]])
        start = int(state["step"])
        steps = [Step(**record) for record in state["steps"]]  # the killed run's, logged again
        for done in steps:
            log(done.record())
    model.train()
    schedule = used_packs(len(packs), settings)
    for step in range(start, settings.max_steps):
        began = time.perf_counter()
        for group in optimizer.param_groups:
            group["lr"] = _lr(settings, step)
        optimizer.zero_grad(set_to_none=True)
        group_packs = [packs[i] for i in schedule[step * settings.gradient_accumulation:
                                                  (step + 1) * settings.gradient_accumulation]]
        trained = sum(len(p.targets) for p in group_packs)
        sft, tokens = 0.0, 0
        for pack in group_packs:
            loss = pack_loss(model, pack) / trained
            loss.backward()
            sft += float(loss.detach())
            tokens += pack.tokens
        extra: dict[str, float | None] = {"sdpo_loss": None, "dpo_loss": None}
        total = sft
        for name, weight, examples in (("sdpo_loss", settings.sdpo_weight, sdpo),
                                       ("dpo_loss", settings.dpo_weight, pairs)):
            if not (weight and examples):
                continue
            example = examples[step % len(examples)]
            loss = (sdpo_loss(model, example, settings.sdpo_divergence) if isinstance(example, SdpoExample)
                    else dpo_loss(model, example, settings.dpo_beta))
            (weight * loss).backward()
            extra[name] = float(loss.detach())
            total += weight * float(loss.detach())
            tokens += example.tokens
        norm = float(torch.nn.utils.clip_grad_norm_(parameters, 1.0))
        optimizer.step()
        elapsed = time.perf_counter() - began
        done = Step(step, total, _lr(settings, step), norm, tokens, tokens / elapsed if elapsed else 0.0, time.time(),
                    sft_loss=sft, **extra)
        steps.append(done)
        log(done.record())
        if (step + 1) % settings.checkpoint_every == 0 and step + 1 < settings.max_steps:
            buffer = io.BytesIO()
            trainable = {k: v for k, v in model.state_dict().items() if "lora_" in k}
            torch.save({"model": trainable, "optimizer": optimizer.state_dict(),
                        "rng": torch.random.get_rng_state(), "step": step + 1,
                        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
                        "steps": [asdict(s) for s in steps]}, buffer)
            save_state(buffer.getvalue())
    return steps


def write_log(path: Path) -> Callable[[dict[str, Any]], None]:
    def log(record: dict[str, Any]) -> None:
        with path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record, sort_keys=True) + "\n")

    return log
