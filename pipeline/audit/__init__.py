"""Everything that checks a run after the fact: verify (signatures, digests, claims),
deep verify (re-running stages) and lineage (exported rows back to source files)."""
