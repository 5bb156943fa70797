"""The contracts plugins implement: Storage, Broker and AuthBackend.

Only :mod:`taskmill.lifecycle` calls the Storage methods that write task state; everything
else goes through the lifecycle. Every write method is a conditional, set-based statement:
it names the states a task may be in, and touches only rows still in them, so two processes
never both win a transition.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING
from typing import Any
from typing import ClassVar

if TYPE_CHECKING:  # pragma: no cover
    from flask import Request

    from taskmill.config import Settings
    from taskmill.models import Principal
    from taskmill.models import Task
    from taskmill.stores import EventStore
    from taskmill.stores import QueueStore
    from taskmill.stores import SettingsStore
    from taskmill.stores import TaskStore
    from taskmill.stores import WorkerStore
    from taskmill.worker.options import WorkerOptions
    from taskmill.worker.transport import Consumer

__all__ = ["Storage", "Broker", "AuthBackend"]


class Storage:
    """Where tasks, queues, workers and settings live: the source of truth.

    A storage is one object per process (built from the database URL's scheme) holding one store
    per resource, each a protocol of :mod:`taskmill.stores`: ``tasks``, ``queues``, ``workers``,
    ``events`` (the journal) and ``settings`` (key/value). Every store method is its own
    transaction unless stated otherwise, is safe from many threads and processes at once, and
    raises :class:`~taskmill.errors.StorageUnavailable` when the database cannot be reached.

    A plugin that owns data brings its own stores and attaches them (:meth:`attach`: the auth
    plugin's ``keys`` and ``audit``). Core writes its audit entries through :meth:`add_audit`,
    which does nothing when no plugin brought an audit store.
    """

    schemes: ClassVar[tuple[str, ...]] = ()

    tasks: TaskStore
    queues: QueueStore
    workers: WorkerStore
    events: EventStore
    settings: SettingsStore

    def __init__(self, url: str, settings: Settings) -> None:
        self.url = url
        #: the process's configuration (``settings`` is the key/value store)
        self.config = settings

    # -- set-up ---------------------------------------------------------------------------------
    def upgrade(self) -> None:
        """Create or migrate the schema to the newest version. Idempotent.

        Raises:
            StorageUnavailable: the database is unreachable.
        """
        raise NotImplementedError

    def revision(self) -> str:
        """The schema version the database is at (``taskmill db current``)."""
        raise NotImplementedError

    def downgrade(self, revision: str) -> None:
        """Undo migrations down to ``revision`` (``taskmill db downgrade``); newer data is lost.

        Raises:
            StorageUnavailable: the database is unreachable.
        """
        raise NotImplementedError

    def check(self) -> None:
        """Raise StorageUnavailable unless the database answers a trivial query."""
        raise NotImplementedError

    def close(self) -> None:
        """Release connections. Idempotent."""

    def after_fork(self) -> None:
        """Called in a child process after fork: drop inherited connections."""

    # -- stores that other plugins bring (auth: ``keys`` and ``audit``) -------------------------
    def attach(self, name: str, store: Any) -> None:
        """Make a plugin's store reachable as ``storage.<name>`` (idempotent)."""
        self.__dict__[name] = store

    def add_audit(self, entry: dict[str, Any]) -> None:
        """Append to the audit log when a plugin brought one (the auth plugin); else nothing."""
        store = self.__dict__.get("audit")
        if store is not None:
            store.add(entry)

    @property
    def audits_with_tasks(self) -> bool:
        """True when ``tasks.insert(…, audit=entry)`` writes an audit entry in the tasks' own
        transaction (a submission and its entry commit together); else core calls
        :meth:`add_audit` after the insert."""
        return False


class Broker:
    """A transport: carries task ids from the database to workers. Never writes task state.

    A broker is built with the URL, the settings and the process's runtime (storage, lifecycle,
    registries). It publishes task ids after their commit and gives each worker a
    :class:`~taskmill.worker.transport.Consumer` (``receive``, ``ack``, ``requeue``, a wake-up
    descriptor); core's loop (:mod:`taskmill.worker.loop`) starts each delivered task through the
    lifecycle, runs it in its pool and records the outcome. A broker that must keep its own loop
    (RQ) overrides :meth:`run_worker` and plugs core's duty units into it.
    """

    schemes: ClassVar[tuple[str, ...]] = ()
    #: True when the database itself is the broker, so nothing can be lost between them.
    durable: ClassVar[bool] = False

    def __init__(self, url: str, settings: Settings, runtime: Any) -> None:
        self.url = url
        self.settings = settings
        self.runtime = runtime

    def publish(self, tasks: Sequence[Task]) -> None:
        """Make queued tasks available to workers. Called after their commit.

        Raises:
            BrokerUnavailable: the broker is unreachable; the tasks stay queued in the database
                and the manager re-publishes them.
        """
        raise NotImplementedError

    def consumer(self, queues: Sequence[str], worker_id: str, prefetch: int) -> Consumer:
        """A source of deliveries for one worker on ``queues`` (highest priority first, FIFO
        within a priority). ``prefetch`` is the worker's prefetch setting (-1: adaptive)."""
        raise NotImplementedError

    def run_worker(self, options: WorkerOptions) -> None:
        """Run a worker until it is told to stop (SIGTERM/SIGINT). Blocks.

        The default is core's loop over :meth:`consumer` (the loop module is imported here, at
        call time, so this module imports no role module)."""
        from taskmill.worker.loop import run_worker

        run_worker(self.runtime, options, self.consumer(options.queues, options.worker_id, options.prefetch))

    def check(self) -> None:
        """Raise BrokerUnavailable unless the broker answers."""

    def republish_lost(self, tasks: Sequence[Task]) -> int:
        """Given queued tasks (the manager passes those older than the re-publish delay; a
        resumed queue passes all of its queued tasks), publish those the broker no longer holds.
        Returns how many were published. Durable brokers return 0."""
        return 0

    def queue_resumed(self, name: str) -> int:
        """A paused queue was resumed: publish again its queued tasks the broker dropped while it
        was paused (workers drop deliveries of a paused queue). Returns how many."""
        return 0

    def request_cancel(self, task: Task) -> None:
        """Ask the broker to stop a running task now (if it can); cooperative cancellation
        through the database happens anyway."""

    def backlog(self) -> dict[str, int]:
        """Messages waiting in the broker per queue (empty when the database is the broker)."""
        return {}

    def close(self) -> None:
        """Release connections. Idempotent."""


class AuthBackend:
    """Turns a request's credential into a :class:`~taskmill.models.Principal`.

    ``authenticate`` returns ``None`` when the request carries no credential this backend
    understands, a Principal when it does and it is valid, and raises
    :class:`~taskmill.errors.AuthError` when it understands the credential and it is invalid.
    """

    name: ClassVar[str] = ""
    priority: ClassVar[int] = 0

    def __init__(self, settings: Settings, runtime: Any) -> None:
        self.settings = settings
        self.runtime = runtime

    def authenticate(self, request: Request) -> Principal | None:
        raise NotImplementedError
