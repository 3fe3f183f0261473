"""The pipeline's stages in topological order."""

from __future__ import annotations

from pipeline.core.stage import Stage
from pipeline.stages.collect import STAGE as COLLECT
from pipeline.stages.export_preference import STAGE as EXPORT_PREFERENCE
from pipeline.stages.export_rag import STAGE as EXPORT_RAG
from pipeline.stages.export_sft import STAGE as EXPORT_SFT
from pipeline.stages.score import STAGE as SCORE

STAGES: list[Stage] = [COLLECT, SCORE, EXPORT_SFT, EXPORT_RAG, EXPORT_PREFERENCE]
