"""Pieces every command shares: the root option, config loading, rich progress."""

from __future__ import annotations

import difflib
import os
import tomllib
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import typer
from rich.console import Console
from rich.text import Text

from pipeline.core.errors import ConfigError
from pipeline.core.progress import Tracker
from pipeline.stages.registry import STAGE_NAMES

if TYPE_CHECKING:
    from rich.progress import Progress, ProgressColumn

    from pipeline.core.stage import Stage

T = TypeVar("T")

console = Console()
err_console = Console(stderr=True)

ROOT_HELP = "Lake root holding data/, receipts/, exports/ (default: $TRACELAKE_ROOT or cwd)."
# The tables a config file may hold: one per stage, the drift command's thresholds, and
# how a run executes ([run] executor = "ray").
CONFIG_TABLES: tuple[str, ...] = (*STAGE_NAMES, "drift", "run")
RUN_SETTINGS: tuple[str, ...] = ("executor",)


def resolve_root(root: Path | None) -> Path:
    from pipeline.core.sources import env_root

    return (root or env_root()).expanduser().resolve()


def check_root(root: Path) -> None:
    """A root a run can write: a folder (made if missing), not a file, and writable."""
    existing = next((p for p in (root, *root.parents) if p.exists()), root)
    if existing.exists() and not existing.is_dir():
        where = "a file, not a folder" if existing == root else f"inside {existing}, a file"
        raise ConfigError(f"root {root} is {where}")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"root {root} is not writable")


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
        if section not in CONFIG_TABLES:
            raise ConfigError(
                f"{path}: unknown table [{section}]{did_you_mean(section, CONFIG_TABLES, '[{}]')}"
                f" (tables: {', '.join(CONFIG_TABLES)})"
            )
    return data


def check_config_keys(config: dict[str, dict[str, Any]], stages: Sequence[Stage]) -> None:
    """A misspelt setting would otherwise do nothing: name it, with the nearest known one."""
    for stage in stages:
        known = tuple(stage.config_model.model_fields)
        for key in config.get(stage.name, {}):
            if key not in known:
                raise ConfigError(
                    f"unknown setting {key!r} in [{stage.name}]{did_you_mean(key, known, '{!r}')}"
                    f" (settings: {', '.join(known) or 'none'})"
                )


def check_run_keys(config: dict[str, Any]) -> None:
    for key, value in config.items():
        if key not in RUN_SETTINGS:
            raise ConfigError(f"unknown setting {key!r} in [run]{did_you_mean(key, RUN_SETTINGS, '{!r}')}"
                              f" (settings: {', '.join(RUN_SETTINGS)})")
        if not isinstance(value, str):
            raise ConfigError(f"[run] {key} must be a string")


def did_you_mean(word: str, choices: Sequence[str], form: str) -> str:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f"; did you mean {form.format(close[0])}?" if close else ""


def _bar(*counts: ProgressColumn) -> Progress:
    """A transient bar on stderr: the description, the bar, then ``counts``."""
    from rich.progress import BarColumn, Progress, TextColumn

    return Progress(TextColumn("{task.description}", style="bold", markup=False), BarColumn(), *counts,
                    console=err_console, transient=True)


class RichTracker(Tracker):
    """Rich progress bars, shown only for loops long enough to matter."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled

    def track(self, items: Iterable[T], total: int | None, description: str) -> Iterator[T]:
        if not self.enabled or (total is not None and total < 2):
            yield from items
            return
        from rich.progress import MofNCompleteColumn, TimeElapsedColumn

        with _bar(MofNCompleteColumn(), TimeElapsedColumn()) as progress:
            task = progress.add_task(description, total=total)
            for item in items:
                yield item
                progress.advance(task)

    @contextmanager
    def meter(self, total_bytes: int, description: str) -> Iterator[Callable[[int], None]]:
        if not self.enabled or total_bytes <= 0:
            yield lambda _done: None
            return
        from rich.progress import DownloadColumn, TimeRemainingColumn, TransferSpeedColumn

        with _bar(DownloadColumn(binary_units=False), TransferSpeedColumn(), TimeRemainingColumn()) as progress:
            task = progress.add_task(description, total=total_bytes)
            yield lambda done: progress.advance(task, done)

    @contextmanager
    def tasks(self, total: int, description: str) -> Iterator[Callable[[int, int, int], None]]:
        if not self.enabled or total < 2:
            yield lambda _done, _running, _failed: None
            return
        from rich.progress import MofNCompleteColumn, TextColumn, TimeElapsedColumn

        with _bar(MofNCompleteColumn(), TextColumn("{task.fields[state]}", markup=False),
                  TimeElapsedColumn()) as progress:
            task = progress.add_task(description, total=total, state="")

            def show(done: int, running: int, failed: int) -> None:
                progress.update(task, completed=done, state=f"{running} running, {failed} failed")

            yield show

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
