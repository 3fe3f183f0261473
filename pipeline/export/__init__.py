"""Shared machinery of the score and export stages: tasks, conversations, tool schemas,
dedupe and the contamination firewall."""
