"""One root error so callers (and the CLI's exit codes) can tell tool failures apart."""

from __future__ import annotations


class TracelakeError(Exception):
    """Root of every error tracelake raises on purpose."""


class HashingError(TracelakeError):
    """A value has no canonical encoding, so it cannot take part in an identity."""


class ConservationError(TracelakeError):
    """records_in != records_out + quarantined + filtered for a stage."""


class ValidationFailed(TracelakeError):
    """A stage's own re-read of its outputs found a violation (e.g. a firewall breach)."""


class SignatureError(TracelakeError):
    """A DSSE envelope does not verify against the public key."""


class IntegrityError(TracelakeError):
    """An object on disk does not match the digest its receipt records."""


class ConfigError(TracelakeError):
    """A config file or option is malformed."""


class NotFound(TracelakeError):
    """A run, receipt or table that was asked for does not exist."""
