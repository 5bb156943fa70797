"""taskmill: a distributed task queue with a REST API, roles, tenants and plugins."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError
from importlib.metadata import version

from taskmill.errors import Retry
from taskmill.errors import TaskmillError
from taskmill.handlers import HandlerContext
from taskmill.handlers import HandlerSpec
from taskmill.handlers import handler
from taskmill.hookspecs import hookimpl
from taskmill.models import Principal
from taskmill.models import Role
from taskmill.models import Task
from taskmill.models import TaskStatus

try:
    __version__ = version("taskmill")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0"

__all__ = [
    "hookimpl",
    "handler",
    "HandlerContext",
    "HandlerSpec",
    "Task",
    "TaskStatus",
    "Principal",
    "Role",
    "Retry",
    "TaskmillError",
    "create_app",
    "__version__",
]


def create_app(*args, **kwargs):  # type: ignore[no-untyped-def]
    """Build the Flask app (see :func:`taskmill.app.create_app`)."""
    from taskmill.app import create_app as _create_app

    return _create_app(*args, **kwargs)
