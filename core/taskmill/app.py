"""The Flask app factory: settings → runtime → API → metrics → plugin extensions.

``create_app()`` is what gunicorn serves (``taskmill api``); tests call it with a mapping of
overrides or a :class:`~taskmill.config.Settings`, and may hand in a runtime of their own.
"""

from __future__ import annotations

import hmac
import logging
import os
from collections.abc import Mapping
from typing import Any

from flask import Flask
from flask import Response
from flask import current_app
from flask import request
from flask.json.provider import DefaultJSONProvider

from taskmill.api.auth import public
from taskmill.config import Settings
from taskmill.config import load_settings
from taskmill.errors import AuthError
from taskmill.errors import StorageUnavailable
from taskmill.registry import scheme_of
from taskmill.runtime import Runtime
from taskmill.runtime import build_runtime
from taskmill.serialize import loads_bounded

__all__ = ["create_app", "get_runtime"]

logger = logging.getLogger("taskmill.app")

EXTENSION_KEY = "taskmill"


def get_runtime() -> Runtime:
    """The runtime of the current app (storage, broker, lifecycle, registries)."""
    return current_app.extensions[EXTENSION_KEY]


def _settings(settings: Settings | Mapping[str, Any] | None) -> Settings:
    if isinstance(settings, Settings):
        return settings
    return load_settings(overrides=settings or {})


def create_app(
    settings: Settings | Mapping[str, Any] | None = None,
    *,
    runtime: Runtime | None = None,
    plugins: list[Any] | None = None,
) -> Flask:
    """Build the taskmill Flask app.

    Args:
        settings: a Settings, or a mapping of overrides for :func:`~taskmill.config.load_settings`;
            ignored when ``runtime`` is given.
        runtime: an already built runtime (tests; other roles); otherwise one is built, and a
            SQLite database is migrated on the way.
        plugins: extra plugin objects to register (tests).

    Raises:
        ConfigError: invalid settings.
        PluginError: a broken or conflicting plugin.
    """
    from taskmill import __version__
    from taskmill.api import init_api

    if runtime is None:
        resolved = _settings(settings)
        runtime = build_runtime(
            resolved, plugins=plugins, upgrade=scheme_of(resolved.database_url) == "sqlite"
        )
    settings = runtime.settings
    app = Flask("taskmill", static_folder=None)
    app.json = BoundedJSONProvider(app)
    app.config.update(
        MAX_CONTENT_LENGTH=settings.max_payload_bytes,
        API_TITLE="taskmill",
        API_VERSION=__version__,
        OPENAPI_VERSION="3.0.3",
        OPENAPI_URL_PREFIX="/api/v1",
        OPENAPI_JSON_PATH="openapi.json",
        API_SPEC_OPTIONS={
            "security": [{"bearerAuth": []}, {"apiKeyHeader": []}],
            "info": {"description": "A distributed task queue: submit tasks, follow them, run them."},
        },
    )
    app.config["SECRET_KEY"] = _secret_key(runtime)
    app.extensions[EXTENSION_KEY] = runtime
    init_api(app, runtime)
    _init_metrics(app, runtime)
    app.after_request(_security_headers)
    _init_request_ids(app)
    runtime.host.extend_app(app)
    return app


class BoundedJSONProvider(DefaultJSONProvider):
    """Flask's JSON, but a body nested too deep is a ``ValueError`` (Flask answers 400) instead
    of a ``RecursionError`` (a 500)."""

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        if kwargs:
            return super().loads(s, **kwargs)
        return loads_bounded(s)


def _init_request_ids(app: Flask) -> None:
    """Every request gets an id (the client's ``X-Request-ID`` when sane, else a new one) that
    every log line of the request carries and the answer returns."""
    from flask import g

    from taskmill import logs

    @app.before_request
    def _bind_request_id() -> None:
        g.request_id = logs.new_request_id(request.headers.get("X-Request-ID"))
        g.log_token = logs.bind(request_id=g.request_id)

    @app.after_request
    def _return_request_id(response: Response) -> Response:
        request_id = g.get("request_id")
        if request_id:
            response.headers["X-Request-ID"] = request_id
        return response

    @app.teardown_request
    def _unbind_request_id(_exc: BaseException | None) -> None:
        token = g.pop("log_token", None)
        if token is not None:
            logs.unbind(token)


HTML_SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; frame-ancestors 'none'; "
        "object-src 'none'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}
"""Headers of every HTML page (a page may send a CSP of its own; it must not allow inline scripts)."""


def _security_headers(response: Response) -> Response:
    """``after_request``: ``nosniff`` on every response, and CSP, framing and referrer rules on
    every HTML page (the API docs, the dashboard, error pages)."""
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    if response.mimetype == "text/html":
        for name, value in HTML_SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
    return response


def _secret_key(runtime: Runtime) -> str | None:
    try:
        return runtime.secret_key
    except StorageUnavailable as exc:
        # The API still starts (and answers 503) while the database is down.
        logger.warning("no server secret yet, the database is unavailable: %s", exc)
        return None


# ---- metrics -------------------------------------------------------------------------------------


def _init_metrics(app: Flask, runtime: Runtime) -> None:
    """prometheus-flask-exporter's HTTP metrics, and ``/metrics`` serving every role's metrics."""
    from prometheus_client import CollectorRegistry

    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_flask_exporter.multiprocess import MultiprocessPrometheusMetrics

        class _Metrics(MultiprocessPrometheusMetrics):
            def should_start_http_server(self) -> bool:
                return False  # /metrics is served by the app itself

        http_metrics: Any = _Metrics(app, group_by="endpoint")
        extra = None  # the multiprocess collector of the scrape reads these from the shared files
    else:
        from prometheus_flask_exporter import PrometheusMetrics

        # a registry per app, so that building several apps in one process never collides
        extra = CollectorRegistry()
        http_metrics = PrometheusMetrics(app, path=None, group_by="endpoint", registry=extra)
    app.extensions["taskmill.metrics"] = {"http": http_metrics, "registry": extra}
    app.add_url_rule("/metrics", "metrics", _metrics_view)


@public
def _metrics_view() -> Response:
    from prometheus_client import CONTENT_TYPE_LATEST
    from prometheus_client import generate_latest

    from taskmill.metrics import scrape_registry

    runtime = get_runtime()
    token = runtime.plugin_settings("metrics").token
    if token:
        header = request.headers.get("Authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
            raise AuthError("/metrics needs 'Authorization: Bearer <TASKMILL_METRICS_TOKEN>'")
    registry = scrape_registry(runtime)
    extra = current_app.extensions["taskmill.metrics"]["registry"]
    if extra is not None:
        registry.register(extra)
    return Response(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)
