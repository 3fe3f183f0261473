"""Sequences packed end to end with restarting ``position_ids`` and no attention mask.

Transformers then keeps attention block-diagonal (each sequence sees only itself) as
long as the forward runs with ``use_cache=False``: with the default cache it silently
attends across packed sequences (a test pins packed logits to separate ones). The loss
is taken only where a token is trained: ``sources`` are the positions whose hidden
state predicts a trained token of the same sequence, ``targets`` those tokens, so the
LM head (151k columns) runs on a few rows instead of every position.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

IGNORE = -100


@dataclass(frozen=True)
class Pack:
    input_ids: list[int]
    position_ids: list[int]
    sources: list[int]  # positions whose hidden state predicts a trained token
    targets: list[int]  # the token each of them predicts
    rows: list[int]  # indices of the examples packed here

    @property
    def tokens(self) -> int:
        return len(self.input_ids)


def pack(examples: Sequence[tuple[list[int], list[int]]], max_tokens: int) -> list[Pack]:
    """(input_ids, labels) pairs, in order, into packs of at most ``max_tokens`` (a longer
    example is left to the caller: collate already cut them by whole turns). An example
    with nothing to predict (its only trained token is its first) adds nothing."""
    packs: list[Pack] = []
    ids: list[int] = []
    positions: list[int] = []
    sources: list[int] = []
    targets: list[int] = []
    rows: list[int] = []
    for index, (input_ids, labels) in enumerate(examples):
        if not any(label != IGNORE for label in labels[1:]):
            continue
        if len(input_ids) > max_tokens:
            raise ValueError(f"an example of {len(input_ids)} tokens does not fit {max_tokens}")
        if ids and len(ids) + len(input_ids) > max_tokens:
            packs.append(Pack(ids, positions, sources, targets, rows))
            ids, positions, sources, targets, rows = [], [], [], [], []
        offset = len(ids)
        for t in range(len(input_ids) - 1):  # never predicts across a sequence boundary
            if labels[t + 1] != IGNORE:
                sources.append(offset + t)
                targets.append(labels[t + 1])
        ids += input_ids
        positions += range(len(input_ids))
        rows.append(index)
    if ids:
        packs.append(Pack(ids, positions, sources, targets, rows))
    return packs
