"""Claude Code and Codex logs -> the collect tables (see ``pipeline.stages.collect``)."""

from pipeline.collect._compiled import guard

guard()
