"""Settings: one frozen object, built once from ``TASKMILL_*`` variables (and an optional file).

This is the only module that reads ``os.environ``. Every value is validated at start, and
all problems are reported together in one :class:`~taskmill.errors.ConfigError`.

An optional file named by ``TASKMILL_CONFIG`` holds a JSON object of the same keys in lower
case without the prefix (``{"database_url": "…"}``); environment variables win over it.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from taskmill.errors import ConfigError

__all__ = ["Settings", "load_settings", "is_loopback", "DEFAULT_DATABASE_URL", "LOOPBACK_HOSTS"]

DEFAULT_DATABASE_URL = "sqlite:///taskmill.db"
"""The embedded default: a SQLite file in the working directory."""

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost", "localhost.localdomain"})
"""Hosts that only this machine can reach (``TASKMILL_AUTH=none`` is refused on any other)."""

MIN_JWT_SECRET_BYTES = 32
"""RFC 7518 §3.2: an HS256 key is at least as long as the hash."""

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


@dataclasses.dataclass(frozen=True)
class Settings:
    """Every setting of taskmill. Build it with :func:`load_settings`, or directly in tests."""

    database_url: str = DEFAULT_DATABASE_URL
    """SQLAlchemy URL of the source of truth (``TASKMILL_DATABASE_URL``)."""
    broker_url: str = ""
    """Broker URL; empty means the SQL broker on the database (``TASKMILL_BROKER_URL``)."""
    host: str = "127.0.0.1"
    port: int = 8000
    api_workers: int = 2
    """gunicorn worker processes of ``taskmill api`` (``TASKMILL_API_WORKERS``)."""
    api_threads: int = 1
    """Threads per gunicorn worker; more than 1 selects the gthread worker."""
    max_payload_bytes: int = 1024 * 1024
    retry_backoff_max: float = 300.0
    cancel_grace: float = 5.0
    auth: str = "apikey"
    """``apikey`` (API keys and JWT) or ``none`` (local development on loopback only)."""
    secret_key: str = ""
    """Server secret for HMAC of API keys and Flask; generated into the database when empty."""
    jwt_secret: str = ""
    jwt_public_key: str = ""
    jwt_issuer: str = ""
    jwt_audience: str = ""
    jwt_leeway: int = 30
    metrics_token: str = ""
    webhook_secret: str = ""
    webhook_allow_private: bool = False
    http_allow_private: bool = False
    worker_concurrency: int = 0
    """0 means the number of CPUs."""
    worker_prefetch: int = -1
    """Tasks a worker claims beyond its processes; -1 adapts to task duration (see the worker)."""
    worker_lease: float = 30.0
    """Seconds without heartbeat after which a worker is dead and its tasks run again."""
    heartbeat_interval: float = 0.0
    """0 means a sixth of the lease."""
    poll_interval: float = 1.0
    """Longest sleep of an idle SQL-broker worker between polls (NOTIFY wakes it sooner)."""
    shutdown_timeout: float = 30.0
    """Seconds a worker waits for running tasks on SIGTERM before handing them back."""
    manager_interval: float = 1.0
    republish_after: float = 30.0
    """Seconds a queued task may sit before the manager checks the broker still holds it."""
    result_ttl: float = 7 * 86400.0
    """Seconds finished tasks are kept; at least one day so idempotency keys live 24 h."""
    rate_limit: str = ""
    """Per-key request rate, e.g. ``100/second``; empty disables it."""
    tenant_max_pending: int = 0
    """Per-tenant limit of unfinished tasks; 0 disables it."""
    log_level: str = "INFO"
    disabled_plugins: tuple[str, ...] = ()
    load_plugins: tuple[str, ...] | None = None
    """When set, only these distributions' plugins are loaded (tests use this)."""
    trace_plugins: bool = False
    metrics_dir: str = ""
    """PROMETHEUS_MULTIPROC_DIR shared by every role of one installation."""
    redis_worker_class: str = "simple"
    """RQ worker class of the Redis broker: ``simple`` (SimpleWorker, the task runs in the worker
    process; measured fastest) or ``fork`` (forking Worker, a work-horse process per task)."""

    @property
    def effective_broker_url(self) -> str:
        return self.broker_url or self.database_url

    @property
    def concurrency(self) -> int:
        return self.worker_concurrency or (os.cpu_count() or 1)

    @property
    def heartbeat(self) -> float:
        return self.heartbeat_interval or max(0.2, self.worker_lease / 6)

    def replace(self, **changes: Any) -> Settings:
        """A copy with ``changes`` applied and validated."""
        return validate(dataclasses.replace(self, **changes))

    def plugin_slice(self, prefix: str) -> dict[str, Any]:
        """Settings whose name starts with ``prefix`` (a plugin's slice), prefix removed."""
        return {
            f.name[len(prefix) :]: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.name.startswith(prefix)
        }


_FIELDS = {f.name: f for f in dataclasses.fields(Settings)}


def _coerce(name: str, raw: Any) -> Any:
    field = _FIELDS[name]
    kind = field.type
    if isinstance(raw, str):
        raw_s = raw.strip()
    else:
        raw_s = raw
    if kind == "bool":
        if isinstance(raw_s, bool):
            return raw_s
        if str(raw_s).lower() in _TRUE:
            return True
        if str(raw_s).lower() in _FALSE:
            return False
        raise ValueError(f"expected a boolean (1/0, true/false), got {raw!r}")
    if kind == "int":
        try:
            return int(raw_s)
        except (TypeError, ValueError):
            raise ValueError(f"expected an integer, got {raw!r}") from None
    if kind == "float":
        try:
            return float(raw_s)
        except (TypeError, ValueError):
            raise ValueError(f"expected a number, got {raw!r}") from None
    if kind.startswith("tuple"):
        if isinstance(raw_s, list | tuple):
            return tuple(str(x) for x in raw_s)
        return tuple(x.strip() for x in str(raw_s).split(",") if x.strip())
    return str(raw_s)


def is_loopback(host: str) -> bool:
    """True when ``host`` can only be reached from this machine."""
    if host.lower() in LOOPBACK_HOSTS:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def validate(settings: Settings) -> Settings:
    """Check every value; raise one ConfigError listing all that are wrong."""
    errors: dict[str, str] = {}
    s = settings
    for key in ("database_url", "broker_url"):
        url = getattr(s, key)
        if url and not urlsplit(url).scheme:
            errors[key] = f"not a URL: {url!r}"
    positive = ("max_payload_bytes", "api_workers", "api_threads", "port")
    for key in positive:
        if getattr(s, key) < 1:
            errors[key] = "must be at least 1"
    if not (0 < s.port < 65536):
        errors["port"] = "must be 1..65535"
    for key in ("retry_backoff_max", "worker_lease", "manager_interval", "poll_interval"):
        if getattr(s, key) <= 0:
            errors[key] = "must be greater than 0"
    for key in ("cancel_grace", "shutdown_timeout", "heartbeat_interval", "republish_after"):
        if getattr(s, key) < 0:
            errors[key] = "must not be negative"
    if s.worker_concurrency < 0:
        errors["worker_concurrency"] = "must be 0 (one per CPU) or more"
    if s.worker_prefetch < -1:
        errors["worker_prefetch"] = "must be -1 (adaptive) or more"
    if s.heartbeat_interval and s.heartbeat_interval >= s.worker_lease:
        errors["heartbeat_interval"] = "must be shorter than worker_lease"
    if s.result_ttl < 86400:
        errors["result_ttl"] = "must be at least 86400 (idempotency keys are kept 24 hours)"
    if s.auth not in ("apikey", "none"):
        errors["auth"] = "must be 'apikey' or 'none'"
    elif s.auth == "none" and not is_loopback(s.host):
        errors["auth"] = (
            f"'none' is for local development and needs a loopback host (127.0.0.1, ::1, localhost), "
            f"not {s.host!r}"
        )
    if s.jwt_secret and len(s.jwt_secret.encode()) < MIN_JWT_SECRET_BYTES:
        errors["jwt_secret"] = f"must be at least {MIN_JWT_SECRET_BYTES} bytes"
    if not (0 <= s.jwt_leeway <= 300):
        errors["jwt_leeway"] = "must be 0..300 seconds"
    if s.tenant_max_pending < 0:
        errors["tenant_max_pending"] = "must not be negative"
    if s.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        errors["log_level"] = "must be DEBUG, INFO, WARNING, ERROR or CRITICAL"
    if s.redis_worker_class not in ("simple", "fork"):
        errors["redis_worker_class"] = "must be 'simple' or 'fork'"
    if s.rate_limit:
        try:
            from limits import parse

            parse(s.rate_limit)
        except Exception:  # noqa: BLE001 - any parse failure is a config error
            errors["rate_limit"] = f"not a rate such as '100/second': {s.rate_limit!r}"
    if errors:
        raise ConfigError({f"TASKMILL_{k.upper()}": v for k, v in errors.items()})
    return settings


def load_settings(
    environ: Mapping[str, str] | None = None, overrides: Mapping[str, Any] | None = None
) -> Settings:
    """Build the settings from a config file, ``TASKMILL_*`` variables and ``overrides``.

    Args:
        environ: the environment to read (default ``os.environ``).
        overrides: values that win over everything (lower-case field names).

    Raises:
        ConfigError: listing every invalid or unknown value.
    """
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    errors: dict[str, str] = {}
    path = env.get("TASKMILL_CONFIG")
    if path:
        try:
            with open(path, encoding="utf-8") as fh:
                data = json.load(fh)
            if not isinstance(data, dict):
                raise ValueError("the file must hold a JSON object")
        except (OSError, ValueError) as exc:
            raise ConfigError({"TASKMILL_CONFIG": f"cannot read {path}: {exc}"}) from None
        for key, raw in data.items():
            if key not in _FIELDS:
                errors[f"{path}:{key}"] = "unknown setting"
                continue
            values[key] = raw
    for name, raw in env.items():
        if not name.startswith("TASKMILL_") or name in ("TASKMILL_CONFIG",):
            continue
        key = name[len("TASKMILL_") :].lower()
        if key.startswith("test_") or key == "require_services":
            continue  # test-suite variables, not settings
        if key not in _FIELDS:
            errors[name] = "unknown setting"
            continue
        values[key] = raw
    for key, raw in (overrides or {}).items():
        if key not in _FIELDS:
            errors[key] = "unknown setting"
            continue
        values[key] = raw
    coerced: dict[str, Any] = {}
    for key, raw in values.items():
        try:
            coerced[key] = _coerce(key, raw)
        except ValueError as exc:
            errors[f"TASKMILL_{key.upper()}"] = str(exc)
    if errors:
        raise ConfigError(errors)
    if coerced.get("database_url", "").startswith("postgresql://"):
        # SQLAlchemy 2.1 defaults to psycopg 3; we ship psycopg2.
        coerced["database_url"] = "postgresql+psycopg2://" + coerced["database_url"][13:]
    return validate(Settings(**coerced))
