"""The losses train adds to masked SFT cross-entropy, each with its weight.

- **SDPO** (hint distillation): at a tool-error site the student sees its own trace;
  the teacher is the same base model with the adapter switched off, conditioned on the
  trace plus a hint. Collate aligned the recovery tokens of both, position for
  position. The loss is per-token reverse KL(student || teacher) (or JSD) over the
  whole vocabulary at those positions, averaged over them. The teacher gets no
  gradient.
- **DPO** on the preference rows: the reference is the base with the adapter off, the
  log-probabilities are summed over each side's own assistant tokens, and the loss is
  ``-log sigmoid(beta * (margin_policy - margin_reference))``. At the first step the
  adapter is zero, so policy = reference and the loss is exactly ln 2.

Only the positions that predict a trained token go through the LM head: the hidden
state at ``k - 1`` predicts the token at ``k``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any, Literal

from pipeline.core.errors import TracelakeError


@dataclass(frozen=True)
class SdpoExample:
    student_ids: list[int]
    teacher_ids: list[int]
    student_idx: list[int]  # positions of the recovery tokens in student_ids
    teacher_idx: list[int]  # the same tokens in teacher_ids

    @property
    def tokens(self) -> int:
        """What a step reads of it (the teacher runs without gradient)."""
        return len(self.student_ids)


@dataclass(frozen=True)
class PreferenceExample:
    prompt: list[int]
    chosen: list[int]
    chosen_mask: list[int]
    rejected: list[int]
    rejected_mask: list[int]

    @property
    def tokens(self) -> int:
        return len(self.prompt) + len(self.chosen) + len(self.rejected)


def _split(model: Any) -> tuple[Any, Any]:
    base = model.get_base_model()
    decoder, head = base.get_decoder(), base.get_output_embeddings()
    if decoder is None or head is None:
        raise TracelakeError(f"train cannot split {type(base).__name__} into a decoder and an LM head")
    return decoder, head


@contextmanager
def _frozen_base(model: Any) -> Iterator[None]:
    """The adapter switched off and dropout with it: the frozen teacher and the DPO
    reference are the base model as it is, not a random draw of it."""
    import torch

    was_training = model.training
    switch = model.disable_adapter() if hasattr(model, "disable_adapter") else nullcontext()
    model.eval()
    try:
        with torch.no_grad(), switch:
            yield
    finally:
        model.train(was_training)


def position_logits(model: Any, ids: Sequence[int], predicts: Sequence[int]) -> Any:
    """Logits (float32) of the distributions that predict the tokens at ``predicts``."""
    import torch

    decoder, head = _split(model)
    device = next(model.parameters()).device
    hidden = decoder(input_ids=torch.tensor([list(ids)], device=device), use_cache=False).last_hidden_state
    rows = torch.tensor([k - 1 for k in predicts], dtype=torch.long, device=device)
    return head(hidden[0, rows]).float()


def divergence(student_logits: Any, teacher_logits: Any, kind: Literal["reverse_kl", "jsd"]) -> Any:
    """Per-token divergence from the student to the teacher, averaged over tokens."""
    import math

    import torch
    import torch.nn.functional as F

    student = F.log_softmax(student_logits, dim=-1)
    teacher = F.log_softmax(teacher_logits, dim=-1)
    if kind == "reverse_kl":  # E_student[log s - log t]: mode-seeking, what on-policy distillation uses
        per_token = (student.exp() * (student - teacher)).sum(-1)
    else:
        mixture = torch.logsumexp(torch.stack([student, teacher]), dim=0) - math.log(2.0)
        per_token = 0.5 * ((student.exp() * (student - mixture)).sum(-1)
                           + (teacher.exp() * (teacher - mixture)).sum(-1))
    return per_token.mean()


def sdpo_loss(model: Any, example: SdpoExample, kind: Literal["reverse_kl", "jsd"]) -> Any:

    student = position_logits(model, example.student_ids, example.student_idx)
    with _frozen_base(model):
        teacher = position_logits(model, example.teacher_ids, example.teacher_idx)
    return divergence(student, teacher, kind)


def sequence_logp(model: Any, prompt: Sequence[int], completion: Sequence[int], mask: Sequence[int]) -> Any:
    """Summed log-probability of the completion's trained tokens after the prompt."""
    import torch
    import torch.nn.functional as F

    ids = [*prompt, *completion]
    trained = [len(prompt) + k for k, on in enumerate(mask) if on]
    if not trained:
        return torch.zeros((), device=next(model.parameters()).device)
    logits = position_logits(model, ids, trained)
    targets = torch.tensor([ids[k] for k in trained], dtype=torch.long, device=logits.device)
    return F.log_softmax(logits, dim=-1).gather(1, targets[:, None]).sum()


def dpo_loss(model: Any, example: PreferenceExample, beta: float) -> Any:
    import torch.nn.functional as F

    chosen = sequence_logp(model, example.prompt, example.chosen, example.chosen_mask)
    rejected = sequence_logp(model, example.prompt, example.rejected, example.rejected_mask)
    with _frozen_base(model):
        reference = (sequence_logp(model, example.prompt, example.chosen, example.chosen_mask)
                     - sequence_logp(model, example.prompt, example.rejected, example.rejected_mask))
    return -F.logsigmoid(beta * ((chosen - rejected) - reference))
