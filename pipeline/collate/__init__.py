"""Collate: conversations through a model's real chat template into token ids and
proven loss masks (``masks``), with the tokenizer and template as hashed inputs."""
