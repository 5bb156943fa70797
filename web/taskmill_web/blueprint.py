"""The dashboard blueprint: who is signed in, CSRF, headers, error pages, static files.

Authentication and roles are core's (:mod:`taskmill.api.auth`), used exactly as the API uses them:

1. before anything else (a ``url_value_preprocessor`` runs before every ``before_request``), the
   session's credential is resolved through the auth backends and becomes the request's principal,
   and a POST without its session's CSRF token is refused (403);
2. core's ``before_request`` then checks the principal (none: 401 → the sign-in page) and the role
   each view declares with ``@requires`` (403), and counts the request against the rate limit;
3. views read and act through ``scope_tenant()`` / ``submit_tenant()`` and the lifecycle, so
   another tenant's task is a 404, as on the API.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from flask import Blueprint
from flask import Response
from flask import current_app
from flask import g
from flask import jsonify
from flask import redirect
from flask import render_template
from flask import request
from flask import send_from_directory
from flask import url_for
from werkzeug.exceptions import HTTPException

from taskmill.plugin_api import AuthError
from taskmill.plugin_api import Conflict
from taskmill.plugin_api import Forbidden
from taskmill.plugin_api import InvalidTransition
from taskmill.plugin_api import NotFound
from taskmill.plugin_api import Principal
from taskmill.plugin_api import RateLimited
from taskmill.plugin_api import Role
from taskmill.plugin_api import StorageUnavailable
from taskmill.plugin_api import TaskmillError
from taskmill.plugin_api import ValidationError
from taskmill.plugin_api import current_principal
from taskmill.plugin_api import public
from taskmill_web import session as web_session

__all__ = ["bp", "CSP", "STATIC_DIR", "state", "principal_or_none", "can", "render", "safe_next"]

logger = logging.getLogger("taskmill.web")

STATIC_DIR = Path(__file__).parent / "static"
EXTENSION_KEY = "taskmill.web"

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'; object-src 'none'"
)
"""Content-Security-Policy of every dashboard response: nothing inline, nothing from another host."""

bp = Blueprint("dashboard", __name__, url_prefix="/dashboard", template_folder="templates")

_STATIC_FILES = {p.name for p in STATIC_DIR.iterdir() if p.is_file()} if STATIC_DIR.is_dir() else set()
ASSET_VERSION = hashlib.sha256(
    b"".join((STATIC_DIR / name).read_bytes() for name in sorted(_STATIC_FILES))
).hexdigest()[:12]
"""Changes whenever a static file does, so that browsers may cache them for a long time."""


def state() -> dict[str, Any]:
    """The dashboard's per-app objects (reads, overview cache)."""
    return current_app.extensions[EXTENSION_KEY]


def principal_or_none() -> Principal | None:
    """The request's principal, or None when nobody is signed in (never raises)."""
    if "taskmill_web_principal" not in g:
        try:
            g.taskmill_web_principal = current_principal()
        except TaskmillError:
            g.taskmill_web_principal = None
    return g.taskmill_web_principal


def can(role: Role | str) -> bool:
    """Whether the signed-in principal's role includes ``role`` (for showing buttons)."""
    principal = principal_or_none()
    return principal is not None and principal.role.includes(role)


def safe_next(value: str | None) -> str:
    """A redirect target inside the dashboard (never another host)."""
    default = url_for("dashboard.overview")
    if not value:
        return default
    parts = urlsplit(value)
    if parts.scheme or parts.netloc or not parts.path.startswith("/dashboard") or "\\" in value:
        return default
    return value


def render(template: str, code: int = 200, **context: Any) -> tuple[str, int]:
    """A dashboard template and the HTTP status to answer with."""
    return render_template(f"taskmill_web/{template}", **context), code


# ---- request pipeline --------------------------------------------------------------------------


@bp.url_value_preprocessor
def _before(endpoint: str | None, _values: dict[str, Any] | None) -> None:
    """Runs before core's role check: CSRF on every POST, then the session's principal."""
    if endpoint == "dashboard.static_file":
        return
    if request.method == "POST":
        web_session.check_csrf()
    web_session.load_principal()


@bp.after_request
def _headers(response: Response) -> Response:
    response.headers["Content-Security-Policy"] = CSP
    response.headers.setdefault("X-Frame-Options", "DENY")
    response.headers.setdefault("Referrer-Policy", "same-origin")
    if request.endpoint != "dashboard.static_file":
        response.headers.setdefault("Cache-Control", "no-store")
    return response


@bp.app_template_filter("ago")
def _ago(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    seconds = float(seconds)
    if seconds < 1:
        return "now"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


@bp.app_template_filter("when")
def _when(value: dt.datetime | None) -> str:
    if value is None:
        return "—"
    return value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S") + "Z"


@bp.app_template_filter("pretty")
def _pretty(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True, default=str)


@bp.app_template_filter("pct")
def _pct(value: float | None) -> str:
    return "—" if value is None else f"{value * 100:.1f}%"


@bp.context_processor
def _context() -> dict[str, Any]:
    principal = principal_or_none()
    return {
        "principal": principal,
        "can": can,
        "csrf_token": web_session.csrf_token,
        "asset_version": ASSET_VERSION,
        "Role": Role,
        "auth_off": current_app.extensions["taskmill"].settings.auth == "none",
    }


@bp.get("/static/<path:filename>")
@public
def static_file(filename: str) -> Response:
    """The dashboard's own scripts, styles and icon (nothing comes from another host)."""
    if filename not in _STATIC_FILES:
        return _error_page(404, "Not found", "There is no such file.")
    response = send_from_directory(STATIC_DIR, filename, max_age=86400 * 30)
    return response


# ---- errors ------------------------------------------------------------------------------------


def _wants_json() -> bool:
    return request.path.startswith("/dashboard/live/") or request.path.startswith("/dashboard/events")


def _error_page(status: int, title: str, message: str, headers: dict[str, str] | None = None) -> Response:
    if _wants_json():
        response = jsonify({"code": status, "message": message})
    else:
        body, _ = render("error.html", title=title, message=message, http_status=status)
        response = current_app.response_class(body, mimetype="text/html")
    response.status_code = status
    for k, v in (headers or {}).items():
        response.headers[k] = v
    return response


@bp.errorhandler(AuthError)
def _unauthenticated(exc: AuthError) -> Response:
    if _wants_json():
        return _error_page(401, "Sign in", "your session has ended; sign in again")
    target = request.full_path if request.method == "GET" else request.referrer
    return redirect(url_for("dashboard.sign_in", next=safe_next(target and urlsplit(target).path)))


@bp.errorhandler(Forbidden)
def _forbidden(exc: Forbidden) -> Response:
    return _error_page(403, "Not allowed", exc.message or "your role does not allow this")


@bp.errorhandler(NotFound)
def _not_found(exc: NotFound) -> Response:
    return _error_page(404, "Not found", exc.message or "not found")


@bp.errorhandler(InvalidTransition)
@bp.errorhandler(Conflict)
def _conflict(exc: TaskmillError) -> Response:
    return _error_page(409, "Not possible now", exc.message)


@bp.errorhandler(ValidationError)
def _invalid(exc: ValidationError) -> Response:
    return _error_page(422, "Invalid request", exc.message)


@bp.errorhandler(RateLimited)
def _rate_limited(exc: RateLimited) -> Response:
    return _error_page(
        429, "Slow down", exc.message or "too many requests", {"Retry-After": str(exc.retry_after)}
    )


@bp.errorhandler(StorageUnavailable)
def _unavailable(exc: StorageUnavailable) -> Response:
    logger.warning("dashboard page failed, storage unavailable: %s", exc)
    return _error_page(
        503,
        "Database unavailable",
        "The database cannot be reached right now; try again in a moment.",
        {"Retry-After": "5"},
    )


@bp.errorhandler(HTTPException)
def _http(exc: HTTPException) -> Response:
    return _error_page(exc.code or 500, exc.name, exc.description or exc.name)
