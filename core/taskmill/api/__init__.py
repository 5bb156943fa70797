"""The REST API: one flask-smorest ``Api``, one blueprint per resource, one error mapper.

:func:`init_api` is called by :func:`taskmill.app.create_app`; views live in the resource
modules and call the lifecycle and the storage's reads, never SQL.
"""

from __future__ import annotations

from typing import Any

from flask import Flask
from flask import request
from flask_smorest import Api
from werkzeug.exceptions import HTTPException

from taskmill.api.auth import init_auth
from taskmill.api.auth import iter_route_roles
from taskmill.api.auth import public
from taskmill.api.auth import requires
from taskmill.api.auth import undeclared_routes
from taskmill.api.errors import error_payload
from taskmill.api.errors import http_error
from taskmill.api.errors import init_errors
from taskmill.api.openapi import document_rules
from taskmill.handlers import payload_json_schema

__all__ = [
    "init_api",
    "get_api",
    "register_blueprint",
    "TaskmillApi",
    "requires",
    "public",
    "iter_route_roles",
    "undeclared_routes",
]

EXTENSION_KEY = "taskmill.api"

SECURITY_SCHEMES = {
    "bearerAuth": {
        "type": "http",
        "scheme": "bearer",
        "description": "An API key or a JWT: `Authorization: Bearer <token>`.",
    },
    "apiKeyHeader": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
}
"""The credentials the API accepts (API.md); every operation needs one unless it says otherwise."""


class TaskmillApi(Api):
    """flask-smorest's Api whose error body always has ``message`` and ``errors``."""

    def handle_http_exception(self, error: HTTPException) -> Any:
        return error_payload(error, super().handle_http_exception(error))


def init_api(app: Flask, runtime: Any) -> TaskmillApi:
    """Create the Api, register the resource blueprints, the docs page and the error mapper.

    Args:
        app: the Flask app, configured with the ``API_*``/``OPENAPI_*`` keys.
        runtime: the app's :class:`taskmill.runtime.Runtime` (auth backends come from it).
    """
    from taskmill.api import dead_letters
    from taskmill.api import docs
    from taskmill.api import events
    from taskmill.api import handlers
    from taskmill.api import health
    from taskmill.api import queues
    from taskmill.api import schedules
    from taskmill.api import tasks
    from taskmill.api import workers
    from taskmill.api import workflows

    app.url_map.converters["taskid"] = tasks.TaskIdConverter
    api = TaskmillApi(app)
    api.register_converter(tasks.TaskIdConverter, lambda _conv: {"type": "string", "format": "uuid"})
    for name, scheme in SECURITY_SCHEMES.items():
        api.spec.components.security_scheme(name, scheme)
    for module in (tasks, queues, dead_letters, workers, handlers, health, schedules, workflows, events):
        api.register_blueprint(module.blp)
    app.register_blueprint(docs.blp)
    _document_pagination_header(api)
    handlers_ = runtime.registries.handlers
    document_rules(api, {name: payload_json_schema(spec) for name, spec in handlers_.items()})
    _declare_openapi_public(app)
    init_errors(app)
    init_auth(app, runtime)
    app.before_request(_require_json_body)
    app.extensions[EXTENSION_KEY] = api
    return api


def get_api(app: Flask) -> TaskmillApi:
    """The app's flask-smorest Api (plugins register their resource blueprints on it)."""
    return app.extensions[EXTENSION_KEY]


def register_blueprint(app: Flask, blp: Any) -> None:
    """Register a plugin's flask-smorest blueprint so that it appears in the OpenAPI document.

    Call it from ``taskmill_app(app)``. Its views declare roles with ``@requires`` like core's.
    """
    get_api(app).register_blueprint(blp)


def _require_json_body(*_: Any) -> None:
    """Only JSON bodies are read: a form or any other body on an API route is a 400."""
    rule = request.url_rule
    if rule is None or not rule.rule.startswith("/api/"):
        return
    has_body = (
        bool(request.content_length) or "chunked" in request.headers.get("Transfer-Encoding", "").lower()
    )
    if has_body and not request.is_json:
        raise http_error(
            400,
            "the request body must be JSON (Content-Type: application/json)",
            {"json": [f"unsupported content type {request.mimetype or 'none'!r}"]},
        )


def _document_pagination_header(api: Api) -> None:
    """``X-Pagination`` carries a JSON object: say so with ``content`` (OpenAPI 3), not ``schema``,
    which would mean the comma-separated "simple" style that clients and fuzzers then expect."""
    headers = api.spec.components.headers
    if "PAGINATION" in headers:
        headers["PAGINATION"] = {
            "description": "Pagination metadata, a JSON object.",
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/PaginationMetadata"}}},
        }


def _declare_openapi_public(app: Flask) -> None:
    """smorest's ``openapi.json`` view is a bound method: wrap it to declare it public."""
    endpoint = "api-docs.openapi_json"
    original = app.view_functions.get(endpoint)
    if original is None:
        return

    def openapi_json() -> Any:
        """The OpenAPI document."""
        return original()

    app.view_functions[endpoint] = public(openapi_json)
