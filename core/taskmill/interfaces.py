"""The contracts plugins implement: Storage, Broker and AuthBackend.

Only :mod:`taskmill.lifecycle` calls the Storage methods that write task state; everything
else goes through the lifecycle. Every write method is a conditional, set-based statement:
it names the states a task may be in, and touches only rows still in them, so two processes
never both win a transition.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterable
from collections.abc import Sequence
from typing import TYPE_CHECKING
from typing import Any
from typing import ClassVar

if TYPE_CHECKING:  # pragma: no cover
    from flask import Request

    from taskmill.config import Settings
    from taskmill.models import ApiKey
    from taskmill.models import NewTask
    from taskmill.models import Principal
    from taskmill.models import QueueInfo
    from taskmill.models import Task
    from taskmill.models import TaskStatus
    from taskmill.models import WorkerInfo
    from taskmill.worker import WorkerOptions

__all__ = ["Storage", "Broker", "AuthBackend"]


class Storage:
    """Where tasks, queues, workers and keys live. The source of truth.

    Implementations must be safe to use from several threads and processes at once (each
    method is its own transaction unless stated otherwise), and must raise
    :class:`~taskmill.errors.StorageUnavailable` when the database cannot be reached.
    """

    schemes: ClassVar[tuple[str, ...]] = ()

    def __init__(self, url: str, settings: Settings) -> None:
        self.url = url
        self.settings = settings

    # -- set-up ---------------------------------------------------------------------------------
    def upgrade(self) -> None:
        """Create or migrate the schema to the newest version. Idempotent."""
        raise NotImplementedError

    def check(self) -> None:
        """Raise StorageUnavailable unless the database answers a trivial query."""
        raise NotImplementedError

    def close(self) -> None:
        """Release connections. Idempotent."""

    def after_fork(self) -> None:
        """Called in a child process after fork: drop inherited connections."""

    # -- tasks: writes (lifecycle only) ------------------------------------------------------------
    def insert_tasks(
        self, tasks: Sequence[NewTask], statuses: Sequence[TaskStatus]
    ) -> list[tuple[Task, bool]]:
        """Insert tasks in one transaction, all or none; return ``(task, created)`` in order.

        A task whose ``(tenant, idempotency_key)`` already exists with the same ``request_hash``
        is not inserted; the existing task is returned in its place with ``created`` False.

        Raises:
            Conflict: an existing key with a different ``request_hash``; nothing was written.
            StorageUnavailable: the database is unreachable; nothing was written.
        """
        raise NotImplementedError

    def transition(
        self,
        ids: Iterable[uuid.UUID],
        from_states: Iterable[TaskStatus],
        to_state: TaskStatus | None,
        values: dict[str, Any] | None = None,
        *,
        tenant: str | None = None,
    ) -> list[Task]:
        """Set ``status = to_state`` (and ``values``) on those of ``ids`` still in ``from_states``.

        A value may be :class:`~taskmill.models.SameAs` to copy another column of the same row.
        ``to_state=None`` keeps the status and writes only ``values``. Returns the rows written.
        """
        raise NotImplementedError

    def finish_many(self, rows: Sequence[dict[str, Any]], from_state: TaskStatus) -> list[Task]:
        """Apply per-task updates (each dict has ``id`` and the columns to set, ``status`` included)
        to those tasks still in ``from_state`` and, for a ``worker`` key, still held by that worker.
        One statement for all rows where the database allows. Returns the rows written."""
        raise NotImplementedError

    def claim(self, queues: Sequence[str], limit: int, worker_id: str, now: dt.datetime) -> list[Task]:
        """Move up to ``limit`` queued tasks of ``queues`` (skipping paused queues) to running,
        highest priority first and FIFO within a priority, counting an attempt and recording the
        worker. Two callers never receive the same task."""
        raise NotImplementedError

    def start(self, ids: Sequence[uuid.UUID], worker_id: str, now: dt.datetime) -> list[Task]:
        """Move these queued tasks to running for ``worker_id`` (a pushed delivery, e.g. RQ),
        counting an attempt. Returns those that were still queued."""
        raise NotImplementedError

    def release_due(self, now: dt.datetime, limit: int) -> list[Task]:
        """Move scheduled tasks whose ``run_at`` has come to queued (dependencies satisfied)."""
        raise NotImplementedError

    def release_waiting(self, now: dt.datetime, limit: int) -> list[Task]:
        """Move waiting tasks whose dependencies all completed to queued (or scheduled if their
        ``run_at`` is still ahead)."""
        raise NotImplementedError

    def blocked_waiting(self, limit: int) -> list[Task]:
        """Waiting tasks with a dependency that ended failed or cancelled."""
        raise NotImplementedError

    def running_of_workers(self, worker_ids: Sequence[str]) -> list[Task]:
        """Running tasks held by these workers."""
        raise NotImplementedError

    def orphaned_running(self, older_than: dt.datetime) -> list[Task]:
        """Running tasks whose worker is not registered at all (started before ``older_than``)."""
        raise NotImplementedError

    def stale_queued(self, older_than: dt.datetime, limit: int) -> list[Task]:
        """Queued tasks queued before ``older_than`` (re-publish candidates)."""
        raise NotImplementedError

    def delete_finished(self, before: dt.datetime, limit: int) -> int:
        """Delete final tasks that finished before ``before``; return how many."""
        raise NotImplementedError

    # -- tasks: reads -----------------------------------------------------------------------------
    def get_task(self, task_id: uuid.UUID, *, tenant: str | None = None) -> Task | None:
        """One task, or None (also when it belongs to another tenant)."""
        raise NotImplementedError

    def get_tasks(self, ids: Sequence[uuid.UUID], *, tenant: str | None = None) -> list[Task]:
        """Several tasks (those that exist), in no particular order."""
        raise NotImplementedError

    def list_tasks(self, filters: dict[str, Any], *, offset: int, limit: int) -> tuple[list[Task], int]:
        """Newest first, filtered; returns one page and the total count."""
        raise NotImplementedError

    def find_failed(self, filters: dict[str, Any], limit: int) -> list[uuid.UUID]:
        """Ids of failed tasks matching a dead-letter filter (type, queue, failed_after/before)."""
        raise NotImplementedError

    def cancel_flags(self, ids: Sequence[uuid.UUID]) -> set[uuid.UUID]:
        """Those of ``ids`` whose cancellation was requested (or that are no longer running)."""
        raise NotImplementedError

    def count_pending(self, tenant: str) -> int:
        """Tasks of a tenant that have not reached a final state."""
        raise NotImplementedError

    # -- queues -----------------------------------------------------------------------------------
    def set_queue_paused(self, name: str, paused: bool) -> None:
        raise NotImplementedError

    def paused_queues(self) -> set[str]:
        raise NotImplementedError

    def queue_stats(self, tenant: str | None) -> list[QueueInfo]:
        """Every known queue with depth per state (of ``tenant``, or all when None)."""
        raise NotImplementedError

    # -- workers ----------------------------------------------------------------------------------
    def register_worker(self, info: WorkerInfo) -> None:
        raise NotImplementedError

    def heartbeat(self, worker_id: str, values: dict[str, Any]) -> bool:
        """Refresh a worker's heartbeat; False if the row is gone (it was declared dead)."""
        raise NotImplementedError

    def unregister_worker(self, worker_id: str) -> None:
        raise NotImplementedError

    def list_workers(self) -> list[WorkerInfo]:
        raise NotImplementedError

    def dead_workers(self, cutoff: dt.datetime) -> list[str]:
        """Ids of workers whose last heartbeat is older than ``cutoff``."""
        raise NotImplementedError

    def remove_workers(self, worker_ids: Sequence[str], cutoff: dt.datetime) -> list[str]:
        """Delete those workers that are still stale (conditional); return the ids deleted."""
        raise NotImplementedError

    # -- key/value for installation secrets and leader-free bookkeeping ---------------------------
    def get_or_create_setting(self, key: str, value: str) -> str:
        """Return the stored value of ``key``, storing ``value`` first if absent (race-safe)."""
        raise NotImplementedError

    # -- API keys and audit (auth plugin) ---------------------------------------------------------
    def create_api_key(self, key: ApiKey) -> None:
        raise NotImplementedError

    def find_api_key(self, prefix: str) -> ApiKey | None:
        raise NotImplementedError

    def list_api_keys(self) -> list[ApiKey]:
        raise NotImplementedError

    def revoke_api_key(self, key_id: str) -> bool:
        raise NotImplementedError

    def touch_api_key(self, key_id: str, when: dt.datetime) -> None:
        raise NotImplementedError

    def count_api_keys(self) -> int:
        raise NotImplementedError

    def add_audit(self, entry: dict[str, Any]) -> None:
        raise NotImplementedError

    def list_audit(self, *, offset: int, limit: int, tenant: str | None) -> tuple[list[dict], int]:
        raise NotImplementedError


class Broker:
    """Carries task ids from the database to workers. Never writes task state itself.

    A broker is built with the URL and settings and the app's :class:`taskmill.app.Runtime`
    (storage, registries, plugin host), which it uses to reach core's lifecycle and execution.
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

    def run_worker(self, options: WorkerOptions) -> None:
        """Run a worker until it is told to stop (SIGTERM/SIGINT): take tasks from the broker and
        run them through core's execution. Blocks."""
        raise NotImplementedError

    def check(self) -> None:
        """Raise BrokerUnavailable unless the broker answers."""

    def republish_lost(self, tasks: Sequence[Task]) -> int:
        """Given queued tasks older than the re-publish delay, publish those the broker no
        longer holds. Returns how many were published. Durable brokers return 0."""
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
