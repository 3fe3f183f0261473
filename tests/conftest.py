"""Shared fixtures: an isolated signing key, and the real teich sessions fetched at test time."""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

CACHE = Path(__file__).parent / ".cache"
TEICH_VERSION = "0.3.6"
CLAUDE_CODE_LOG_VERSION = "1.7.0"


@pytest.fixture(autouse=True, scope="session")
def _isolated_signing_key(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Never touch the developer's real key; one throwaway key per test session, set
    before any fixture (module-scoped lakes included) makes a run."""
    key_dir = tmp_path_factory.getbasetemp() / "signing"
    before = os.environ.get("TRACELAKE_SIGNING_KEY")
    os.environ["TRACELAKE_SIGNING_KEY"] = str(key_dir / "signing-key.pem")
    yield
    if before is None:
        os.environ.pop("TRACELAKE_SIGNING_KEY", None)
    else:
        os.environ["TRACELAKE_SIGNING_KEY"] = before


@pytest.fixture(scope="session")
def teich_examples() -> Path:
    """The real Claude Code 2.1.77 and Codex 0.130.0 sessions from the teich sdist.

    They hold real home paths and names, so they are fetched into an ignored folder,
    never committed.
    """
    target = CACHE / f"teich-{TEICH_VERSION}" / "examples"
    if (target / "example_claude_code.jsonl").exists():
        return target
    CACHE.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", "teich",
         f"teich=={TEICH_VERSION}", "-d", str(CACHE)],
        check=True,
    )
    with tarfile.open(CACHE / f"teich-{TEICH_VERSION}.tar.gz") as archive:
        members = [m for m in archive.getmembers() if "/examples/" in m.name and m.isfile()]
        archive.extractall(CACHE, members=members, filter="data")
    return target


@pytest.fixture(scope="session")
def claude_code_log_messages() -> Path:
    """claude-code-log's real Claude Code records, one kind per file (user, assistant,
    thinking, sidechain, system records, each tool's use, result and error), from its
    sdist's dev-docs. Real paths and names: fetched into an ignored folder, never committed."""
    name = f"claude_code_log-{CLAUDE_CODE_LOG_VERSION}"
    target = CACHE / name / "dev-docs" / "messages" / "claude-code"
    if (target / "user" / "user.jsonl").exists():
        return target
    CACHE.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", "claude-code-log",
         f"claude-code-log=={CLAUDE_CODE_LOG_VERSION}", "-d", str(CACHE)],
        check=True,
    )
    with tarfile.open(CACHE / f"{name}.tar.gz") as archive:
        members = [m for m in archive.getmembers() if "/dev-docs/messages/" in m.name and m.isfile()]
        archive.extractall(CACHE, members=members, filter="data")
    return target
