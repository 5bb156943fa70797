"""The RabbitMQ plugin's settings: ``TASKMILL_RABBITMQ_*``."""

from __future__ import annotations

from typing import Any

__all__ = ["SPEC", "read_settings", "FIELDS"]

try:
    from taskmill.plugin_api import Setting
    from taskmill.plugin_api import SettingsSpec
except ImportError:  # pragma: no cover - until the plugin API re-exports them
    from taskmill.config import Setting
    from taskmill.config import SettingsSpec

FIELDS = (
    Setting(
        "ca_file",
        str,
        "",
        "CA bundle (PEM) that amqps:// servers are verified against; empty: the system store.",
    ),
    Setting("cert_file", str, "", "Client certificate (PEM) for amqps://, when the server asks for one."),
    Setting("key_file", str, "", "Private key (PEM) of the client certificate."),
    Setting(
        "verify",
        bool,
        True,
        "Verify the amqps:// server's certificate and host name (off only for a throw-away server).",
    ),
    Setting("heartbeat", int, 30, "AMQP heartbeat interval in seconds (0: none).", minimum=0, maximum=600),
    Setting(
        "publish_timeout",
        float,
        5.0,
        "Longest time in seconds a publish waits for RabbitMQ's confirms, retries included.",
        minimum=0.1,
    ),
    Setting(
        "hold",
        float,
        2.0,
        "Seconds a busy worker keeps deliveries it has no room for before handing them back.",
        minimum=0.1,
    ),
    Setting(
        "dead_letter_max",
        int,
        100_000,
        "x-max-length of the taskmill.dead-letters queue (the oldest records are dropped first).",
        minimum=1,
    ),
)

SPEC = SettingsSpec(
    name="rabbitmq", prefix="rabbitmq", settings=FIELDS, doc="The RabbitMQ broker (amqp://, amqps://)."
)

_TRUE = {"1", "true", "yes", "on"}


class _Values:
    def __init__(self, values: dict[str, Any]) -> None:
        self.__dict__.update(values)


def _coerce(kind: type, raw: Any) -> Any:
    if kind is bool:
        return raw if isinstance(raw, bool) else str(raw).strip().lower() in _TRUE
    return kind(raw)


def read_settings(runtime: Any, settings: Any) -> Any:
    """The plugin's values: from core's plugin settings when the runtime has them, else parsed
    from the raw ``TASKMILL_RABBITMQ_*`` values core keeps for plugins."""
    getter = getattr(runtime, "plugin_settings", None)
    if callable(getter):
        try:
            return getter("rabbitmq")
        except (KeyError, AttributeError, LookupError):
            pass
    extra = dict(getattr(settings, "extra", ()) or ())
    values = {}
    for f in FIELDS:
        key = SPEC.key(f)
        values[f.name] = _coerce(f.type, extra[key]) if key in extra else f.default
    return _Values(values)
