"""Units of work inside a stage, run wherever the executor puts them.

A stage that splits its work into pure units (collect's batches of files, score's
partitions of sessions, collate's chunks of examples) runs them on ``ctx.pool`` when its executor gives one (Ray: tasks
across a cluster) and on its own local processes otherwise. A unit is a module-level
function and a picklable argument; it reads and writes only through the root, so any
machine that sees the root can run it, and its result does not depend on where or when
it ran: the stage combines results in input order, so a table's digest is the same for
any number of workers and any completion order.

A pool retries a unit that fails (its worker killed, out of memory, an exception) a
bounded number of times and then hands back ``Failed`` in its place: the stage decides
what a failed unit means (collect splits a failed batch and quarantines the one file
that still fails alone), and the run goes on.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class Failed:
    """A unit that failed on every attempt."""

    error: str  # the last attempt's error, one line
    attempts: int


@dataclass
class PoolStats:
    """What the receipt records of a stage's units (``schemas.receipt.Execution``)."""

    tasks: int = 0  # units run, each counted once however many attempts it took
    retries: int = 0  # attempts after a unit's first
    failed: int = 0  # units handed back as ``Failed``
    unit_s: float = 0.0  # the units' own run time, summed over workers (successful attempts)
    map_s: float = 0.0  # wall time the stage spent waiting on the pool (the rest is its reduce)
    gpus: int = 0  # GPUs each unit held (a stage run whole on a GPU node: train)


class WorkPool(Protocol):
    name: str  # the executor as the receipt names it
    stats: PoolStats

    def map(self, fn: Callable[[T], R], items: Sequence[T], description: str) -> Iterator[R | Failed]:
        """``fn(item)`` for each item, yielded in input order as they finish."""
        ...


def one_line(error: BaseException, limit: int = 300) -> str:
    """An error as one quarantine-sized line: its type and the last line of its message
    (a remote error carries the whole remote traceback)."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    text = f"{type(error).__name__}: {lines[-1] if lines else ''}".rstrip(": ")
    return text[:limit]
