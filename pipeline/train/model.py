"""The tiny base model the demo and the tests train: a randomly initialised Qwen3 from a
config, with the offline Qwen tokenizer beside it, built the same way every time.

Its weights come from a seeded generator on the CPU and are written with safetensors,
so the folder, and so its digest as an external input, is the same on every build with
the same library versions.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from pipeline.core.hashing import CacheMac
from pipeline.core.store import LakeLayout

TINY = {"hidden_size": 16, "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 8,
        "num_hidden_layers": 2, "intermediate_size": 32, "max_position_embeddings": 4096}
SEED = 0
# How an adapter's config names its base: by the digest of the model folder, never a path.
BASE_PREFIX = "tracelake-model-sha256-"


def build_tiny_qwen3(folder: Path, tokenizer_folder: Path) -> None:
    from pipeline.core.imports import allow_pandas, quiet_transformers

    allow_pandas()  # transformers' model classes import it
    quiet_transformers()
    import torch
    import transformers

    from pipeline.collate.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(tokenizer_folder)
    config_class: Any = transformers.Qwen3Config
    model_class: Any = transformers.Qwen3ForCausalLM
    config = config_class(vocab_size=len(tokenizer), tie_word_embeddings=True,
                          bos_token_id=None, eos_token_id=tokenizer.eos_token_id,
                          pad_token_id=tokenizer.pad_token_id, **TINY)
    generator_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(SEED)
        model = model_class(config)
    finally:
        torch.random.set_rng_state(generator_state)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(folder), safe_serialization=True)
    for path in tokenizer_folder.iterdir():
        shutil.copyfile(path, folder / path.name)


def default_model(layout: LakeLayout, mac: CacheMac) -> Path:
    """The tiny model as a lake artifact, built on first use (see the tokenizer's twin,
    ``pipeline.collate.tokenizer.default_tokenizer``)."""
    from pipeline.collate.tokenizer import default_tokenizer
    from pipeline.core.artifacts import built_artifact

    tokenizer = default_tokenizer(layout, mac)

    def build(scratch: Path) -> Path:
        build_tiny_qwen3(scratch / "tiny-qwen3", tokenizer)
        return scratch / "tiny-qwen3"

    # The tokenizer's folder is named by its digest: a new tokenizer means a new model.
    return built_artifact(layout, "model", layout.cache / "train" / "default-model.json", tokenizer.name, build)
