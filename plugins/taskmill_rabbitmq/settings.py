"""The RabbitMQ plugin's settings: ``TASKMILL_RABBITMQ_*`` (``runtime.plugin_settings("rabbitmq")``)."""

from __future__ import annotations

import os

from taskmill.plugin_api import Setting
from taskmill.plugin_api import SettingsSpec

__all__ = ["RABBITMQ_SETTINGS"]


def _file(path: str) -> str | None:
    return None if not path or os.path.isfile(path) else f"no such file: {path}"


RABBITMQ_SETTINGS = SettingsSpec(
    name="rabbitmq",
    prefix="rabbitmq",
    doc="The RabbitMQ broker (amqp://, amqps://).",
    settings=(
        Setting(
            "ca_file",
            str,
            "",
            "CA bundle (PEM) that amqps:// servers are verified against; empty: the system store.",
            check=_file,
        ),
        Setting(
            "cert_file",
            str,
            "",
            "Client certificate (PEM) for amqps://, when the server asks for one.",
            check=_file,
        ),
        Setting("key_file", str, "", "Private key (PEM) of the client certificate.", check=_file),
        Setting(
            "verify",
            bool,
            True,
            "Verify the amqps:// server's certificate and host name (off only for a throw-away server).",
        ),
        Setting(
            "heartbeat", int, 30, "AMQP heartbeat interval in seconds (0: none).", minimum=0, maximum=600
        ),
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
    ),
)
