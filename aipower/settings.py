"""Settings: environment variables and CLI flags, read once. The only module that reads os.environ. Kernel layer."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

DEFAULT_DATABASE_URL = "sqlite:///./aipower-data/aipower.db"


@dataclass(frozen=True, slots=True)
class Settings:
    """Every deployment setting; `ENV` lists the variable each field is read from."""

    database_url: str = DEFAULT_DATABASE_URL
    catalog_paths: tuple[Path, ...] = ()
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    http2: bool = False  # also HTTP/2 over cleartext (prior knowledge, "h2c"): needs the http2 extra (zttp)
    connect_timeout: float = 10.0
    first_byte_timeout: float = 120.0
    stream_idle_timeout: float = 120.0
    upstream_max_connections: int = 1000
    max_body_bytes: int = 16 * 1024 * 1024
    key_cache_seconds: float = 5.0
    stale_hold_seconds: int = 3600
    hold_beat_seconds: float = 15.0  # storage.ledger_owners: a process missing 4 beats is dead
    redis_url: str = ""
    redis_prefix: str = "aipower:"
    redis_failure_policy: str = "open"  # open: fall back to in-process limits; closed: answer 503
    redis_limit_leases: bool = True  # admit most calls from leases of the shared limits (gateway.limit_leases)
    spare_holds: bool = True  # a lone call's settle takes its key's next hold (storage.ledger_spares)
    rate_window_seconds: int = 60
    default_rpm: int = 600
    default_tpm: int = 1_000_000
    max_concurrent_per_key: int = 64
    demo_key: str = "sk-aipower-demo-public"
    demo_models: tuple[str, ...] = ("deepseek/deepseek-chat", "qwen/qwen-turbo", "zhipu/glm-4-flash")
    demo_daily_calls: int = 5
    trusted_proxies: tuple[str, ...] = ()
    auth_failures_per_minute: int = 20
    failover_budget: float = 30.0  # seconds after which no further failover attempt starts
    breaker_failures: int = 5  # consecutive retryable failures that open a deployment's circuit breaker
    breaker_cooldown: float = 30.0  # seconds an open breaker waits before letting one probe through
    health_sync_seconds: float = 1.0  # with Redis: how stale this process's copy of the shared breakers may be
    operator_key_ids: tuple[str, ...] = ()  # key ids allowed to read operator routes (/v1/providers/health)
    log_level: str = "info"
    # Provider credentials and endpoints: every <X>_API_KEY and <X>_BASE_URL variable, resolved
    # against the catalog's key_env / base_url_env names. Never logged.
    provider_env: Mapping[str, str] = field(default_factory=dict, repr=False)

    def with_overrides(self, **changes: Any) -> Settings:
        """A copy with the given fields replaced (CLI flags win over the environment)."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


ENV: Mapping[str, str] = {
    "database_url": "AIPOWER_DATABASE_URL",
    "catalog_paths": "AIPOWER_CATALOG",
    "host": "AIPOWER_HOST",
    "port": "AIPOWER_PORT",
    "workers": "AIPOWER_WORKERS",
    "http2": "AIPOWER_HTTP2",
    "connect_timeout": "AIPOWER_CONNECT_TIMEOUT",
    "first_byte_timeout": "AIPOWER_FIRST_BYTE_TIMEOUT",
    "stream_idle_timeout": "AIPOWER_STREAM_IDLE_TIMEOUT",
    "upstream_max_connections": "AIPOWER_UPSTREAM_MAX_CONNECTIONS",
    "max_body_bytes": "AIPOWER_MAX_BODY_BYTES",
    "key_cache_seconds": "AIPOWER_KEY_CACHE_SECONDS",
    "stale_hold_seconds": "AIPOWER_STALE_HOLD_SECONDS",
    "hold_beat_seconds": "AIPOWER_HOLD_BEAT_SECONDS",
    "redis_url": "AIPOWER_REDIS_URL",
    "redis_prefix": "AIPOWER_REDIS_PREFIX",
    "redis_failure_policy": "AIPOWER_REDIS_FAILURE_POLICY",
    "redis_limit_leases": "AIPOWER_REDIS_LIMIT_LEASES",
    "spare_holds": "AIPOWER_SPARE_HOLDS",
    "rate_window_seconds": "AIPOWER_RATE_WINDOW_SECONDS",
    "default_rpm": "AIPOWER_DEFAULT_RPM",
    "default_tpm": "AIPOWER_DEFAULT_TPM",
    "max_concurrent_per_key": "AIPOWER_MAX_CONCURRENT_PER_KEY",
    "demo_key": "AIPOWER_DEMO_KEY",
    "demo_models": "AIPOWER_DEMO_MODELS",
    "demo_daily_calls": "AIPOWER_DEMO_DAILY_CALLS",
    "trusted_proxies": "AIPOWER_TRUSTED_PROXIES",
    "auth_failures_per_minute": "AIPOWER_AUTH_FAILURES_PER_MINUTE",
    "failover_budget": "AIPOWER_FAILOVER_BUDGET",
    "breaker_failures": "AIPOWER_BREAKER_FAILURES",
    "breaker_cooldown": "AIPOWER_BREAKER_COOLDOWN",
    "health_sync_seconds": "AIPOWER_HEALTH_SYNC_SECONDS",
    "operator_key_ids": "AIPOWER_OPERATOR_KEY_IDS",
    "log_level": "AIPOWER_LOG_LEVEL",
}


_EMPTY_ALLOWED = frozenset({"demo_key"})  # AIPOWER_DEMO_KEY= (empty) disables the demo key


class SettingsError(ValueError):
    """An environment variable has a value of the wrong type."""


def from_environ(environ: Mapping[str, str] | None = None) -> Settings:
    """Settings from the process environment (or the given mapping)."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    types = {f.name: f.type for f in fields(Settings)}
    for name, var in ENV.items():
        raw = env.get(var)
        if raw is None or (raw == "" and name not in _EMPTY_ALLOWED):
            continue
        values[name] = _convert(var, raw, str(types[name]))
    values["provider_env"] = {k: v for k, v in env.items() if (k.endswith("_API_KEY") or k.endswith("_BASE_URL")) and v}
    return Settings(**values)


def export(settings: Settings) -> None:
    """Write the settings back to this process's environment, for worker processes that re-read it."""
    for name, var in ENV.items():
        value = getattr(settings, name)
        if isinstance(value, tuple):
            separator = os.pathsep if name == "catalog_paths" else ","
            os.environ[var] = separator.join(str(p) for p in value)
        else:
            os.environ[var] = str(value)


_BOOLEANS = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False, "off": False}


def _convert(var: str, raw: str, type_name: str) -> Any:
    if type_name == "bool":
        if raw.strip().lower() not in _BOOLEANS:
            raise SettingsError(f"{var}={raw!r}: expected 1 or 0 (true/false, yes/no, on/off)")
        return _BOOLEANS[raw.strip().lower()]
    try:
        if type_name == "int":
            return int(raw)
        if type_name == "float":
            return float(raw)
    except ValueError as exc:
        raise SettingsError(f"{var}={raw!r}: expected a number") from exc
    if type_name.startswith("tuple[Path"):
        return tuple(Path(p) for p in raw.split(os.pathsep) if p)
    if type_name.startswith("tuple[str"):
        return tuple(item.strip() for item in raw.split(",") if item.strip())
    return raw
