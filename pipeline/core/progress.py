"""The progress-reporting seam, apart from ``pipeline.core.stage`` so that the CLI can
subclass it without importing the stage machinery (pyarrow, pydantic): ``--help`` and
the quick commands stay fast."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import TypeVar

T = TypeVar("T")


def _ignore(_done: int) -> None:
    pass


def _ignore_tasks(_done: int, _running: int, _failed: int) -> None:
    pass


class Tracker:
    """Progress reporting seam: the CLI plugs in rich bars, tests plug in nothing."""

    def track(self, items: Iterable[T], total: int | None, description: str) -> Iterator[T]:
        yield from items

    @contextmanager
    def meter(self, total_bytes: int, description: str) -> Iterator[Callable[[int], None]]:
        """A bar over bytes, advanced by hand with each piece of work's size (its order
        of completion is not known beforehand); yields the advance function."""
        yield _ignore

    @contextmanager
    def tasks(self, total: int, description: str) -> Iterator[Callable[[int, int, int], None]]:
        """A bar over an executor's units of work; yields ``show(done, running, failed)``."""
        yield _ignore_tasks

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Wraps one stage's execution (a spinner in the CLI)."""
        yield
