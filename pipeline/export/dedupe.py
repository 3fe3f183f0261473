"""Exact and near-duplicate collapse of conversations before export.

Resumed and forked sessions copy whole conversations into new files, so one piece of
work can appear many times; training on 200 copies of it weights it 200-fold. Exact
duplicates share the xxh3 of their normalised text; near duplicates share enough of their
character 8-gram shingles (MinHash estimate >= threshold, LSH banding for candidates).

Signatures are computed for a whole batch at once in numpy, and by score for every
conversation (exports reuse them unless they change a row or the signature settings):

* texts are normalised as bytes (ASCII case and whitespace runs folded, trimmed);
* shingles are the 8-byte windows of the normalised text (first ``max_chars`` bytes), hashed with one multiply; texts of 2 KiB and more keep a content-defined
  1/8 of their shingles (hash below 2^61), which preserves Jaccard in expectation;
* the signature is one-permutation MinHash: a second mix spreads each kept shingle over
  ``num_perm`` bins and each bin keeps its minimum, O(shingles) rather than
  O(shingles x num_perm); empty bins borrow the next non-empty bin (rotation
  densification) so short texts are not "similar" by sharing empty bins.

The seed enters both hashes, so the same input always collapses the same way. The first
item in the caller's order is kept; a near duplicate is matched against kept items only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import xxhash
from pydantic import BaseModel, ConfigDict, Field

SHINGLE = 8
DENSE_BYTES = 2048  # shorter texts keep every shingle
_C1 = np.uint64(0x9E3779B97F4A7C15)
_C2 = np.uint64(0xBF58476D1CE4E5B9)
_C3 = np.uint64(0x94D049BB133111EB)
_SAMPLE = np.uint64(1 << 61)
_MAX32 = np.uint64(0xFFFFFFFF)
_EMPTY = np.uint64(1 << 32)
_CHUNK_BYTES = 1 << 18  # texts are signed in ~256 KB batches: arrays stay in cache


class DedupeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    threshold: float = Field(default=0.85, gt=0, le=1, description="MinHash LSH Jaccard threshold.")
    num_perm: int = Field(default=64, ge=16, description="MinHash bins (one-permutation hashing).")
    seed: int = Field(default=1, description="Hash seed (deterministic).")
    max_chars: int = Field(default=12_000, ge=100, description="Characters of each text shingled.")

    def signature_params(self) -> tuple[int, int, int]:
        return (self.num_perm, self.seed, self.max_chars)


# Score signs every conversation with these; an export with other settings re-signs.
DEFAULT_SIGNATURE = DedupeConfig().signature_params()


# Byte map for normalisation: ASCII upper case to lower, ASCII whitespace (and the
# \x1c-\x1f separators Python's str.split also splits on) to a space.
_FOLD = np.arange(256, dtype=np.uint8)
_FOLD[65:91] += 32
_FOLD[[9, 10, 11, 12, 13, 28, 29, 30, 31]] = 32
_SPACE = 32


_FOLD_TABLE = _FOLD.tobytes()


def _normalise(data: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Fold case and whitespace runs, trim; returns (bytes, new ends) of the texts.

    ``" ".join(text.split()).lower()`` for ASCII; non-ASCII bytes are compared as they are.
    A space is dropped when the next byte of its text is a space too (so trailing runs
    go) or it is the last space of a leading run.
    """
    n = len(data)
    if not n:
        return data.copy(), np.zeros(len(starts), dtype=np.int64)
    folded = np.frombuffer(data.tobytes().translate(_FOLD_TABLE), dtype=np.uint8)  # C speed, unlike a LUT index
    space = folded == _SPACE
    drop = np.empty(n, dtype=bool)
    np.logical_and(space[:-1], space[1:], out=drop[:-1])
    drop[-1] = space[-1]
    nonempty = ends > starts
    last = ends[nonempty] - 1
    drop[last] = space[last]  # a text's last byte: dropped when it is a space
    for i in np.flatnonzero(nonempty & space[np.minimum(starts, n - 1)]).tolist():
        run = int(np.argmin(space[starts[i] : ends[i]]))  # leading spaces (0: all spaces)
        if run:
            drop[starts[i] + run - 1] = True
    keep = np.logical_not(drop, out=drop)
    counts = np.zeros(len(starts), dtype=np.int64)
    if nonempty.any():
        counts[nonempty] = np.add.reduceat(keep.view(np.uint8), starts[nonempty], dtype=np.int64)
    return np.compress(keep, folded), np.cumsum(counts)


def dedupe_keys(texts: list[str] | pa.Array | pa.ChunkedArray, num_perm: int, seed: int,
                max_chars: int) -> tuple[list[str], np.ndarray]:
    """(exact digest, MinHash signature) per text: xxh3-128 of the normalised text, and the
    signature of its first ``max_chars`` normalised bytes. ``texts`` may be an Arrow string
    array: its UTF-8 buffer is used as it is (no Python strings)."""
    if isinstance(texts, list):
        texts = pa.array(texts, type=pa.large_string())
    array = texts.combine_chunks() if isinstance(texts, pa.ChunkedArray) else texts
    array = array.cast(pa.large_binary()).fill_null(b"")
    n = len(array)
    sigs = np.empty((n, num_perm), dtype=np.uint32)
    if n == 0:
        return [], sigs
    offsets = np.frombuffer(array.buffers()[1], dtype=np.int64)[array.offset : array.offset + n + 1]
    data_buffer = array.buffers()[2]
    data = np.frombuffer(data_buffer, dtype=np.uint8) if data_buffer is not None else np.zeros(0, np.uint8)
    digests: list[str] = []
    start = 0
    while start < n:  # batches of ~256 KB keep the arrays in cache
        stop = int(np.searchsorted(offsets, offsets[start] + _CHUNK_BYTES, side="left"))
        stop = min(max(stop, start + 1), n)
        lo, hi = int(offsets[start]), int(offsets[stop])
        chunk_digests, sigs[start:stop] = _keys_chunk(data[lo:hi], offsets[start : stop + 1] - lo,
                                                      num_perm, seed, max_chars)
        digests += chunk_digests
        start = stop
    return digests, sigs


def _keys_chunk(data: np.ndarray, bounds: np.ndarray, num_perm: int, seed: int,
                max_chars: int) -> tuple[list[str], np.ndarray]:
    norm, new_ends = _normalise(data, bounds[:-1], bounds[1:])
    cuts = [0, *new_ends.tolist()]
    view = norm.data
    digests = [xxhash.xxh3_128_hexdigest(view[cuts[i] : cuts[i + 1]]) for i in range(len(cuts) - 1)]
    return digests, _sign_normalised(norm, cuts, num_perm, seed, max_chars)


def _sign_normalised(norm: np.ndarray, cuts: list[int], num_perm: int, seed: int, max_chars: int) -> np.ndarray:
    """Signatures of the normalised texts ``norm[cuts[i]:cuts[i + 1]]``, each cut to its first
    ``max_chars`` bytes and zero-padded to one shingle; signed in place unless some text
    needs cutting or padding (then copied into a padded blob, never via Python bytes)."""
    lengths = [min(cuts[i + 1] - cuts[i], max_chars) for i in range(len(cuts) - 1)]
    if all(SHINGLE <= n and cuts[i] + n == cuts[i + 1] for i, n in enumerate(lengths)):
        return _sign_arrays(norm, np.asarray(cuts[1:], dtype=np.int64), num_perm, seed)
    sizes = np.maximum(np.asarray(lengths, dtype=np.int64), SHINGLE)
    ends = np.cumsum(sizes)
    blob = np.zeros(int(ends[-1]), dtype=np.uint8)
    for i, n in enumerate(lengths):
        start = int(ends[i] - sizes[i])
        blob[start : start + n] = norm[cuts[i] : cuts[i] + n]
    return _sign_arrays(blob, ends, num_perm, seed)


def normalise(text: str) -> str:
    """The normalisation dedupe applies, for one text (tests, debugging)."""
    data = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
    norm, _ = _normalise(data, np.array([0]), np.array([len(data)]))
    return norm.tobytes().decode("utf-8", errors="replace")


def _mix(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * _C2
        x = (x ^ (x >> np.uint64(27))) * _C3
        mixed: np.ndarray = x ^ (x >> np.uint64(31))
        return mixed


def _seed_word(seed: int) -> np.uint64:
    return np.uint64(xxhash.xxh3_64_intdigest(f"minhash:{seed}".encode()))


def _sign_arrays(blob: np.ndarray, ends: np.ndarray, num_perm: int, seed: int) -> np.ndarray:
    """Signatures of the texts ``blob[ends[i - 1]:ends[i]]`` (each at least one shingle)."""
    lengths = np.diff(ends, prepend=0)
    data = np.concatenate([blob[: int(ends[-1])], np.zeros(SHINGLE, dtype=np.uint8)])
    # Every byte offset's 8-byte window as one little-endian word (an unaligned view).
    windows = np.ndarray(shape=(int(ends[-1]),), dtype="<u8", buffer=data, strides=(1,))
    hashed = np.bitwise_xor(windows, _seed_word(seed))  # the one copy of the windows
    with np.errstate(over="ignore"):
        np.multiply(hashed, _C1, out=hashed)
    keep = hashed < _SAMPLE
    dense = lengths < DENSE_BYTES
    if dense.any():
        keep |= np.repeat(dense, lengths)
    for k in range(1, SHINGLE):  # windows running past their text's end
        keep[ends - k] = False
    pos = np.flatnonzero(keep)
    owner = np.searchsorted(ends, pos, side="right")
    mixed = _mix(hashed[pos] ^ _seed_word(seed + 1))
    bins = (mixed >> np.uint64(32)) % np.uint64(num_perm)
    flat = np.full(len(ends) * num_perm, _EMPTY, dtype=np.uint64)
    np.minimum.at(flat, owner * num_perm + bins.astype(np.int64), mixed & _MAX32)
    return _densify(flat.reshape(len(ends), num_perm))


def _densify(sig: np.ndarray) -> np.ndarray:
    """Empty bins take the next non-empty bin's value (circularly), offset by distance."""
    empty = sig == _EMPTY
    if empty.any():
        filled = sig.copy()
        todo = empty.copy()
        for step in range(1, sig.shape[1]):
            if not todo.any():
                break
            source = np.roll(sig, -step, axis=1)
            take = todo & (source != _EMPTY)
            filled[take] = (source[take] + np.uint64(step * 0x9E3779B1)) & _MAX32
            todo &= ~take
        filled[todo] = 0  # an empty text: all bins equal, so empty texts match each other
        sig = filled
    return sig.astype(np.uint32)


def lsh_bands(num_perm: int) -> tuple[int, int]:
    """(bands, rows): 8-row bands, leaning to recall (a pair at Jaccard 0.85 shares a band
    with probability 0.92, at 0.92 with 0.997); every candidate is verified."""
    rows = 8
    return max(1, num_perm // rows), rows


@dataclass
class DedupeResult:
    kept: list[str] = field(default_factory=list)
    exact: dict[str, str] = field(default_factory=dict)  # dropped id -> kept id
    near: dict[str, str] = field(default_factory=dict)


def collapse(ids: list[str], digests: list[str], sigs: np.ndarray, threshold: float) -> DedupeResult:
    """Keep-first: an item is an exact duplicate of a kept item with its digest, else a near
    duplicate of the first kept item (by id) sharing an LSH band with Jaccard >= threshold."""
    result = DedupeResult()
    if not ids:
        return result
    bands, rows = lsh_bands(sigs.shape[1])
    sigs = np.ascontiguousarray(sigs, dtype=np.uint32)
    # Band keys as small ints (equal band bytes, equal int); an item whose keys no other
    # item shares, and whose digest is its own, can neither match nor be matched.
    codes = []
    shared = np.zeros(len(ids), dtype=bool)
    for b in range(bands):
        band = np.ascontiguousarray(sigs[:, b * rows : (b + 1) * rows]).view(f"V{4 * rows}").ravel()
        _, inverse, counts = np.unique(band, return_inverse=True, return_counts=True)
        codes.append(inverse.ravel().tolist())
        shared |= counts[inverse.ravel()] > 1
    count: dict[str, int] = {}
    for dig in digests:
        count[dig] = count.get(dig, 0) + 1
    buckets: list[dict[int, list[int]]] = [{} for _ in range(bands)]
    seen: dict[str, str] = {}
    width = sigs.shape[1]
    shared_list = shared.tolist()
    for i, (item_id, dig) in enumerate(zip(ids, digests, strict=True)):
        if not shared_list[i] and count[dig] == 1:
            result.kept.append(item_id)
            continue
        if dig in seen:
            result.exact[item_id] = seen[dig]
            continue
        seen[dig] = item_id
        found: list[int] = []
        for b in range(bands):
            hit = buckets[b].get(codes[b][i])
            if hit is not None:
                found += hit
        if found:
            match = _first_match(ids, sigs, i, found, width, threshold)
            if match is not None:
                result.near[item_id] = match
                continue
        for b in range(bands):
            buckets[b].setdefault(codes[b][i], []).append(i)
        result.kept.append(item_id)
    return result


def _first_match(ids: list[str], sigs: np.ndarray, i: int, found: list[int], width: int,
                 threshold: float) -> str | None:
    """The smallest id among the candidates whose estimated Jaccard with item ``i`` reaches
    the threshold (one vectorised comparison for all candidates)."""
    distinct = set(found)
    candidates = np.fromiter(distinct, dtype=np.int64, count=len(distinct))
    agree = np.count_nonzero(sigs[candidates] == sigs[i], axis=1) / width
    passing = candidates[agree >= threshold].tolist()
    return min((ids[j] for j in passing), default=None)


class Deduper:
    """Signs and collapses raw texts in one call (for texts score has not signed)."""

    def __init__(self, config: DedupeConfig) -> None:
        self.config = config

    def sign(self, texts: list[str]) -> tuple[list[str], np.ndarray]:
        c = self.config
        return dedupe_keys(texts, c.num_perm, c.seed, c.max_chars)

    def run(self, items: list[tuple[str, str]]) -> DedupeResult:
        """``items`` = (id, text) in keep-first order."""
        digests, sigs = self.sign([text for _, text in items])
        return collapse([i for i, _ in items], digests, sigs, self.config.threshold)
