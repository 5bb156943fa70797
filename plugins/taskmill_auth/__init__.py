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

from typing import Any

from taskmill import hookimpl
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
]


@hookimpl
def taskmill_auth_backends() -> list[type]:
    """API keys first (the common case), then JWT; each leaves the other's credentials alone."""
    return [ApiKeyBackend, JwtBackend]


@hookimpl
def taskmill_app(app: Any) -> None:
    """Register the api-keys and audit endpoints on the app's API (so they are in the OpenAPI doc)."""
    from taskmill.api import register_blueprint
    from taskmill_auth.views import audit_blp
    from taskmill_auth.views import keys_blp

    register_blueprint(app, keys_blp)
    register_blueprint(app, audit_blp)


@hookimpl
def taskmill_cli(group: Any) -> None:
    """Add ``taskmill api-keys …`` and ``taskmill audit``."""
    from taskmill_auth.commands import register_commands

    register_commands(group)


@hookimpl
def taskmill_bootstrap(runtime: Any) -> list[str] | None:
    """Create the first admin key on a fresh database (auth on); print it once."""
    return bootstrap_admin_key(runtime)
