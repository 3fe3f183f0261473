"""What a stage is: a declared, versioned, pure function over lake tables.

A stage module defines a pydantic ``Config`` and ``run(ctx) -> StageResult``. The runner
owns everything around it: cache keys, reading inputs, canonicalising and writing
outputs, receipts, signing and count conservation.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Generic, Literal

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel
from typing_extensions import TypeVar as DefaultTypeVar

from pipeline.core.errors import TracelakeError
from pipeline.core.hashing import CacheMac
from pipeline.core.progress import Tracker
from pipeline.core.sources import SourceFile
from pipeline.core.store import LakeLayout, TableStream, atomic_write_bytes
from pipeline.core.workpool import WorkPool
from schemas.receipt import ArtifactRef, InputRef, ObjectRef, SecretRescan
from schemas.tables import ArtifactSpec, TableSpec, check_name


@dataclass
class StageResult:
    """What a stage hands back. ``tables`` must hold every declared output."""

    tables: dict[str, pa.Table | TableStream]  # a stream is never whole in memory
    records_in: int
    records_out: int
    quarantined: dict[str, int] = field(default_factory=dict)
    filtered: dict[str, int] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)
    validation_errors: list[str] = field(default_factory=list)
    # The source files as the stage actually read them, when any differs from what it
    # was handed (a file changed after it was digested): each with the digest of the
    # bytes it parsed, or ``changed_during_run(...)`` for one it set aside because it
    # kept changing. The receipt then names these, and is keyed by them.
    sources_read: dict[str, list[SourceFile]] | None = None
    # Declared artifact name -> the folder the stage wrote it in (in its scratch area).
    artifacts: dict[str, Path] = field(default_factory=dict)


# A stage's config type: its run, materialize and validate read ``ctx.config`` typed.
# Defaults to BaseModel, so code that handles any stage writes plain ``Stage``.
C = DefaultTypeVar("C", bound=BaseModel, default=BaseModel)


@dataclass
class StageContext(Generic[C]):
    layout: LakeLayout
    config: C
    inputs: dict[str, ObjectRef]
    sources: dict[str, list[SourceFile]]
    recorded_at: str
    workers: int
    tracker: Tracker
    scratch: Path  # content-keyed cache area this stage may use (data/cache/<stage>)
    # Tags what the stage caches in ``scratch`` and checks it before reading it back:
    # a cache entry someone else wrote is never read as ours (see ``CacheMac``).
    cache_mac: CacheMac
    # The declared external inputs, as digested for the cache key (``external:<name>``).
    externals: dict[str, InputRef] = field(default_factory=dict)
    # Upstream stages' artifacts this stage declared (``artifact:<name>``), as keyed.
    artifact_inputs: dict[str, InputRef] = field(default_factory=dict)
    # Where a long stage keeps checkpoints: keyed by its cache key, so a run killed
    # midway resumes from them, and only a run with the same key and code does.
    resume_dir: Path | None = None
    # An empty folder made for this execution alone: artifacts are written under it
    # (``artifact_dir``), so nothing left in the shared scratch area is ever signed.
    artifacts_root: Path | None = None
    # Whether external inputs are re-checked through the lake's stat cache (deep verify
    # re-hashes every byte and leaves the lake's caches alone).
    cache_externals: bool = True
    resumed_from: list[str] = field(default_factory=list)  # checkpoints read back
    # The executor's pool for the stage's units of work (Ray tasks); None: the stage
    # runs them on its own local processes (see pipeline.core.workpool).
    pool: WorkPool | None = None
    _attempt: bytes | None = field(default=None, repr=False)

    def path(self, name: str) -> Path:
        return self.layout.root / self.inputs[name].path

    def table(self, name: str, columns: list[str] | None = None) -> pa.Table:
        return pq.read_table(self.path(name), columns=columns)

    def external(self, name: str) -> Path:
        """The path of a declared external input, after re-checking that it still holds
        the tree the cache key was computed from (a model swapped mid-run fails the
        stage instead of training on what the receipt does not name)."""
        from pipeline.core.externals import recheck

        if name not in self.externals:
            raise TracelakeError(f"{name!r} is not a declared external input of this stage")
        return recheck(self.layout, self.cache_mac if self.cache_externals else None, self.externals[name])

    def upstream_artifact(self, name: str) -> Path | None:
        """The stored folder of a declared upstream artifact, re-hashed against its key;
        None when its stage left it out this run (an optional artifact: no adapter)."""
        from pipeline.core.artifacts import open_artifact_input

        if name not in self.artifact_inputs:
            return None
        return open_artifact_input(self.layout, self.artifact_inputs[name])

    def artifact_dir(self, name: str) -> Path:
        """The empty folder to write the declared artifact ``name`` into."""
        if self.artifacts_root is None:
            raise TracelakeError("this execution stores no artifacts")
        folder = self.artifacts_root / check_name("artifact", name)
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def checkpoint(self, name: str, data: bytes) -> None:
        """Keep ``data`` for a resumed run of this very execution (same cache key)."""
        if self.resume_dir is None:
            return
        attempt = self._attempt_id(create=True)
        assert attempt is not None
        path = self.resume_dir / check_name("checkpoint", name)
        atomic_write_bytes(path, self._checkpoint_tag(attempt, name, data) + data)

    def resumed(self, name: str) -> bytes | None:
        """What a killed execution with this cache key checkpointed as ``name``; None
        when there is none or its tag fails. Tags bind the key, the name and the
        attempt that wrote them: a file someone else wrote, or one from another attempt
        mixed in, is never read."""
        if self.resume_dir is None:
            return None
        attempt = self._attempt_id(create=False)
        if attempt is None:
            return None
        try:
            blob = (self.resume_dir / check_name("checkpoint", name)).read_bytes()
        except OSError:
            return None
        tag, data = blob[: CacheMac.SIZE], blob[CacheMac.SIZE:]
        if not CacheMac.same(tag, self._checkpoint_tag(attempt, name, data)):
            return None
        self.resumed_from.append(name)
        return data

    def _attempt_id(self, create: bool) -> bytes | None:
        assert self.resume_dir is not None
        if self._attempt is None:
            path = self.resume_dir / "attempt"
            try:
                self._attempt = path.read_bytes()[:64]
            except OSError:
                if not create:
                    return None
                self._attempt = os.urandom(16).hex().encode("ascii")
                atomic_write_bytes(path, self._attempt)
        return self._attempt

    def _checkpoint_tag(self, attempt: bytes, name: str, data: bytes) -> bytes:
        assert self.resume_dir is not None
        hasher = self.cache_mac.hasher()
        for part in (self.resume_dir.name.encode(), attempt, name.encode("utf-8"), data):
            hasher.update(len(part).to_bytes(8, "little"))
            hasher.update(part)
        return bytes(hasher.digest())


@dataclass
class ExportContext(Generic[C]):
    """Where a stage materialises files for external clients, every run (hit or not)."""

    layout: LakeLayout
    config: C
    run_id: str
    outputs: dict[str, ObjectRef]
    export_dir: Path
    inputs: dict[str, ObjectRef] = field(default_factory=dict)  # the stage's declared inputs
    input_refs: list[InputRef] = field(default_factory=list)  # every input as keyed (externals too)
    # Set by a validate hook whose firewall rescanned the written files for secrets.
    secret_rescan: SecretRescan | None = None
    artifacts: dict[str, ArtifactRef] = field(default_factory=dict)

    def path(self, name: str) -> Path:
        return self.layout.root / self.outputs[name].path

    def table(self, name: str) -> pa.Table:
        return pq.read_table(self.path(name))


@dataclass(frozen=True)
class Traits:
    """What the core may assume of a stage's outputs and counts.

    ``determinism``: ``bitwise`` (the same cache key gives the same bytes: drift alerts
    and deep verify fails on any difference), ``tolerance`` (numeric columns may move by
    at most ``tolerance`` between re-runs, everything else must match: a training
    loss), ``none`` (judged by its validation only: a sampled eval). ``maps_records``: the
    stage maps input records to output records and sets the ones it refuses aside in a
    quarantine table; a stage that makes a model or a report has none. Every receipt's
    counts conserve all the same (in = out + quarantined + filtered: what it read and
    what it used), so ``receipts verify`` checks them without knowing the stage.
    """

    determinism: Literal["bitwise", "tolerance", "none"] = "bitwise"
    tolerance: float = 0.0
    maps_records: bool = True


ExternalKind = Literal["model", "tokenizer", "chat_template", "file"]


@dataclass(frozen=True)
class ExternalInput:
    """A file or folder outside the lake that the outputs depend on (a base model, a
    tokenizer, a chat template). Its path comes from the config field ``field`` (or the
    CLI's ``--external name=PATH``); the runner digests the tree it names, and that
    digest, not the path, goes into the cache key and the receipt's inputs."""

    name: str
    kind: ExternalKind
    field: str
    # Makes (once) and returns the path to use when neither the CLI nor the config gives
    # one (a tokenizer built offline); None: the input must be given.
    default: Callable[[LakeLayout, CacheMac], Path] | None = None


@dataclass(frozen=True)
class Resources:
    """What one execution of the stage needs: what a Ray or GPU executor schedules by."""

    cpu: float = 1.0
    memory_gb: float = 1.0
    gpu: int = 0


@dataclass(frozen=True)
class Stage(Generic[C]):
    name: str
    version: str
    config_model: type[C]
    inputs: tuple[str, ...]
    outputs: tuple[TableSpec, ...]
    run: Callable[[StageContext[C]], StageResult]
    source_kinds: tuple[str, ...] = ()
    # Writes exports/<run_id>/... from the stage's own output tables.
    materialize: Callable[[ExportContext[C]], None] | None = None
    # Re-reads what the stage wrote (tables and exports); returns violations.
    validate: Callable[[ExportContext[C]], list[str]] | None = None
    # What the outputs depend on besides this code and the config: versions of installed
    # engines (the secret scanners a firewalled stage runs). Part of ``full_version``.
    engines: Callable[[], str] | None = None
    traits: Traits = Traits()
    # For a stage that reads sources: whether its config shows paths under the user's
    # home as ``~`` (their recorded paths, so their digests, depend on it). Default: yes.
    folds_home: Callable[[C], bool] | None = None
    artifacts: tuple[ArtifactSpec, ...] = ()
    # Artifacts of upstream stages this stage reads (by artifact name): their tree
    # digests are in its cache key, and the stage that makes one runs before it.
    artifact_inputs: tuple[str, ...] = ()
    externals: tuple[ExternalInput, ...] = ()
    resources: Resources = Resources()

    def __post_init__(self) -> None:
        names = [a.name for a in self.artifacts]
        if len(set(names)) != len(names):
            raise ValueError(f"stage {self.name}: artifact names repeat: {names}")
        for external in self.externals:
            field_info = self.config_model.model_fields.get(external.field)
            if field_info is None or field_info.is_required():
                # The field is left out of the keyed, recorded config: it must have a default.
                raise ValueError(f"stage {self.name}: external {external.name!r} needs an optional "
                                 f"config field {external.field!r}")

    @cached_property
    def full_version(self) -> str:
        """The version receipts record and cache keys hash: ``version``, the engine
        versions (upgrading an engine re-runs the stage instead of reusing old output),
        and the digest of the stage's code (``pipeline.core.code``: editing its logic
        re-runs it, version bump or not)."""
        return self.installed_version()

    def installed_version(self) -> str:
        """``full_version`` as this process's installed code and engines give it, never
        a value cached on the object (a stage pickled to another machine carries its
        cached ``full_version`` with it)."""
        return self.version_with(None if self.engines is None else self.engines())

    def version_with(self, engines: str | None) -> str:
        """The version with these engines (another node's) and this process's code."""
        from pipeline.core.code import code_digest

        version = self.version if engines is None else f"{self.version}+{engines}"
        return f"{version}+code.{code_digest(self.run.__module__)}"

    @property
    def quarantine_table(self) -> str:
        return f"{self.name.replace('-', '_')}_quarantine"

    def result_key(self, table: str) -> str:
        """Where the lake table ``table`` sits in ``StageResult.tables`` (a stage names its
        quarantine table plain ``quarantine``)."""
        return "quarantine" if table == self.quarantine_table else table

    @property
    def output_names(self) -> tuple[str, ...]:
        names = tuple(spec.name for spec in self.outputs)
        return (*names, self.quarantine_table) if self.traits.maps_records else names
