"""Secret detection: a maintained catalogue (Kingfisher's rules) and tracelake's own rules.

collect's redaction (``pipeline.collect.redact``) and the export firewall
(``pipeline.export.firewall``) both use the two engines; see docs/SECRETS.md for why,
what each catches and what they cost.
"""
