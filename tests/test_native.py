"""The compiled collect parser: same tables as its sources, and never out of date."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.collect import _compiled
from pipeline.synth import synthesize

REPO = Path(__file__).resolve().parents[1]

_COLLECT = """
import json, sys
from pathlib import Path
import pipeline.collect.claude_code as parser
from pipeline.core.runner import Runner, RunOptions
from pipeline.core.sources import SourceSpec
from pipeline.stages.collect import STAGE
root, cc, cx = map(Path, sys.argv[1:4])
options = RunOptions(root=root, sources=[SourceSpec("claude-code", cc), SourceSpec("codex", cx)],
                     workers=2, recorded_at="2026-01-01T00:00:00Z")
result = Runner([STAGE], options).run(["collect"])
print(json.dumps({"compiled": not parser.__file__.endswith(".py"),
                  "digests": dict(result.summary.stages[0].outputs)}))
"""


def _collect(tmp: Path, name: str, cc: Path, cx: Path, pure: bool) -> dict[str, object]:
    env = {**os.environ, "TRACELAKE_PURE_PYTHON": "1" if pure else "0"}
    out = subprocess.run(
        [sys.executable, "-c", _COLLECT, str(tmp / name), str(cc), str(cx)],
        env=env, cwd=REPO, capture_output=True, text=True, check=True,
    )
    # Workers that cannot take their tasks (unpicklable compiled classes, say) break
    # the pool; the stage still succeeds in-process, so only the log tells.
    assert "pool broke" not in out.stderr and "Traceback" not in out.stderr, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def test_compiled_and_source_parsers_write_the_same_tables(tmp_path: Path) -> None:
    synthesize(tmp_path / "cc", 24, 5, "claude-code")
    synthesize(tmp_path / "cx", 12, 5, "codex")
    compiled = _collect(tmp_path, "compiled", tmp_path / "cc", tmp_path / "cx", pure=False)
    pure = _collect(tmp_path, "pure", tmp_path / "cc", tmp_path / "cx", pure=True)
    assert pure["compiled"] is False
    if shutil.which("cc") or shutil.which("gcc"):  # `make setup` compiles wherever it can
        assert _compiled.status() == "compiled", "run `make native`: the compiled parser is missing or stale"
        assert compiled["compiled"] is True
    assert compiled["digests"] == pure["digests"]


def test_a_changed_source_makes_the_compiled_modules_stale(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A stamp that does not match the sources (an edit since the build) means: run the
    sources, whatever .so files are there."""
    fake_so = tmp_path / f"shard{_compiled.importlib.machinery.EXTENSION_SUFFIXES[0]}"
    fake_so.write_bytes(b"")
    for name in _compiled.MODULES:
        (tmp_path / f"{name}.py").write_text(f"# {name}\n")
    monkeypatch.setattr(_compiled, "HERE", tmp_path)
    monkeypatch.setattr(_compiled, "STAMP", tmp_path / "_native.json")
    monkeypatch.delenv("TRACELAKE_PURE_PYTHON", raising=False)
    sources = {name: _compiled.source_digest(name) for name in _compiled.MODULES}
    stamp = {"python": sys.implementation.cache_tag, "sources": sources}
    (tmp_path / "_native.json").write_text(json.dumps(stamp))
    assert _compiled.status() == "compiled"
    (tmp_path / "redact.py").write_text("# edited\n")
    assert _compiled.status() == "stale"
    (tmp_path / "_native.json").write_text(json.dumps({**stamp, "sources": {**sources}, "python": "cpython-0"}))
    (tmp_path / "redact.py").write_text("# redact\n")
    assert _compiled.status() == "stale"  # built for another interpreter
    monkeypatch.setenv("TRACELAKE_PURE_PYTHON", "1")
    assert _compiled.status() == "disabled"
    fake_so.unlink()
    assert _compiled.status() == "absent"


def test_stale_modules_load_from_their_sources() -> None:
    """The guard's finder serves the .py files, ahead of any compiled module."""
    code = (
        "import sys; sys.meta_path.insert(0, __import__('pipeline.collect._compiled', fromlist=['x'])._SourceFinder());"
        "import pipeline.collect.shard as s, pipeline.collect.redact as r; print(s.__file__, r.__file__)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert all(path.endswith(".py") for path in out.stdout.split())


def test_worker_tasks_survive_pickling() -> None:
    """Tasks cross to the pool workers pickled; the compiled modules must not own them."""
    import pickle

    from pipeline.collect.shard import CollectSettings, ShardTask
    from pipeline.core.hashing import CacheMac

    settings = CollectSettings(True, 1, 2, 3, 4)
    mac = CacheMac(bytes(range(32)))
    task = ShardTask("claude-code", "/a", "a", "k", "d", "/s", None, settings, "1", mac)
    back = pickle.loads(pickle.dumps(task))
    assert back == task
    assert back.cache_mac.tag(b"x") == mac.tag(b"x")  # the key crosses, and stays out of reprs
    assert "CacheMac(<key>)" in repr(task) or "cache_mac" not in repr(task)


def test_the_build_precompiles_the_redaction_screens(tmp_path: Path) -> None:
    """A collect's start loads the screens `make native` compiled instead of compiling
    them (~0.15 s); a run's own cache is written only for patterns the build did not see."""
    from pipeline.collect import redact
    from pipeline.secrets import catalogue

    if redact._hyperscan is None or _compiled.status() != "compiled":
        assert not (shutil.which("cc") or shutil.which("gcc")), "run `make native`"
        return
    assert sorted(redact.PRECOMPILED_SCREENS.glob("*.hsdb"))
    # ...and the catalogue's patterns and their JSON-text rewrites, read back as written
    assert [p.name for p in redact.PRECOMPILED_SCREENS.glob("catalogue-*.json")] == [
        f"catalogue-{catalogue.identity()}.json"]
    patterns = redact._json_secret_patterns()
    assert (redact.PRECOMPILED_SCREENS / redact._rewrites_name(patterns)).exists()
    assert redact._JsonSecrets.of(patterns, redact.PRECOMPILED_SCREENS).rewritten.extra == (
        redact._JsonSecrets.of(patterns).rewritten.extra)
    redactor = redact.Redactor()
    for built in (redact._SECRET_SCREEN, redact._catalogue_screen(), redact._secrets_screen(),
                  *redact._json_secrets().screens(), redactor._screen, redactor._json_screen):
        # fresh: the module's own screens may be compiled already
        screen = redact._Screen(built.pattern, built.extra, built.in_bytes)
        screen.prepare(tmp_path / "default")
        assert screen.engine == "hyperscan"
    assert not (tmp_path / "default").exists()
    unusual = redact._Screen(redact._SECRET_RE2 + "|unusual-home-marker")
    unusual.prepare(tmp_path / "own")
    assert len(list((tmp_path / "own").glob("*.hsdb"))) == 1
