"""taskmill's built-in task handlers: ``echo``, ``sleep``, ``fail``, ``http.request`` and
``taskmill.webhook``, and the observer that submits webhook deliveries.

Registered through the ``taskmill`` entry-point group exactly as a third-party plugin is.
"""

from __future__ import annotations

from typing import Any

from taskmill import HandlerSpec
from taskmill import hookimpl
from taskmill.plugin_api import SettingsSpec
from taskmill_handlers.echo import echo_handler
from taskmill_handlers.fail import fail_handler
from taskmill_handlers.http_request import http_request_handler
from taskmill_handlers.settings import HTTP_SETTINGS
from taskmill_handlers.settings import WEBHOOK_SETTINGS
from taskmill_handlers.sleep import sleep_handler
from taskmill_handlers.webhook import taskmill_task_event
from taskmill_handlers.webhook import webhook_handler

__all__ = [
    "echo_handler",
    "fail_handler",
    "http_request_handler",
    "sleep_handler",
    "taskmill_handlers",
    "taskmill_task_event",
    "webhook_handler",
    "taskmill_settings",
    "taskmill_app",
    "WEBHOOK_SETTINGS",
    "HTTP_SETTINGS",
]


@hookimpl
def taskmill_settings() -> list[SettingsSpec]:
    """Declare ``TASKMILL_WEBHOOK_*`` and ``TASKMILL_HTTP_*``."""
    return [WEBHOOK_SETTINGS, HTTP_SETTINGS]


@hookimpl
def taskmill_app(app: Any) -> None:
    """Register ``GET /api/v1/tasks/{id}/deliveries`` (a task's webhook deliveries)."""
    from taskmill.plugin_api import register_blueprint
    from taskmill_handlers.deliveries import blp

    register_blueprint(app, blp)


@hookimpl
def taskmill_handlers() -> list[HandlerSpec]:
    """Declare the built-in handlers.

    Returns:
        The :class:`~taskmill.HandlerSpec` of each built-in handler.
    """
    return [echo_handler, sleep_handler, fail_handler, http_request_handler, webhook_handler]
