"""Authentication, roles and tenant scoping: the one seam every API view goes through.

- **Who is calling.** A ``before_request`` hook resolves a :class:`~taskmill.models.Principal`:
  with ``TASKMILL_AUTH=none`` a local admin; otherwise each auth backend declared through
  ``taskmill_auth_backends`` is asked in turn (datasette's ``actor_from_request`` loop): the first
  principal wins, an :class:`~taskmill.errors.AuthError` is remembered and the next backend asked;
  none → 401.
- **What they may do.** Each view method declares its role with ``@requires(Role.X)``, or
  ``@public``; the declaration is stored on the function and checked before the view runs (so
  401 → 403 come before any body validation or lookup). :func:`iter_route_roles` walks the URL
  map so a test can insist that every route declares something.
- **What they may see.** :func:`scope_tenant` is the tenant every view passes to the lifecycle
  and storage (``None`` for an admin: every tenant).
- **How often.** With ``TASKMILL_RATE_LIMIT`` set, every authenticated request counts against its
  credential's rate (:mod:`taskmill.api.ratelimit`); over it, a 429 with ``Retry-After``.
- **What they did.** :func:`audit` writes one audit-log entry (actor, tenant, action, target,
  details) for a state-changing request; views call it once per request.

A plugin adding API keys or JWT only declares a backend class; no view changes.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from collections.abc import Iterator
from typing import Any
from typing import TypeVar

from flask import Flask
from flask import current_app
from flask import g
from flask import request

from taskmill.errors import AuthError
from taskmill.errors import Forbidden
from taskmill.errors import StorageUnavailable
from taskmill.models import Principal
from taskmill.models import Role

__all__ = [
    "PUBLIC",
    "requires",
    "public",
    "declared_role",
    "RouteRole",
    "iter_route_roles",
    "undeclared_routes",
    "current_principal",
    "principal_for_credential",
    "use_principal",
    "scope_tenant",
    "submit_tenant",
    "init_auth",
    "LOCAL_PRINCIPAL",
    "audit",
    "audit_entry",
    "actor_of",
]

logger = logging.getLogger("taskmill.api.auth")

F = TypeVar("F", bound=Callable[..., Any])

ROLE_ATTR = "_taskmill_role"
PUBLIC = "public"
"""The declaration of a view that needs no credential."""

API_PREFIX = "/api/v1"
EXTENSION_KEY = "taskmill.auth"

LOCAL_PRINCIPAL = Principal(subject="local", tenant="default", role=Role.ADMIN)
"""Who calls when ``TASKMILL_AUTH=none`` (local development only)."""


def requires(role: Role | str) -> Callable[[F], F]:
    """Declare the least role a view method needs (roles include the ones before them).

    Args:
        role: ``viewer``, ``submitter``, ``operator`` or ``admin``.
    """
    wanted = Role(role)

    def decorate(func: F) -> F:
        setattr(func, ROLE_ATTR, wanted)
        return func

    return decorate


def public(func: F) -> F:
    """Declare a view that needs no credential (health, docs, the OpenAPI document)."""
    setattr(func, ROLE_ATTR, PUBLIC)
    return func


def declared_role(view_func: Callable[..., Any] | None, method: str) -> Role | str | None:
    """The declaration of a view for an HTTP method: a Role, :data:`PUBLIC`, or None (nothing)."""
    if view_func is None:
        return None
    view_class = getattr(view_func, "view_class", None)
    if view_class is not None:
        meth = getattr(view_class, method.lower(), None)
        if meth is None and method.upper() == "HEAD":
            meth = getattr(view_class, "get", None)
        if meth is not None and getattr(meth, ROLE_ATTR, None) is not None:
            return getattr(meth, ROLE_ATTR)
        return getattr(view_class, ROLE_ATTR, None)
    return getattr(view_func, ROLE_ATTR, None)


@dataclasses.dataclass(frozen=True)
class RouteRole:
    """One endpoint and method of the app with what it declares (None: nothing)."""

    rule: str
    endpoint: str
    method: str
    role: Role | str | None


def iter_route_roles(app: Flask) -> Iterator[RouteRole]:
    """Every route and method of ``app`` (HEAD and automatic OPTIONS aside) with its declaration."""
    for rule in app.url_map.iter_rules():
        view = app.view_functions.get(rule.endpoint)
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            yield RouteRole(rule.rule, rule.endpoint, method, declared_role(view, method))


def undeclared_routes(app: Flask) -> list[RouteRole]:
    """The routes that declare neither a role nor :func:`public`."""
    return [r for r in iter_route_roles(app) if r.role is None]


# ---- resolving the principal -----------------------------------------------------------------------


def _backends() -> list[tuple[str, Any]]:
    return current_app.extensions[EXTENSION_KEY]["backends"]


def _authenticate(req: Any = None) -> Principal:
    state = current_app.extensions[EXTENSION_KEY]
    if state["mode"] == "none":
        return LOCAL_PRINCIPAL
    remembered: AuthError | None = None
    for name, backend in _backends():
        try:
            principal = backend.authenticate(request if req is None else req)
        except AuthError as exc:
            logger.debug("auth backend %s rejected the credential: %s", name, exc)
            remembered = remembered or exc
            continue
        if principal is not None:
            return principal
    if remembered is not None:
        raise AuthError(remembered.message or "invalid credential")
    raise AuthError("authentication required: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'")


def current_principal() -> Principal:
    """The principal of the current request (resolved by the before_request hook)."""
    principal = g.get("taskmill_principal")
    if principal is None:
        principal = _authenticate()
        g.taskmill_principal = principal
    return principal


def principal_for_credential(credential: str) -> Principal:
    """Resolve a credential (an API key or a JWT) through the auth backends, exactly as if the
    current request had sent it as ``Authorization: Bearer`` (the dashboard keeps one in its
    signed session). With ``TASKMILL_AUTH=none``: the local admin.

    Raises:
        AuthError: no backend accepts it.
    """
    from werkzeug.wrappers import Request

    environ = {k: v for k, v in request.environ.items() if k not in ("HTTP_AUTHORIZATION", "HTTP_X_API_KEY")}
    environ["HTTP_AUTHORIZATION"] = f"Bearer {credential}"
    return _authenticate(Request(environ))


def use_principal(principal: Principal) -> None:
    """Make ``principal`` the current request's, before the role check runs (a plugin that
    authenticates by other means, such as the dashboard's session, calls it)."""
    g.taskmill_principal = principal


def scope_tenant() -> str | None:
    """The tenant a view must limit reads and actions to: None for an admin (every tenant)."""
    principal = current_principal()
    return None if principal.is_admin else principal.tenant


def submit_tenant() -> str:
    """The tenant new tasks go into: always the caller's own (admins included)."""
    return current_principal().tenant


def _check_request() -> None:
    """``before_request``: credential (401), then role (403), for every declared or API route."""
    rule = request.url_rule
    if rule is None:
        return  # no route: the 404/405 follows
    if request.method == "OPTIONS" and getattr(rule, "provide_automatic_options", False):
        return
    view = current_app.view_functions.get(request.endpoint or "")
    role = declared_role(view, request.method)
    if role == PUBLIC:
        return
    if role is None:
        if not (rule.rule == API_PREFIX or rule.rule.startswith(API_PREFIX + "/")):
            return  # not ours to guard (a plugin's page that declares nothing)
        logger.warning("route %s %s declares no role; requiring admin", request.method, rule.rule)
        role = Role.ADMIN
    principal = current_principal()
    limiter = current_app.extensions[EXTENSION_KEY]["limiter"]
    if limiter is not None:
        limiter.check(principal)
    if not principal.role.includes(role):
        raise Forbidden(f"this action needs the {Role(role).value} role; you have {principal.role.value}")


def actor_of(principal: Principal) -> str:
    """How the audit log names a principal: ``key:<id>``, ``jwt:<sub>``, ``local``, …"""
    return principal.subject


def audit(action: str, target: str | None = None, *, tenant: str | None = None, **details: Any) -> None:
    """Write one audit-log entry for the current request: who did what to which object.

    Called by views after the action succeeded, once per request (a batch is one entry).
    A failure to write is logged and swallowed: the action already happened, and answering
    an error would invite the client to repeat it.

    Args:
        action: a dotted verb such as ``task.submit`` or ``api_key.revoke``.
        target: the object acted on (a task id, a queue name, a key id), if any.
        tenant: the tenant the object belongs to; defaults to the caller's.
        details: more JSON-serialisable facts (never a secret).
    """
    entry = audit_entry(action, target, tenant=tenant, **details)
    try:
        current_app.extensions["taskmill"].storage.add_audit(entry)
    except StorageUnavailable as exc:
        logger.error("audit entry %s on %s could not be written: %s", action, target, exc)
    except Exception:  # noqa: BLE001 - the action is done; a lost entry must not turn it into a 500
        logger.error("audit entry %s on %s could not be written", action, target, exc_info=True)


def audit_entry(action: str, target: str | None = None, *, tenant: str | None = None, **details: Any) -> dict:
    """The entry :func:`audit` writes (for a store that writes it with the action itself)."""
    principal = current_principal()
    entry_tenant = tenant or principal.tenant
    if entry_tenant != principal.tenant:
        details = {**details, "actor_tenant": principal.tenant}
    return {
        "actor": actor_of(principal)[:200],
        "tenant": entry_tenant[:100],
        "action": action,
        "target": None if target is None else str(target)[:200],
        "details": details or None,
    }


def init_auth(app: Flask, runtime: Any) -> None:
    """Instantiate the auth backends and the rate limiter once and install the ``before_request``
    check. ``TASKMILL_AUTH=none`` is logged loudly (the settings refuse it off loopback)."""
    from taskmill.api.ratelimit import build_rate_limiter

    settings = runtime.settings
    backends: list[tuple[str, Any]] = []
    if settings.auth != "none":
        for plugin_name, cls in runtime.registries.auth_backends:
            backends.append((plugin_name, cls(settings, runtime)))
        if not backends:
            logger.warning("no auth backend is installed: every API request will be refused (401)")
    else:
        logger.warning(
            "TASKMILL_AUTH=none: authentication is OFF and every request acts as an admin "
            "(local development only, bound to %s)",
            settings.host,
        )
    limiter = build_rate_limiter(settings) if settings.auth != "none" else None
    app.extensions[EXTENSION_KEY] = {"mode": settings.auth, "backends": backends, "limiter": limiter}
    app.before_request(_check_request)
