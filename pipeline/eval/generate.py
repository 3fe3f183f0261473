"""Greedy generation from the base model and, on the same weights, the adapter.

One model is loaded: the adapter is applied with peft and switched off
(``disable_adapter``) for the base, so both answer through the same code and
template. Prompts are rendered with the same chat template and arguments collate
trains with (``pipeline.collate.masks.Renderer``), generation prompt added. Decoding
is greedy (by hand: no sampling or penalty settings of the model folder apply), capped
at ``max_new_tokens``, and stops at the template's turn terminator or an end token of
the tokenizer or the model's generation config. The same prompt asked twice of the same model (a rollout's
first step is often a replay point too) is answered from memory.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pipeline.collate.masks import Refused, Renderer
from pipeline.core.errors import TracelakeError
from pipeline.eval.replay import Generate, PromptTooLong, Reply


def load_models(model_folder: Path, adapter_folder: Path | None) -> Any:
    from pipeline.core.imports import allow_pandas, quiet_transformers

    allow_pandas()  # transformers' model classes import it
    quiet_transformers()
    import torch
    import transformers

    model_class: Any = transformers.AutoModelForCausalLM
    try:
        model = model_class.from_pretrained(str(model_folder), local_files_only=True, dtype=torch.float32)
    except (OSError, ValueError) as exc:
        raise TracelakeError(f"eval cannot load the model: {str(exc).splitlines()[0]}") from None
    if adapter_folder is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter_folder), is_trainable=False)
    model.eval()
    return model


class Generator:
    def __init__(self, model: Any, renderer: Renderer, max_new_tokens: int, max_prompt_tokens: int) -> None:
        self.model = model
        self.renderer = renderer
        self.max_new_tokens = max_new_tokens
        self.max_prompt_tokens = max_prompt_tokens
        tokenizer = renderer.tokenizer
        stops: set[Any] = {tokenizer.eos_token_id}
        terminator_ids = tokenizer(renderer.terminator, add_special_tokens=False)["input_ids"]
        if terminator_ids:
            stops.add(terminator_ids[0])
        own = getattr(getattr(model, "generation_config", None), "eos_token_id", None)  # <|endoftext|> too
        stops |= set(own) if isinstance(own, list) else {own}
        self.stops = sorted(int(i) for i in stops if isinstance(i, int))
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.stops[0]
        self._answers: dict[tuple[bool, str], Reply] = {}
        self.prompts = 0
        self.generated_tokens = 0

    def for_model(self, adapter: bool) -> Generate:
        def generate(messages: Sequence[Mapping[str, Any]], tools: list[dict[str, Any]] | None) -> Reply:
            return self.generate(messages, tools, adapter)

        return generate

    def generate(self, messages: Sequence[Mapping[str, Any]], tools: list[dict[str, Any]] | None,
                 adapter: bool) -> Reply:
        try:
            prompt = self.renderer.text(messages, tools, generation_prompt=True)
            ids, _ = self.renderer.encode(prompt)
        except Refused as refused:  # a history the template cannot render: no prompt to ask
            raise PromptTooLong(refused.detail) from None
        if len(ids) > self.max_prompt_tokens:
            raise PromptTooLong(f"{len(ids)} tokens")
        key = (adapter, prompt)
        if key not in self._answers:
            self._answers[key] = self._decode(ids, adapter)
        return self._answers[key]

    def _decode(self, ids: list[int], adapter: bool) -> Reply:
        """Greedy decoding by hand, with the KV cache: ``generate`` would merge the model
        folder's generation settings (a repetition penalty, say) into any config given,
        and those would hide the very repetition the eval measures."""
        import contextlib

        import torch

        model = self.model
        switch = contextlib.nullcontext() if adapter or not hasattr(model, "disable_adapter") \
            else model.disable_adapter()
        device = next(model.parameters()).device
        new: list[int] = []
        stopped = False
        with switch, torch.no_grad():
            out = model(input_ids=torch.tensor([ids], device=device), use_cache=True, logits_to_keep=1)
            for _ in range(self.max_new_tokens):
                token = int(out.logits[0, -1].argmax())
                if token in self.stops:
                    stopped = True
                    break
                new.append(token)
                out = model(input_ids=torch.tensor([[token]], device=device), past_key_values=out.past_key_values,
                            use_cache=True, logits_to_keep=1)
        self.prompts += 1
        self.generated_tokens += len(new)
        return Reply(str(self.renderer.tokenizer.decode(new, skip_special_tokens=False)), truncated=not stopped)
