"""Exact and near-duplicate collapse of conversations before export.

Resumed and forked sessions copy whole conversations into new files, so one piece of
work can appear many times; training on 200 copies of it weights it 200-fold. Exact
duplicates share the xxh3 of their normalised text; near duplicates are found with
MinHash LSH (datasketch) over character 8-gram shingles. Shingle hashing is vectorised
in numpy over the UTF-8 bytes (no per-shingle Python call) and seeded, so the same
input always collapses the same way. The first item in the caller's order is kept.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import xxhash
from datasketch import MinHash, MinHashLSH
from pydantic import BaseModel, ConfigDict, Field

_MERSENNE = np.uint64((1 << 61) - 1)
_MAX32 = np.uint64((1 << 32) - 1)
SHINGLE = 8


def normalise(text: str) -> str:
    return " ".join(text.split()).lower()


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: spreads 8-byte windows over the 64-bit space."""
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def shingle_hashes(text: str, max_chars: int) -> np.ndarray:
    data = text[:max_chars].encode("utf-8")
    if len(data) < SHINGLE:
        data = data.ljust(SHINGLE, b"\0")
    raw = np.frombuffer(data, dtype=np.uint8)
    windows = np.lib.stride_tricks.sliding_window_view(raw, SHINGLE)
    packed = windows.copy().view("<u8").reshape(-1)
    hashes = _mix(packed) & _MAX32
    # Keep a fixed 1/8 of the shingle space (mod sampling): Jaccard is preserved in
    # expectation and the signature costs an eighth. Short texts keep every shingle.
    sampled = hashes[(hashes & np.uint64(7)) == 0]
    return np.unique(sampled if sampled.size >= 256 else hashes)



class DedupeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    threshold: float = Field(0.85, gt=0, le=1, description="MinHash LSH Jaccard threshold.")
    num_perm: int = Field(64, ge=16, description="MinHash permutations.")
    seed: int = Field(1, description="MinHash seed (deterministic).")
    max_chars: int = Field(12_000, ge=100, description="Characters of each text shingled.")


@dataclass
class DedupeResult:
    kept: list[str] = field(default_factory=list)
    exact: dict[str, str] = field(default_factory=dict)  # dropped id -> kept id
    near: dict[str, str] = field(default_factory=dict)


class Deduper:
    @classmethod
    def from_config(cls, config: DedupeConfig) -> Deduper:
        return cls(config.threshold, config.num_perm, config.seed, config.max_chars)

    def __init__(self, threshold: float, num_perm: int, seed: int, max_chars: int) -> None:
        self.threshold = threshold
        self.num_perm = num_perm
        self.seed = seed
        self.max_chars = max_chars
        self._perms = MinHash(num_perm=num_perm, seed=seed, scheme="legacy").permutations
        a, b = self._perms
        self._a = np.asarray(a, dtype=np.uint64)
        self._b = np.asarray(b, dtype=np.uint64)

    def signature(self, text: str) -> MinHash:
        hv = shingle_hashes(text, self.max_chars).reshape(-1, 1)
        with np.errstate(over="ignore"):
            phv = ((hv * self._a + self._b) % _MERSENNE) & _MAX32
        values = phv.min(axis=0)
        return MinHash(num_perm=self.num_perm, seed=self.seed, hashvalues=values, scheme="legacy",
                       permutations=self._perms)

    def run(self, items: list[tuple[str, str]]) -> DedupeResult:
        """``items`` = (id, text) in keep-first order."""
        result = DedupeResult()
        seen: dict[str, str] = {}
        lsh = MinHashLSH(threshold=self.threshold, num_perm=self.num_perm)
        signatures: dict[str, MinHash] = {}
        for item_id, text in items:
            norm = normalise(text)
            digest = xxhash.xxh3_128_hexdigest(norm.encode("utf-8"))
            if digest in seen:
                result.exact[item_id] = seen[digest]
                continue
            seen[digest] = item_id
            sig = self.signature(norm)
            match = None
            for other in sorted(lsh.query(sig)):
                if sig.jaccard(signatures[other]) >= self.threshold:
                    match = other
                    break
            if match is not None:
                result.near[item_id] = match
                continue
            lsh.insert(item_id, sig)
            signatures[item_id] = sig
            result.kept.append(item_id)
        return result
