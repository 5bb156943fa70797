"""Every hook a taskmill plugin may implement.

Plugins are found through the ``taskmill`` entry-point group and write
``from taskmill import hookimpl``. Hooks are called with keyword arguments only; an
implementation may accept any subset of the arguments a spec lists.
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from typing import Any

import pluggy

if TYPE_CHECKING:  # pragma: no cover
    import click
    from flask import Flask

    from taskmill.models import Task
    from taskmill.runtime import Runtime

__all__ = ["hookspec", "hookimpl"]

hookspec = pluggy.HookspecMarker("taskmill")
hookimpl = pluggy.HookimplMarker("taskmill")


# --- discovery: called once at start-up, results merged by taskmill.registry ------------------


@hookspec
def taskmill_brokers() -> list[type]:
    """Declare broker classes.

    Called once when the registries are built. Return a list of :class:`taskmill.interfaces.Broker`
    subclasses; each names the URL schemes it serves in ``schemes``. Two plugins claiming the same
    scheme is a :class:`~taskmill.errors.PluginError`. Return ``None`` or ``[]`` for none.
    """


@hookspec
def taskmill_storages() -> list[type]:
    """Declare storage classes.

    Called once when the registries are built. Return a list of :class:`taskmill.interfaces.Storage`
    subclasses; each names the URL schemes it serves in ``schemes``.
    """


@hookspec
def taskmill_auth_backends() -> list[type]:
    """Declare credential checkers.

    Called once when the app is built. Return a list of :class:`taskmill.interfaces.AuthBackend`
    subclasses. Each is asked in turn (by ``priority``, highest first) to turn a request into a
    principal; the first principal wins.
    """


@hookspec
def taskmill_handlers() -> list[Any]:
    """Declare task handlers.

    Called once when the registries are built. Return a list of functions decorated with
    :func:`taskmill.handler` (or :class:`taskmill.handlers.HandlerSpec` objects). Two plugins
    declaring the same handler name is a :class:`~taskmill.errors.PluginError`.
    """


@hookspec
def taskmill_settings() -> list[Any]:
    """Declare a plugin's own settings (``TASKMILL_<PREFIX>_<NAME>``).

    Called once when the runtime is built, before any storage or broker exists. Return a list of
    :class:`taskmill.plugin_api.SettingsSpec` (each a name, a prefix and its
    :class:`~taskmill.plugin_api.Setting` fields), or ``None`` for none. Core parses and validates
    the values with the same errors as its own (a bad value or a ``TASKMILL_*`` name nobody
    declares is a :class:`~taskmill.errors.ConfigError` at start); the plugin reads them with
    ``runtime.plugin_settings(name)``.
    """


# --- extension: called while the app and the CLI are built -------------------------------------


@hookspec
def taskmill_app(app: Flask) -> None:
    """Extend the Flask app: register blueprints, hooks, extensions.

    Called once at the end of :func:`taskmill.app.create_app`, in every role. Return value ignored.
    """


@hookspec
def taskmill_cli(group: click.Group) -> None:
    """Add click commands to the ``taskmill`` command group.

    Called once when the CLI starts. Return value ignored.
    """


@hookspec
def taskmill_bootstrap(runtime: Any) -> list[str] | None:
    """Prepare a freshly migrated installation (for example, create a first admin API key).

    Called by ``taskmill run`` and ``taskmill db upgrade`` after migrations, in the CLI process.
    Return lines to print to the operator, or ``None``. Must be idempotent: it runs on every start.
    """


# --- events: observers, called for every lifecycle event; failures are logged, never raised -----


@hookspec
def taskmill_task_event(task: Task, event: str, runtime: Runtime) -> None:
    """Observe a lifecycle event of a task.

    Called by a manager, fed from the events journal: every change writes its journal row in its
    own transaction, and the manager's journal feed reads the rows after its cursor, loads their
    tasks in one query and calls this hook for each row, so an event survives the death of the
    process that made the change. Delivery is at least once (a manager that dies mid-batch leaves
    it to the next one): implementations must tolerate a repeat. ``task`` is the task as it is
    when the event is delivered (read from its row); ``runtime`` is the manager's
    :class:`~taskmill.runtime.Runtime` (its ``lifecycle`` may submit follow-up tasks, as webhook
    delivery does).

    ``event`` keeps the names this hook has always had; the journal's names map to them:
    ``task.submitted`` → ``submitted``, ``task.started`` → ``started``, ``task.progress`` →
    ``progress`` (new), ``task.retry_scheduled`` → ``retrying``, ``task.completed`` →
    ``completed``, ``task.failed`` → ``failed``, ``task.cancelled`` → ``cancelled``,
    ``task.requeued`` → ``requeued`` (which now also covers what was ``released``: a delayed or
    waiting task that became queued). ``cancel_requested`` is no longer sent: a cancel request is
    a flag, not a move; the move that follows (``cancelled``) is.

    Implementations may leave out ``runtime`` (or any argument) they do not need. An exception
    in an implementation is logged and does not affect the task or other plugins. Called for
    every event of every task, so an implementation must return at once when the event does not
    concern it. Return value ignored.
    """
