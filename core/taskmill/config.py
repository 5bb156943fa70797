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
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

from taskmill.errors import ConfigError

__all__ = [
    "Settings",
    "load_settings",
    "is_loopback",
    "DEFAULT_DATABASE_URL",
    "LOOPBACK_HOSTS",
    "Setting",
    "SettingsSpec",
    "PluginSettings",
    "plugin_settings",
    "read_spec",
    "CORE_SPECS",
    "describe_settings",
    "secret_values",
]

DEFAULT_DATABASE_URL = "sqlite:///taskmill.db"
"""The embedded default: a SQLite file in the working directory."""

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost", "localhost.localdomain"})
"""Hosts that only this machine can reach (``TASKMILL_AUTH=none`` is refused on any other)."""

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
    """Address `taskmill api` and `taskmill run` listen on (also `--host`)."""
    port: int = 8000
    """Port `taskmill api` and `taskmill run` listen on (also `--port`)."""
    api_workers: int = 2
    """gunicorn worker processes of ``taskmill api`` (``TASKMILL_API_WORKERS``)."""
    api_threads: int = 1
    """Threads per gunicorn worker; more than 1 selects the gthread worker."""
    max_payload_bytes: int = 1024 * 1024
    """Largest request body; a larger one is a 413."""
    retry_backoff_max: float = 300.0
    """Cap, in seconds, of the exponential back-off between attempts."""
    cancel_grace: float = 5.0
    """Seconds a cancelled running task has to stop on its own before it is stopped by force."""
    auth: str = "apikey"
    """``apikey`` (API keys and JWT) or ``none`` (local development on loopback only)."""
    secret_key: str = ""
    """Server secret for HMAC of API keys and Flask; generated into the database when empty."""
    worker_concurrency: int = 0
    """0 means the number of CPUs."""
    worker_prefetch: int = -1
    """Tasks a worker claims beyond its processes; -1 adapts to task duration (see the worker)."""
    worker_pool: str = "prefork"
    """How a worker runs handlers: ``prefork`` (forked processes), ``threads`` or ``asyncio``."""
    worker_max_tasks_per_child: int = 0
    """Prefork pool: replace a child process after this many tasks; 0 never."""
    worker_lease: float = 30.0
    """Seconds without heartbeat after which a worker is dead and its tasks run again."""
    heartbeat_interval: float = 0.0
    """0 means a sixth of the lease."""
    poll_interval: float = 1.0
    """Longest sleep of an idle SQL-broker worker between polls (NOTIFY wakes it sooner)."""
    shutdown_timeout: float = 30.0
    """Seconds a worker waits for running tasks on SIGTERM before handing them back."""
    manager_interval: float = 1.0
    """Seconds between two ticks of a manager (release, recover, re-publish, schedules)."""
    republish_after: float = 30.0
    """Seconds a queued task may sit before the manager checks the broker still holds it."""
    result_ttl: float = 7 * 86400.0
    """Seconds finished tasks are kept; at least one day so idempotency keys live 24 h."""
    events_retention: float = 86400.0
    """Seconds events stay in the journal (webhooks, the events stream and the dashboard read it)."""
    rate_limit: str = ""
    """Per-key request rate, e.g. ``100/second``; empty disables it."""
    tenant_max_pending: int = 0
    """Per-tenant limit of unfinished tasks; 0 disables it."""
    log_level: str = "INFO"
    """DEBUG, INFO, WARNING, ERROR or CRITICAL."""
    log_format: str = "auto"
    """``json`` (one object per line), ``text``, or ``auto``: text on a terminal, JSON otherwise."""
    disabled_plugins: tuple[str, ...] = ()
    """Entry-point names of plugins not to load (comma-separated)."""
    load_plugins: tuple[str, ...] | None = None
    """When set, only these distributions' plugins are loaded (tests use this)."""
    trace_plugins: bool = False
    """Log every plugin hook call (DEBUG)."""
    metrics_dir: str = ""
    """PROMETHEUS_MULTIPROC_DIR shared by every role of one installation."""
    extra: tuple[tuple[str, Any], ...] = ()
    """Values of names core does not define (``redis_worker_class`` for ``TASKMILL_REDIS_WORKER_CLASS``),
    kept raw for the plugins that declare them (:func:`plugin_settings`); a name no plugin declares
    is refused when the runtime is built."""

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
        """A copy with ``changes`` applied and validated (names core does not define go to
        :attr:`extra`, for plugins)."""
        core = {k: v for k, v in changes.items() if k in _FIELD_NAMES}
        extra = dict(self.extra)
        extra.update({k: v for k, v in changes.items() if k not in _FIELD_NAMES})
        return validate(dataclasses.replace(self, **core, extra=tuple(sorted(extra.items()))))


_FIELDS = {f.name: f for f in dataclasses.fields(Settings) if f.name != "extra"}
_FIELD_NAMES = frozenset(_FIELDS)


def _coerce(name: str, raw: Any) -> Any:
    return _coerce_kind(_FIELDS[name].type, raw)


def _coerce_kind(kind: str, raw: Any) -> Any:
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
    if s.worker_pool not in ("prefork", "threads", "asyncio"):
        errors["worker_pool"] = "must be 'prefork', 'threads' or 'asyncio'"
    if s.worker_max_tasks_per_child < 0:
        errors["worker_max_tasks_per_child"] = "must be 0 (never) or more"
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
    if s.tenant_max_pending < 0:
        errors["tenant_max_pending"] = "must not be negative"
    if s.log_format not in ("auto", "json", "text"):
        errors["log_format"] = "must be 'auto', 'json' or 'text'"
    if s.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        errors["log_level"] = "must be DEBUG, INFO, WARNING, ERROR or CRITICAL"
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
            values[key] = raw
    for name, raw in env.items():
        if not name.startswith("TASKMILL_") or name in ("TASKMILL_CONFIG",):
            continue
        key = name[len("TASKMILL_") :].lower()
        if key.startswith("test_") or key == "require_services":
            continue  # test-suite variables, not settings
        values[key] = raw
    for key, raw in (overrides or {}).items():
        values[key] = raw
    coerced: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for key, raw in values.items():
        if key not in _FIELDS:
            extra[key] = raw  # a plugin's, checked once the plugins are known
            continue
        try:
            coerced[key] = _coerce(key, raw)
        except ValueError as exc:
            errors[f"TASKMILL_{key.upper()}"] = str(exc)
    if errors:
        raise ConfigError(errors)
    if coerced.get("database_url", "").startswith("postgresql://"):
        # SQLAlchemy 2.1 defaults to psycopg 3; we ship psycopg2.
        coerced["database_url"] = "postgresql+psycopg2://" + coerced["database_url"][13:]
    return validate(Settings(**coerced, extra=tuple(sorted(extra.items()))))


# --- settings declared by plugins (hook ``taskmill_settings``) ---------------------------------------

_KINDS = {str: "str", int: "int", float: "float", bool: "bool", tuple: "tuple[str, ...]"}


@dataclasses.dataclass(frozen=True)
class Setting:
    """One setting a plugin declares: ``TASKMILL_<PREFIX>_<NAME>``.

    Args:
        name: lower-case name without the prefix (``worker_class``).
        type: ``str``, ``int``, ``float``, ``bool`` or ``tuple`` (comma-separated strings).
        default: the value when the variable is not set.
        doc: one sentence for the configuration reference.
        choices: when given, the only values accepted.
        minimum, maximum: bounds of a number (inclusive).
        secret: masked wherever settings are shown (``taskmill config show``).
        check: a function of the coerced value returning an error message, or None.
    """

    name: str
    type: type = str
    default: Any = ""
    doc: str = ""
    choices: tuple[Any, ...] = ()
    minimum: float | None = None
    maximum: float | None = None
    secret: bool = False
    check: Any = None


@dataclasses.dataclass(frozen=True)
class SettingsSpec:
    """The settings of one plugin (or one part of one): ``name`` is how code asks for them
    (``runtime.plugin_settings("redis")``), ``prefix`` how they are spelled
    (``TASKMILL_REDIS_WORKER_CLASS`` for prefix ``redis`` and setting ``worker_class``)."""

    name: str
    prefix: str
    settings: tuple[Setting, ...]
    doc: str = ""

    def key(self, setting: Setting) -> str:
        return f"{self.prefix}_{setting.name}".lower()

    def env_name(self, setting: Setting) -> str:
        return "TASKMILL_" + self.key(setting).upper()


class PluginSettings:
    """A plugin's values, read-only: ``values.worker_class``."""

    __slots__ = ("_name", "_values")

    def __init__(self, name: str, values: Mapping[str, Any]) -> None:
        object.__setattr__(self, "_name", name)
        object.__setattr__(self, "_values", dict(values))

    def __getattr__(self, key: str) -> Any:
        try:
            return self._values[key]
        except KeyError:
            raise AttributeError(f"{self._name} has no setting {key!r}") from None

    def __setattr__(self, key: str, value: Any) -> None:
        raise AttributeError("plugin settings are read-only")

    def as_dict(self) -> dict[str, Any]:
        return dict(self._values)

    def __repr__(self) -> str:
        return f"PluginSettings({self._name!r})"


def _coerce_setting(setting: Setting, raw: Any) -> Any:
    value = _coerce_kind(_KINDS.get(setting.type, "str"), raw)
    if setting.choices and value not in setting.choices:
        raise ValueError("must be one of " + ", ".join(repr(c) for c in setting.choices))
    if setting.minimum is not None and value < setting.minimum:
        raise ValueError(f"must be at least {setting.minimum:g}")
    if setting.maximum is not None and value > setting.maximum:
        raise ValueError(f"must be at most {setting.maximum:g}")
    if setting.check is not None:
        problem = setting.check(value)
        if problem:
            raise ValueError(problem)
    return value


def _read(spec: SettingsSpec, extra: Mapping[str, Any], errors: dict[str, str]) -> PluginSettings:
    values: dict[str, Any] = {}
    for setting in spec.settings:
        key = spec.key(setting)
        if key not in extra:
            values[setting.name] = setting.default
            continue
        try:
            values[setting.name] = _coerce_setting(setting, extra[key])
        except ValueError as exc:
            errors[spec.env_name(setting)] = str(exc)
    return PluginSettings(spec.name, values)


def plugin_settings(specs: Sequence[SettingsSpec], settings: Settings) -> dict[str, PluginSettings]:
    """Every declared plugin setting, parsed from ``settings.extra``.

    Raises:
        ConfigError: listing every bad value and every ``TASKMILL_*`` name that neither core
            nor any plugin declares.
    """
    extra = dict(settings.extra)
    errors: dict[str, str] = {}
    out: dict[str, PluginSettings] = {}
    known: set[str] = set()
    for spec in specs:
        if spec.name in out:
            raise ConfigError({spec.name: "two plugins declare settings under this name"})
        out[spec.name] = _read(spec, extra, errors)
        known.update(spec.key(s) for s in spec.settings)
    for key in sorted(set(extra) - known):
        errors[f"TASKMILL_{key.upper()}"] = "unknown setting (no loaded plugin declares it)"
    if errors:
        raise ConfigError(errors)
    return out


def read_spec(spec: SettingsSpec, settings: Settings | None = None) -> PluginSettings:
    """One plugin's values, read without the runtime (for code that runs before it exists).

    Raises:
        ConfigError: a bad value for one of this spec's settings.
    """
    errors: dict[str, str] = {}
    values = _read(spec, dict((settings or load_settings()).extra), errors)
    if errors:
        raise ConfigError(errors)
    return values


CORE_SPECS: tuple[SettingsSpec, ...] = (
    SettingsSpec(
        name="metrics",
        prefix="metrics",
        doc="Prometheus metrics of every role.",
        settings=(
            Setting(
                "token",
                str,
                "",
                "When set, GET /metrics needs `Authorization: Bearer <token>`.",
                secret=True,
            ),
            Setting(
                "port",
                int,
                0,
                "Port of the /metrics, /health/live and /health/ready server of `taskmill worker` and "
                "`taskmill manager`; 0 turns it off (`taskmill run` turns it off: its api shows every "
                "role's metrics).",
                minimum=0,
                maximum=65535,
            ),
        ),
    ),
)
"""Settings that core declares through the same mechanism as plugins (parts of core that are
optional, like metrics)."""


def describe_settings(specs: Sequence[SettingsSpec] = ()) -> list[dict[str, Any]]:
    """Every setting, core's and the plugins', for the configuration reference and
    ``taskmill config show``: name, type, default, doc, secret, owner."""
    rows: list[dict[str, Any]] = []
    docs = _field_docs()
    for f in dataclasses.fields(Settings):
        if f.name == "extra":
            continue
        rows.append(
            {
                "name": f"TASKMILL_{f.name.upper()}",
                "key": f.name,
                "type": str(f.type),
                "default": f.default,
                "doc": docs.get(f.name, ""),
                "secret": f.name in SECRET_FIELDS,
                "owner": "core",
            }
        )
    for spec in (*CORE_SPECS, *specs):
        for setting in spec.settings:
            rows.append(
                {
                    "name": spec.env_name(setting),
                    "key": spec.key(setting),
                    "type": _KINDS.get(setting.type, "str"),
                    "default": setting.default,
                    "doc": setting.doc,
                    "secret": setting.secret,
                    "owner": spec.name,
                }
            )
    return rows


SECRET_FIELDS = frozenset({"secret_key"})
"""Core settings whose values are never shown."""

_SECRET_SUFFIXES = ("secret", "token", "password", "key")


def secret_values(settings: Settings, specs: Sequence[SettingsSpec] = ()) -> list[str]:
    """The configured values that must never appear in a log or an answer: core's secrets, the
    plugin settings declared secret, and (before the plugins are known) every plugin value whose
    name ends in secret, token, password or key."""
    values = [str(getattr(settings, name)) for name in SECRET_FIELDS if getattr(settings, name)]
    declared = {spec.key(s) for spec in (*CORE_SPECS, *specs) for s in spec.settings if s.secret}
    for key, value in settings.extra:
        if value and (key in declared or key.endswith(_SECRET_SUFFIXES)):
            values.append(str(value))
    for url in (settings.database_url, settings.broker_url):
        password = urlsplit(url).password if url else None
        if password:
            values.append(password)
    return values


def _field_docs() -> dict[str, str]:
    """The docstrings written under each field of :class:`Settings` (read from the source)."""
    import ast
    import inspect

    try:
        tree = ast.parse(inspect.getsource(Settings))
    except (OSError, TypeError):  # pragma: no cover - no source (zipped install)
        return {}
    docs: dict[str, str] = {}
    body = tree.body[0].body  # type: ignore[attr-defined]
    for node, after in zip(body, body[1:], strict=False):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(after, ast.Expr)
            and isinstance(after.value, ast.Constant)
            and isinstance(after.value.value, str)
        ):
            docs[node.target.id] = " ".join(after.value.value.split())
    return docs
