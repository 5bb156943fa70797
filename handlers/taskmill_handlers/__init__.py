"""taskmill's built-in task handlers: ``echo``, ``sleep``, ``fail`` and ``http.request``.

Registered through the ``taskmill`` entry-point group exactly as a third-party plugin is.
"""

from __future__ import annotations

from taskmill import HandlerSpec
from taskmill import hookimpl
from taskmill_handlers.echo import echo_handler
from taskmill_handlers.fail import fail_handler
from taskmill_handlers.http_request import http_request_handler
from taskmill_handlers.sleep import sleep_handler

__all__ = [
    "echo_handler",
    "fail_handler",
    "http_request_handler",
    "sleep_handler",
    "taskmill_handlers",
]


@hookimpl
def taskmill_handlers() -> list[HandlerSpec]:
    """Declare the built-in handlers.

    Returns:
        The :class:`~taskmill.HandlerSpec` of each built-in handler.
    """
    return [echo_handler, sleep_handler, fail_handler, http_request_handler]
