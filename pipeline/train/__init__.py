"""Train: LoRA on the collated tables, bound to the digests of its data and base model."""
