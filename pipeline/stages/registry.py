"""The pipeline's stages in topological order."""

from __future__ import annotations

from pipeline.core.stage import Stage

STAGES: list[Stage] = []
