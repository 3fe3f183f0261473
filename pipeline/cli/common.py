"""Pieces every command shares: the root option, config loading, rich progress."""

from __future__ import annotations

import tomllib
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.text import Text

from pipeline.core.errors import ConfigError
from pipeline.core.sources import env_root
from pipeline.core.stage import Tracker

T = TypeVar("T")

console = Console()
err_console = Console(stderr=True)

ROOT_HELP = "Lake root holding data/, receipts/, exports/ (default: $TRACELAKE_ROOT or cwd)."


def resolve_root(root: Path | None) -> Path:
    return (root or env_root()).expanduser().resolve()


def load_config_file(path: Path | None) -> dict[str, dict[str, Any]]:
    """TOML with one table per stage (``[collect]``, ``[export-sft]``, ``[drift]``...)."""
    if path is None:
        return {}
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read config {path}: {exc}") from exc
    for section, value in data.items():
        if not isinstance(value, dict):
            raise ConfigError(f"config key {section!r} must be a table like [{section}]")
    return data


class RichTracker(Tracker):
    """Rich progress bars, shown only for loops long enough to matter."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled

    def track(self, items: Iterable[T], total: int | None, description: str) -> Iterator[T]:
        if not self.enabled or (total is not None and total < 2):
            yield from items
            return
        with Progress(
            TextColumn("{task.description}", style="bold", markup=False),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=err_console,
            transient=True,
        ) as progress:
            task = progress.add_task(description, total=total)
            for item in items:
                yield item
                progress.advance(task)


    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        if not self.enabled:
            yield
            return
        with err_console.status(Text(f"{name} …", style="bold"), spinner="dots"):
            yield


def fail(message: str, code: int = 2) -> typer.Exit:
    """One line on stderr; the message is data (paths, user input), never markup."""
    first = message.strip().splitlines()[0] if message.strip() else "failed"
    err_console.print(Text.assemble(("error: ", "red"), first), soft_wrap=True)
    return typer.Exit(code)
