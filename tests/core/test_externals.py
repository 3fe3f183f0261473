"""External inputs: a chat template outside the lake, in the cache key by its digest."""

from __future__ import annotations

from pathlib import Path

from pipeline.core.runner import Runner, RunOptions
from pipeline.sql import connect
from tests.core import toy

STAGES = [toy.MAKE, toy.SQUARE, toy.RENDER]


def _run(root: Path, template: Path | None, overrides: dict[str, Path] | None = None):  # type: ignore[no-untyped-def]
    config = {"render": {"template_path": str(template)}} if template is not None else {}
    options = RunOptions(root=root, sources=[], stage_config=config, externals=overrides or {})
    return Runner(STAGES, options).run()


def _hits(result) -> dict[str, bool]:  # type: ignore[no-untyped-def]
    return {o.stage: o.receipt.cache_hit for o in result.outcomes if o.receipt is not None}


def test_a_changed_template_reruns_only_the_stage_that_reads_it(tmp_path: Path) -> None:
    template = tmp_path / "chat.jinja"
    template.write_text("<|im_start|>{value}<|im_end|>")
    lake = tmp_path / "lake"
    toy.CALLS.clear()
    first = _run(lake, template)
    assert first.ok, first.outcomes
    render = next(o.receipt for o in first.outcomes if o.stage == "render")
    assert render is not None
    (external,) = [i for i in render.inputs if i.name == "external:template"]
    assert external.location == str(template) and external.rows == 1 and external.sha256
    assert "template_path" not in render.config  # the digest stands for the path

    assert _hits(_run(lake, template)) == {"make": True, "square": True, "render": True}
    # the same bytes elsewhere: still a hit (the path is not in the key)
    moved = tmp_path / "elsewhere.jinja"
    moved.write_bytes(template.read_bytes())
    assert _hits(_run(lake, moved)) == {"make": True, "square": True, "render": True}

    template.write_text("<|im_start|>value={value}<|im_end|>")
    changed = _run(lake, template)
    assert _hits(changed) == {"make": True, "square": True, "render": False}
    assert toy.CALLS == {"make": 1, "square": 1, "render": 2}
    rendered = next(o.receipt for o in changed.outcomes if o.stage == "render")
    assert rendered is not None and rendered.outputs[0].xxh3_128 != render.outputs[0].xxh3_128

    # --external NAME=PATH overrides the config field
    overridden = _run(lake, template, {"template": moved})
    assert _hits(overridden)["render"] is True

    # which runs used the first template's digest
    con, _ = connect(lake)
    runs = con.execute("SELECT DISTINCT run_id FROM run_inputs WHERE digest = ? ORDER BY run_id",
                       [external.sha256]).fetchall()
    assert [r[0] for r in runs] == sorted([first.run_id, *(r.run_id for r in (overridden,))] +
                                          _runs_before(lake, changed.run_id, first.run_id))


def _runs_before(lake: Path, changed: str, first: str) -> list[str]:
    """The two hit runs between the first and the changed one used it too."""
    from pipeline.core.receipts import list_runs
    from pipeline.core.store import LakeLayout

    return [r for r in list_runs(LakeLayout(lake)) if first < r < changed]


def test_a_missing_external_fails_the_stage_with_one_line(tmp_path: Path) -> None:
    result = _run(tmp_path / "lake", None)
    render = next(o for o in result.outcomes if o.stage == "render")
    assert render.status == "failed" and render.error is not None
    assert "--external template=PATH" in render.error and "\n" not in render.error
    gone = _run(tmp_path / "lake", tmp_path / "absent.jinja")
    error = next(o for o in gone.outcomes if o.stage == "render").error
    assert error is not None and "absent.jinja" in error


def test_a_template_swapped_mid_run_fails_the_stage(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The stage reads it only through its context, which re-checks the digest."""
    template = tmp_path / "chat.jinja"
    template.write_text("{value}")
    from pipeline.core import externals

    real = externals.resolve

    def resolve_then_swap(*args, **kwargs):  # type: ignore[no-untyped-def]
        refs = real(*args, **kwargs)
        if refs:  # render's: swapped after its digest went into the key
            template.write_text("{value} swapped")
        return refs

    monkeypatch.setattr(externals, "resolve", resolve_then_swap)
    result = _run(tmp_path / "lake", template)
    render = next(o for o in result.outcomes if o.stage == "render")
    assert render.status == "failed" and "changed after it was digested" in (render.error or "")


def test_a_linked_weights_folder_is_in_the_digest(tmp_path: Path) -> None:
    """A model folder may link its weights from elsewhere: their bytes are in the digest
    (a change re-runs the stage); a folder link loop fails the stage in one line."""
    from pipeline.core.trees import manifest, tree_digest

    shared = tmp_path / "shared-weights"
    shared.mkdir()
    (shared / "w.bin").write_bytes(b"1")
    model = tmp_path / "model"
    model.mkdir()
    (model / "weights").symlink_to(shared)
    first = tree_digest(manifest(model))
    assert [f.path for f in manifest(model)] == ["weights/w.bin"]
    (shared / "w.bin").write_bytes(b"2")
    assert tree_digest(manifest(model)) != first

    (model / "weights" / "loop").symlink_to(model)
    template = tmp_path / "t"
    template.mkdir()
    (template / "chat.jinja").write_text("{value}")
    (template / "loop").symlink_to(template)
    result = _run(tmp_path / "lake", template)
    render = next(o for o in result.outcomes if o.stage == "render")
    assert render.status == "failed" and "loop" in (render.error or "") and "\n" not in (render.error or "")


def test_the_stage_never_sees_the_path_field(tmp_path: Path) -> None:
    """The keyed, recorded config leaves the path out; so does the stage's: it reads the
    input through ctx.external only. A required path field is refused up front."""
    import pytest
    from pydantic import BaseModel

    from pipeline.core.stage import ExternalInput, Stage

    class Required(BaseModel):
        template_path: str

    with pytest.raises(ValueError, match="optional config field"):
        Stage("r", "1", Required, (), (), toy.render,
              externals=(ExternalInput("template", "chat_template", "template_path"),))
    template = tmp_path / "chat.jinja"
    template.write_text("{value}")
    seen: list[str] = []
    real = toy.render

    def spy(ctx):  # type: ignore[no-untyped-def]
        seen.append(ctx.config.template_path)
        return real(ctx)

    import dataclasses

    stages = [toy.MAKE, dataclasses.replace(toy.RENDER, run=spy)]
    Runner(stages, RunOptions(root=tmp_path / "lake", sources=[],
                              stage_config={"render": {"template_path": str(template)}})).run()
    assert seen == [""]


def test_deep_verify_leaves_the_lake_stat_cache_alone(tmp_path: Path) -> None:
    from pipeline.audit.deep import deep_verify

    template = tmp_path / "chat.jinja"
    template.write_text("{value}")
    lake = tmp_path / "lake"
    _run(lake, template)
    cache = lake / "data" / "cache" / "stat-cache-externals.json"
    before = cache.read_bytes()
    report = deep_verify(lake, None, None, STAGES)
    assert report.passed and {c.stage: c.verdict for c in report.stages}["render"] == "match"
    assert cache.read_bytes() == before
