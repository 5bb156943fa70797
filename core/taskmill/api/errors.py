"""The one error mapper: TaskmillError → smorest's JSON error body, with the right status.

Every error response is ``{"code", "status", "message", "errors"}`` (flask-smorest's shape), for
our own errors, for webargs validation, for werkzeug's 400/404/405/413 and for unexpected
exceptions (500, logged, never a traceback in the body).
"""

from __future__ import annotations

import http
import json
import logging
from collections.abc import Callable
from typing import Any
from typing import TypeVar

from flask import Flask
from flask import current_app
from werkzeug.exceptions import HTTPException
from werkzeug.exceptions import InternalServerError
from werkzeug.exceptions import default_exceptions

from taskmill.errors import AuthError
from taskmill.errors import BrokerUnavailable
from taskmill.errors import Conflict
from taskmill.errors import Forbidden
from taskmill.errors import InvalidTransition
from taskmill.errors import NotFound
from taskmill.errors import RateLimited
from taskmill.errors import StorageUnavailable
from taskmill.errors import TaskmillError
from taskmill.errors import ValidationError
from taskmill.serialize import JsonTooDeep

__all__ = ["init_errors", "http_error", "error_payload", "documents_errors", "RETRY_AFTER_UNAVAILABLE"]

logger = logging.getLogger("taskmill.api")

F = TypeVar("F", bound=Callable[..., Any])

RETRY_AFTER_UNAVAILABLE = 5
"""Seconds a client is asked to wait after a 503."""

_LOCATIONS = {"json", "query", "querystring", "headers", "view_args", "path", "form", "files", "cookies"}

_MESSAGES = {
    400: "bad request",
    404: "not found",
    405: "method not allowed",
    413: "request body too large",
    422: "the request is invalid; see errors",
    500: "internal server error",
}


def http_error(
    code: int, message: str, errors: dict | None = None, headers: dict[str, str] | None = None
) -> HTTPException:
    """A werkzeug HTTPException carrying smorest's ``data`` (message, errors, headers)."""
    exc = default_exceptions.get(code, InternalServerError)()
    exc.code = code
    exc.data = {"message": message, "errors": errors or {}, "headers": headers or {}}  # type: ignore[attr-defined]
    return exc


def _mapping(exc: TaskmillError) -> tuple[int, str, dict, dict[str, str]]:
    """Status, message, errors and headers for one of our errors."""
    if isinstance(exc, AuthError):
        return 401, exc.message or "authentication required", {}, {"WWW-Authenticate": "Bearer"}
    if isinstance(exc, Forbidden):
        return 403, exc.message or "forbidden", {}, {}
    if isinstance(exc, NotFound):
        return 404, exc.message or "not found", {}, {}
    if isinstance(exc, InvalidTransition | Conflict):
        errors = {k: v for k, v in exc.details.items() if isinstance(k, str)}
        return 409, exc.message, errors, {}
    if isinstance(exc, ValidationError):
        return 422, exc.message, exc.errors, {}
    if isinstance(exc, RateLimited):
        return 429, exc.message, {}, {"Retry-After": str(max(1, int(exc.retry_after)))}
    if isinstance(exc, StorageUnavailable | BrokerUnavailable):
        what = "storage" if isinstance(exc, StorageUnavailable) else "broker"
        logger.warning("%s unavailable: %s", what, exc)
        return (
            503,
            f"the {what} is unavailable; try again later",
            {},
            {"Retry-After": str(RETRY_AFTER_UNAVAILABLE)},
        )
    raise exc  # not a client error: let Flask turn it into a logged 500


def _handle_taskmill_error(exc: TaskmillError) -> Any:
    code, message, errors, headers = _mapping(exc)
    return current_app.handle_http_exception(http_error(code, message, errors, headers))


def error_payload(error: HTTPException, base: tuple[dict, int, dict]) -> tuple[dict, int, dict]:
    """Complete smorest's error body: always a message and an errors object, the standard headers."""
    payload, code, headers = base
    headers = dict(headers or {})
    data = getattr(error, "data", None) or {}
    errors = payload.get("errors")
    if isinstance(errors, dict) and len(errors) == 1:
        ((location, inner),) = errors.items()
        if location in _LOCATIONS and isinstance(inner, dict):
            errors = inner  # {"json": {"priority": [...]}} → {"priority": [...]}
    payload["errors"] = errors if isinstance(errors, dict) else ({} if errors is None else {"json": errors})
    if "message" not in payload or not payload["message"]:
        exc = getattr(error, "exc", None) or data.get("exc")
        if isinstance(exc, json.JSONDecodeError | UnicodeDecodeError):
            payload["message"] = f"the request body is not valid JSON: {exc}"
        elif isinstance(exc, JsonTooDeep):
            payload["message"] = f"the request body is refused: {exc}"
        elif code in _MESSAGES:
            payload["message"] = _MESSAGES[code]
        else:
            try:
                payload["message"] = http.HTTPStatus(code).phrase.lower()
            except ValueError:
                payload["message"] = "error"
    valid_methods = getattr(error, "valid_methods", None)
    if code == 405 and valid_methods:
        headers.setdefault("Allow", ", ".join(sorted(valid_methods)))  # RFC 9110: a 405 lists them
    if code == 401:
        headers.setdefault("WWW-Authenticate", "Bearer")
    if code == 503:
        headers.setdefault("Retry-After", str(RETRY_AFTER_UNAVAILABLE))
    return payload, code, headers


def documents_errors(blp: Any, *codes: int) -> Callable[[F], F]:
    """Document error responses of a view in the OpenAPI document (smorest's registered ones)."""

    def decorate(func: F) -> F:
        for code in codes:
            func = blp.alt_response(code, response=http.HTTPStatus(code).name)(func)
        return func

    return decorate


def init_errors(app: Flask) -> None:
    """Install the TaskmillError mapper (smorest's Api handles HTTPException, 404/405/413/500)."""
    app.register_error_handler(TaskmillError, _handle_taskmill_error)
