"""The settings the built-in handlers declare (hook ``taskmill_settings``)."""

from __future__ import annotations

from taskmill.plugin_api import Setting
from taskmill.plugin_api import SettingsSpec

__all__ = ["WEBHOOK_SETTINGS", "HTTP_SETTINGS"]

WEBHOOK_SETTINGS = SettingsSpec(
    name="webhook",
    prefix="webhook",
    doc="Delivery of the final task to its callback_url.",
    settings=(
        Setting(
            "secret",
            str,
            "",
            "HMAC-SHA256 key of X-Taskmill-Signature; the server secret when empty.",
            secret=True,
        ),
        Setting(
            "allow_private",
            bool,
            False,
            "Allow callback URLs on private, loopback and link-local addresses (tests, private networks).",
        ),
    ),
)

HTTP_SETTINGS = SettingsSpec(
    name="http",
    prefix="http",
    doc="The http.request handler.",
    settings=(
        Setting(
            "allow_private",
            bool,
            False,
            "Allow http.request to reach private, loopback, link-local and metadata addresses.",
        ),
    ),
)
