"""Signing in to the dashboard: the session, its credential, and the CSRF token.

- **The session** is Flask's, signed with the app's ``SECRET_KEY``: HttpOnly, SameSite=Lax, path
  ``/dashboard``, and Secure whenever the request came over HTTPS (:class:`DashboardSessionInterface`).
- **What it holds**: a random session id (``sid``) and, once signed in, the API key the user typed,
  *encrypted* (Fernet, key derived from the server secret), so that a copied cookie never reveals
  the key. On every request the key is decrypted and resolved again through the auth backends
  (:func:`taskmill.api.auth.principal_for_credential`), so a revoked key, an expired JWT, a changed
  role or a rate limit take effect on the dashboard exactly as on the API. A session lives at most
  :data:`SESSION_MAX_AGE` seconds.
- **CSRF**: every form carries ``csrf_token = HMAC-SHA256(secret, "csrf:" + sid)``; every POST to
  the dashboard is refused (403) unless it carries the token of its session. The sign-in form has
  one too (a session id is created for the anonymous visitor), and signing in rotates the id.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from typing import Any

from cryptography.fernet import Fernet
from cryptography.fernet import InvalidToken
from flask import Flask
from flask import current_app
from flask import has_request_context
from flask import request
from flask import session
from flask.sessions import SecureCookieSessionInterface

from taskmill.plugin_api import AuthError
from taskmill.plugin_api import Forbidden
from taskmill.plugin_api import Principal
from taskmill.plugin_api import StorageUnavailable
from taskmill.plugin_api import principal_for_credential
from taskmill.plugin_api import use_principal

__all__ = [
    "SESSION_MAX_AGE",
    "COOKIE_NAME",
    "CsrfRefused",
    "DashboardSessionInterface",
    "init_session",
    "csrf_token",
    "check_csrf",
    "load_principal",
    "sign_in",
    "sign_out",
    "signed_in",
]

SESSION_MAX_AGE = 12 * 3600
"""Seconds a sign-in lasts (then the user signs in again)."""

COOKIE_NAME = "taskmill_session"
COOKIE_PATH = "/dashboard"


class CsrfRefused(Forbidden):
    """A POST without the CSRF token of its session (403)."""


class DashboardSessionInterface(SecureCookieSessionInterface):
    """Flask's signed-cookie session, marked Secure whenever the request came over HTTPS (behind a
    proxy, let the WSGI server or ProxyFix set the scheme from ``X-Forwarded-Proto``)."""

    def get_cookie_secure(self, app: Flask) -> bool:
        configured = bool(app.config.get("SESSION_COOKIE_SECURE"))
        return configured or (has_request_context() and request.is_secure)


def init_session(app: Flask) -> None:
    """Configure the app's session cookie for the dashboard."""
    app.session_interface = DashboardSessionInterface()
    app.config.update(
        SESSION_COOKIE_NAME=COOKIE_NAME,
        SESSION_COOKIE_PATH=COOKIE_PATH,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
    )


def _secret() -> bytes:
    key = current_app.secret_key
    if not key:
        # the app started while the database (which holds the generated secret) was down
        raise StorageUnavailable("the dashboard needs the server secret; the database is unavailable")
    return key.encode() if isinstance(key, str) else key


def _derive(purpose: str) -> bytes:
    return hmac.new(_secret(), f"taskmill-web:{purpose}".encode(), hashlib.sha256).digest()


def _fernet() -> Fernet:
    return Fernet(base64.urlsafe_b64encode(_derive("session-credential")))


def _sid() -> str:
    sid = session.get("sid")
    if not isinstance(sid, str):
        sid = secrets.token_urlsafe(24)
        session["sid"] = sid
    return sid


def csrf_token() -> str:
    """The CSRF token of the current session (creating the session id if needed)."""
    return hmac.new(_derive("csrf"), _sid().encode(), hashlib.sha256).hexdigest()


def check_csrf() -> None:
    """Refuse a POST whose ``csrf_token`` field is not its session's.

    Raises:
        CsrfRefused: missing or wrong token.
    """
    given = request.form.get("csrf_token", "")
    sid = session.get("sid")
    if not isinstance(sid, str) or not given:
        raise CsrfRefused("this form has expired or did not come from the dashboard; reload the page")
    expected = hmac.new(_derive("csrf"), sid.encode(), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(given.encode(), expected.encode()):
        raise CsrfRefused("this form has expired or did not come from the dashboard; reload the page")


def signed_in() -> bool:
    """Whether the session holds a credential."""
    return "cred" in session


def load_principal() -> Principal | None:
    """Resolve the session's credential through the auth backends and make it the request's
    principal. A credential the backends no longer accept ends the session.

    Returns:
        The principal, or None when the session holds none (or no longer a valid one).
    """
    token = session.get("cred")
    if not isinstance(token, str):
        return None
    try:
        credential = _fernet().decrypt(token.encode(), ttl=SESSION_MAX_AGE).decode()
        principal = principal_for_credential(credential)
    except (InvalidToken, AuthError):
        session.clear()
        return None
    use_principal(principal)
    return principal


def sign_in(credential: str) -> Principal:
    """Check a credential and, when it is accepted, start a new session holding it.

    Raises:
        AuthError: not accepted.
    """
    principal = principal_for_credential(credential)
    session.clear()
    session["sid"] = secrets.token_urlsafe(24)  # a new id: a session fixed before sign-in is useless
    session["cred"] = _fernet().encrypt(credential.encode()).decode()
    use_principal(principal)
    return principal


def sign_out() -> None:
    session.clear()


def describe(principal: Principal) -> dict[str, Any]:
    """What the page header shows about who is signed in."""
    return {"subject": principal.subject, "tenant": principal.tenant, "role": principal.role.value}
