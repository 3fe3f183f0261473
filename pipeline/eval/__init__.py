"""Eval: how an adapter behaves against its base model on tool calling (issue 14)."""
