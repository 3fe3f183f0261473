"""A render encoded piece by piece, each long piece once per worker.

A fast tokenizer cuts its input at its added tokens (``<|im_start|>``, ``<think>``) before
it normalises or pre-tokenises anything, and encodes each piece between them on its own
(``AddedVocabulary::extract_and_normalize`` in tokenizers). So a render's ids are its
pieces' ids one after another, and a piece that recurs need be encoded once: the system
prompt with its tool list opens every conversation, and a conversation's turns come back
in its SDPO rows (student, teacher, context) and both sides of its preference pairs.

That holds only for tokenizers whose added tokens match wherever they are typed (not
normalised, no ``lstrip``/``rstrip``/``single_word``), with no truncation or padding, no
pre-tokenizer that looks at a piece's place in the whole input (``Metaspace``, whose
``prepend_scheme="first"`` marks only the input's first piece) and a post-processor that
adds nothing without special tokens. ``PieceEncoder.of`` returns None for any other, and
the render is encoded whole. Tests hold both encodings equal, ids and offsets, on
generated and real conversations for every template family collate is tested on.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# A piece this long is looked up on its own; shorter ones (a role name, a newline) are
# encoded with their neighbours in one call, which costs less than a lookup each.
MIN_CACHED_CHARS = 64
# Characters of cached pieces a worker keeps (about 7 bytes of memory each, ids and
# offsets included); past it the cache starts over.
MAX_CACHED_CHARS = 8 << 20
MAX_SEEN = 1 << 18  # pieces met once that are remembered (by hash: a few MB)
_SAFE_POST_PROCESSORS = {"ByteLevel", "TemplateProcessing", "RobertaProcessing", "BertProcessing"}


@dataclass
class PieceEncoder:
    backend: Any  # tokenizers.Tokenizer
    added: re.Pattern[str]  # every added token, longest first: leftmost-longest, as tokenizers matches
    _cache: dict[str, tuple[list[int], np.ndarray]] = field(default_factory=dict, repr=False)
    _cached_chars: int = 0
    # Hashes of long pieces met once: a piece is cached the second time it comes (most
    # pieces of a corpus come once; keeping each would cost more than it saves).
    _seen: set[int] = field(default_factory=set, repr=False)

    @classmethod
    def of(cls, backend: Any) -> PieceEncoder | None:
        """The encoder for a fast tokenizer's backend, or None where pieces would not add
        up to the whole (see the module docstring)."""
        if backend is None or backend.truncation is not None or backend.padding is not None:
            return None
        added = list(backend.get_added_tokens_decoder().values())
        if not added or any(t.normalized or t.lstrip or t.rstrip or t.single_word for t in added):
            return None
        state = json.loads(backend.to_str())
        if "Metaspace" in json.dumps(state.get("pre_tokenizer")):
            return None
        post = state.get("post_processor")
        kinds = [p.get("type") for p in post.get("processors", [post])] if isinstance(post, dict) else []
        if not all(kind in _SAFE_POST_PROCESSORS for kind in kinds):
            return None
        contents = sorted({str(t.content) for t in added}, key=len, reverse=True)
        return cls(backend, re.compile("|".join(re.escape(c) for c in contents)))

    def clear(self) -> None:
        self._cache.clear()
        self._seen.clear()
        self._cached_chars = 0

    def encode(self, text: str) -> tuple[list[int], np.ndarray]:
        """Ids and ``(n, 2)`` offsets of ``text``, as ``backend.encode(text,
        add_special_tokens=False)`` gives them. Each long piece found in the cache is
        taken from there; the text between them is encoded in one call, and the long
        pieces inside it are cut out of that call's result into the cache (their tokens
        are those starting inside them: nothing crosses an added token)."""
        ids: list[int] = []
        offsets: list[np.ndarray] = []
        run_start = 0  # the text not yet encoded starts here
        missing: list[tuple[int, int]] = []  # long pieces in that text, to cache
        for start, end in self._long_pieces(text):
            piece = text[start:end]
            found = self._cache.get(piece)
            if found is None:
                key = hash(piece)
                if key in self._seen:  # a second sight: worth keeping from now on
                    missing.append((start, end))
                else:
                    if len(self._seen) >= MAX_SEEN:
                        self._seen.clear()
                    self._seen.add(key)
                continue
            self._take_run(text, run_start, start, missing, ids, offsets)
            missing = []
            ids.extend(found[0])
            offsets.append(found[1] + start)
            run_start = end
        self._take_run(text, run_start, len(text), missing, ids, offsets)
        merged = np.concatenate(offsets) if offsets else np.zeros((0, 2), dtype=np.int64)
        return ids, merged

    def _long_pieces(self, text: str) -> Iterator[tuple[int, int]]:
        piece_start = 0
        for match in self.added.finditer(text):
            if match.start() - piece_start >= MIN_CACHED_CHARS:
                yield piece_start, match.start()
            piece_start = match.end()
        if len(text) - piece_start >= MIN_CACHED_CHARS:
            yield piece_start, len(text)

    def _take_run(self, text: str, start: int, end: int, missing: list[tuple[int, int]], ids: list[int],
                  offsets: list[np.ndarray]) -> None:
        if end <= start:
            return
        run_ids, run_offsets = encode_whole(self.backend, text[start:end])
        ids.extend(run_ids)
        offsets.append(run_offsets + start if start else run_offsets)
        if not missing:
            return
        token_starts = run_offsets[:, 0]
        for piece_start, piece_end in missing:
            first, stop = np.searchsorted(token_starts, [piece_start - start, piece_end - start], side="left")
            piece = text[piece_start:piece_end]
            if self._cached_chars + len(piece) > MAX_CACHED_CHARS:
                self.clear()
            self._cache[piece] = (run_ids[first:stop], run_offsets[first:stop] - (piece_start - start))
            self._cached_chars += len(piece)


def encode_whole(backend: Any, text: str) -> tuple[list[int], np.ndarray]:
    """What a fast tokenizer's ``__call__`` runs, without its conversions: ids, and
    offsets as an ``(n, 2)`` array."""
    encoding = backend.encode(text, add_special_tokens=False)
    pairs = encoding.offsets
    flat = np.fromiter(itertools.chain.from_iterable(pairs), dtype=np.int64, count=2 * len(pairs))
    return list(encoding.ids), flat.reshape(-1, 2)
