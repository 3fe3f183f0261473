"""Drift thresholds from four places, strongest first: flag > env > config file > default.

CI tunes thresholds per repository in the config file, a developer overrides them for
one shell with the environment, and a single invocation with flags.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, cast

from pydantic import ValidationError

from pipeline.core.errors import ConfigError
from schemas.drift import SEVERITY_RANK, DriftThresholds, FailOn

ENV_VARS: dict[str, str] = {
    "warn_pct": "TRACELAKE_DRIFT_WARN_PCT",
    "alert_pct": "TRACELAKE_DRIFT_ALERT_PCT",
    "min_abs_change": "TRACELAKE_DRIFT_MIN_ABS_CHANGE",
}
CONFIG_SECTION = "drift"
CONFIG_KEYS = (*ENV_VARS, "fail_on")
DEFAULT_FAIL_ON: FailOn = "alert"


def _from_env(env: Mapping[str, str]) -> dict[str, str]:
    return {field: env[var] for field, var in ENV_VARS.items() if env.get(var, "").strip()}


def _from_config(config: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    section = dict(config.get(CONFIG_SECTION, {}))
    unknown = sorted(set(section) - set(CONFIG_KEYS))
    if unknown:
        raise ConfigError(f"unknown key(s) in [drift]: {', '.join(unknown)}; known: {', '.join(CONFIG_KEYS)}")
    return section


def resolve_thresholds(
    flags: Mapping[str, float | int | None],
    env: Mapping[str, str] | None = None,
    config: Mapping[str, Mapping[str, Any]] | None = None,
) -> DriftThresholds:
    """Merge the layers field by field; a flag left as None falls through to the next layer."""
    merged: dict[str, Any] = {}
    merged.update({k: v for k, v in _from_config(config or {}).items() if k in ENV_VARS})
    merged.update(_from_env(os.environ if env is None else env))
    merged.update({k: v for k, v in flags.items() if v is not None})
    try:
        return DriftThresholds.model_validate(merged)
    except ValidationError as exc:
        raise ConfigError(f"invalid drift thresholds: {exc}") from exc


def resolve_fail_on(flag: str | None, config: Mapping[str, Mapping[str, Any]] | None = None) -> FailOn:
    value = flag if flag is not None else _from_config(config or {}).get("fail_on", DEFAULT_FAIL_ON)
    if value not in ("warn", "alert", "never"):
        raise ConfigError(f"fail_on must be warn, alert or never; got {value!r}")
    return cast(FailOn, value)


def exit_code(severity: str, fail_on: FailOn) -> int:
    """0 below ``fail_on``, 1 at or above it (2 is reserved for tool failures)."""
    return 1 if SEVERITY_RANK[severity] >= SEVERITY_RANK[fail_on] else 0
