"""taskmill's built-in authentication plugin: API keys and JWT, their endpoints and commands.

Registered through the ``taskmill`` entry-point group like any third-party plugin:

- ``taskmill_auth_backends`` → :class:`~taskmill_auth.apikeys.ApiKeyBackend`,
  :class:`~taskmill_auth.tokens.JwtBackend`;
- ``taskmill_app`` → ``/api/v1/api-keys`` and ``/api/v1/audit`` (admin);
- ``taskmill_cli`` → ``taskmill api-keys create|list|revoke`` and ``taskmill audit``;
- ``taskmill_bootstrap`` → the first admin key of a fresh database.

Roles, tenant scoping, rate limits and the audit helper are core's (``taskmill.api.auth``):
this plugin only turns credentials into principals and manages keys.
"""

from __future__ import annotations

import logging
from typing import Any

from taskmill import hookimpl
from taskmill.plugin_api import Setting
from taskmill.plugin_api import SettingsSpec
from taskmill.plugin_api import StorageUnavailable
from taskmill_auth.apikeys import ApiKeyBackend
from taskmill_auth.apikeys import bootstrap_admin_key
from taskmill_auth.apikeys import create_api_key
from taskmill_auth.apikeys import revoke_api_key
from taskmill_auth.tokens import JwtBackend

__all__ = [
    "ApiKeyBackend",
    "JwtBackend",
    "create_api_key",
    "revoke_api_key",
    "taskmill_auth_backends",
    "taskmill_app",
    "taskmill_cli",
    "taskmill_bootstrap",
    "taskmill_settings",
    "JWT_SETTINGS",
]


MIN_JWT_SECRET_BYTES = 32
"""RFC 7518 §3.2: an HS256 key is at least as long as the hash."""


def _check_jwt_secret(value: str) -> str | None:
    if value and len(value.encode()) < MIN_JWT_SECRET_BYTES:
        return f"must be at least {MIN_JWT_SECRET_BYTES} bytes"
    return None


JWT_SETTINGS = SettingsSpec(
    name="jwt",
    prefix="jwt",
    doc="JSON Web Tokens accepted as credentials (API.md: HS256 or RS256).",
    settings=(
        Setting("secret", str, "", "HS256 key; at least 32 bytes.", secret=True, check=_check_jwt_secret),
        Setting("public_key", str, "", "RS256 public key (PEM)."),
        Setting("issuer", str, "", "When set, a token's `iss` must equal it."),
        Setting("audience", str, "", "When set, a token's `aud` must contain it."),
        Setting("leeway", int, 30, "Seconds of clock skew allowed on `exp`/`nbf`.", minimum=0, maximum=300),
    ),
)


@hookimpl
def taskmill_settings() -> list[SettingsSpec]:
    """Declare ``TASKMILL_JWT_*``."""
    return [JWT_SETTINGS]


@hookimpl
def taskmill_auth_backends() -> list[type]:
    """API keys first (the common case), then JWT; each leaves the other's credentials alone."""
    return [ApiKeyBackend, JwtBackend]


@hookimpl
def taskmill_app(app: Any) -> None:
    """Register the api-keys and audit endpoints on the app's API (so they are in the OpenAPI doc)."""
    from taskmill.plugin_api import register_blueprint
    from taskmill_auth.store import auth_store
    from taskmill_auth.views import audit_blp
    from taskmill_auth.views import keys_blp

    register_blueprint(app, keys_blp)
    register_blueprint(app, audit_blp)
    try:  # the keys and audit stores, attached to the storage (core's audit helper writes there)
        auth_store(app.extensions["taskmill"])
    except StorageUnavailable as exc:
        logging.getLogger("taskmill.auth").warning("auth store not ready (%s); attached on first use", exc)


@hookimpl
def taskmill_cli(group: Any) -> None:
    """Add ``taskmill api-keys …`` and ``taskmill audit``."""
    from taskmill_auth.commands import register_commands

    register_commands(group)


@hookimpl
def taskmill_bootstrap(runtime: Any) -> list[str] | None:
    """Create the first admin key on a fresh database (auth on); print it once."""
    return bootstrap_admin_key(runtime)
