"""The storage ports: one small protocol per resource.

``runtime.storage`` holds one object per resource — ``tasks``, ``queues``, ``workers``,
``events`` and ``settings`` (key/value) — each satisfying a protocol below. A storage plugin
implements them (``taskmill_sql`` has one module per store); a plugin that owns data of its own
(auth: API keys and the audit log) brings its own store and migrations.

Rules every implementation keeps:

- Each method is its own transaction unless stated otherwise, safe to call from many threads and
  processes at once.
- A database that cannot be reached raises :class:`~taskmill.errors.StorageUnavailable`, and then
  nothing was written.
- Only :class:`taskmill.lifecycle.Lifecycle` calls the task writes. Each is one conditional,
  set-based statement: it names the states a task may be in and touches only rows still in them,
  so two processes never both win a transition.
- Every task change writes its journal rows (:class:`EventStore`) in the same transaction.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterable
from collections.abc import Sequence
from typing import TYPE_CHECKING
from typing import Any
from typing import Protocol

if TYPE_CHECKING:  # pragma: no cover
    from taskmill.models import DeadLetterQuery
    from taskmill.models import Event
    from taskmill.models import EventQuery
    from taskmill.models import NewTask
    from taskmill.models import QueueInfo
    from taskmill.models import Task
    from taskmill.models import TaskQuery
    from taskmill.models import TaskStatus
    from taskmill.models import WorkerInfo

__all__ = ["TaskStore", "QueueStore", "WorkerStore", "EventStore", "SettingsStore"]


class TaskStore(Protocol):
    """Tasks: the hot table. Writes are for the lifecycle only."""

    # -- writes (lifecycle only) ---------------------------------------------------------------
    def insert(
        self,
        tasks: Sequence[NewTask],
        statuses: Sequence[TaskStatus],
        *,
        audit: dict[str, Any] | None = None,
    ) -> list[tuple[Task, bool]]:
        """Insert tasks (and their dependency edges) in one transaction, all or none; return
        ``(task, created)`` in input order. A task whose ``(tenant, idempotency_key)`` exists
        with the same ``request_hash`` is not inserted: the existing one is returned with
        ``created`` False. Journals ``task.submitted`` for each inserted task. ``audit``, given
        only when the storage says :attr:`~taskmill.interfaces.Storage.audits_with_tasks`, is an
        audit entry written in the same transaction.

        Raises:
            Conflict: a key reused with a different ``request_hash``; nothing was written.
            StorageUnavailable: nothing was written.
        """
        ...

    def transition(
        self,
        ids: Iterable[uuid.UUID],
        from_states: Iterable[TaskStatus],
        to_state: TaskStatus | None,
        values: dict[str, Any] | None = None,
        *,
        tenant: str | None = None,
    ) -> list[Task]:
        """Set ``status = to_state`` (and ``values``) on those of ``ids`` still in ``from_states``
        (of ``tenant`` when given). A value may be :class:`~taskmill.models.SameAs`.
        ``to_state=None`` keeps the status. Returns the rows written.

        Raises:
            StorageUnavailable: nothing was written.
        """
        ...

    def finish_many(self, rows: Sequence[dict[str, Any]], from_state: TaskStatus) -> list[Task]:
        """Per-task updates (``id`` plus the columns to set, ``status`` included) on those still
        in ``from_state`` and, for rows with a ``worker`` key, still held by that worker. One
        statement for the batch where the database allows. Returns the rows written.

        Raises:
            StorageError: a result that is not JSON; nothing was written.
            StorageUnavailable: nothing was written.
        """
        ...

    def claim(self, queues: Sequence[str], limit: int, worker_id: str, now: dt.datetime) -> list[Task]:
        """Move up to ``limit`` queued tasks of ``queues`` to running for ``worker_id``, highest
        priority first, FIFO within one, counting an attempt. Tasks of a paused queue are skipped
        in the same statement. Two callers never receive the same task.

        Raises:
            StorageUnavailable: nothing was written.
        """
        ...

    def start(self, ids: Sequence[uuid.UUID], worker_id: str, now: dt.datetime) -> list[Task]:
        """Move those of ``ids`` still queued, and not in a paused queue, to running for
        ``worker_id`` (a pushed delivery), counting an attempt. Returns those started.

        Raises:
            StorageUnavailable: nothing was written.
        """
        ...

    def set_progress(self, values: dict[uuid.UUID, float]) -> int:
        """Write the progress of many running tasks in one statement; returns rows written.

        Raises:
            StorageUnavailable: nothing was written.
        """
        ...

    def release_due(self, now: dt.datetime, limit: int) -> list[Task]:
        """Move scheduled tasks whose ``run_at`` has come to queued.

        Raises:
            StorageUnavailable: nothing was written.
        """
        ...

    def release_waiting(self, now: dt.datetime, limit: int) -> list[Task]:
        """Move waiting tasks whose dependencies all completed to queued (or scheduled while their
        ``run_at`` is ahead), in one statement.

        Raises:
            StorageUnavailable: nothing was written.
        """
        ...

    def delete_finished(self, before: dt.datetime, limit: int) -> int:
        """Delete up to ``limit`` final tasks that finished before ``before``; return how many.

        Raises:
            StorageUnavailable: nothing was deleted.
        """
        ...

    def delete(
        self, ids: Sequence[uuid.UUID], states: Sequence[TaskStatus], *, tenant: str | None = None
    ) -> int:
        """Delete those of ``ids`` (of ``tenant``, when given) still in one of ``states`` (final
        states only: a purge of dead letters), with their dependency rows; return how many.

        Raises:
            StorageUnavailable: nothing was deleted.
        """
        ...

    # -- reads ---------------------------------------------------------------------------------
    def get(self, task_id: uuid.UUID, *, tenant: str | None = None) -> Task | None:
        """One task, or None (also when it belongs to another tenant).

        Raises:
            StorageUnavailable: the database does not answer.
        """
        ...

    def get_many(self, ids: Sequence[uuid.UUID], *, tenant: str | None = None) -> list[Task]:
        """Those of ``ids`` that exist (in ``tenant`` when given), in no particular order.

        Raises:
            StorageUnavailable: the database does not answer.
        """
        ...

    def list(self, query: TaskQuery) -> tuple[list[Task], int]:
        """One page of tasks, newest first, and the total count.

        Raises:
            StorageUnavailable: the database does not answer.
        """
        ...

    def find_failed(self, query: DeadLetterQuery) -> list[uuid.UUID]:
        """Ids of failed tasks matching a dead-letter filter, oldest failure first.

        Raises:
            StorageUnavailable: the database does not answer.
        """
        ...

    def blocked_waiting(self, limit: int) -> list[Task]:
        """Waiting tasks with a dependency that ended failed or cancelled."""
        ...

    def running_of_workers(self, worker_ids: Sequence[str]) -> list[Task]:
        """Running tasks held by these workers."""
        ...

    def orphaned_running(self, older_than: dt.datetime) -> list[Task]:
        """Running tasks whose worker is not registered (started before ``older_than``)."""
        ...

    def stale_queued(self, older_than: dt.datetime, limit: int, *, queue: str | None = None) -> list[Task]:
        """Queued tasks queued before ``older_than`` (re-publish candidates), of one ``queue``
        or of all, highest priority first, oldest first within one."""
        ...

    def cancel_flags(self, ids: Sequence[uuid.UUID]) -> set[uuid.UUID]:
        """Those of ``ids`` whose cancellation was requested or that are no longer running."""
        ...

    def count_pending(self, tenant: str) -> int:
        """Tasks of ``tenant`` not in a final state."""
        ...


class QueueStore(Protocol):
    """Queue flags and statistics."""

    def set_paused(self, name: str, paused: bool) -> None:
        """Pause or resume a queue (creating its row). Once this returns, no claim or start of a
        task of a paused queue succeeds.

        Raises:
            StorageUnavailable: nothing was written.
        """
        ...

    def paused(self) -> set[str]:
        """Names of the paused queues.

        Raises:
            StorageUnavailable: the database does not answer.
        """
        ...

    def stats(self, tenant: str | None) -> list[QueueInfo]:
        """Every known queue with its depth per state (of ``tenant``, or all when None).

        Raises:
            StorageUnavailable: the database does not answer.
        """
        ...


class WorkerStore(Protocol):
    """Live worker processes: registration and heartbeats."""

    def register(self, info: WorkerInfo) -> None:
        """Insert a worker's row (its heartbeat starts now).

        Raises:
            StorageUnavailable: nothing was written.
        """
        ...

    def heartbeat(self, worker_id: str, values: dict[str, Any]) -> bool:
        """Refresh a worker's heartbeat (and counters in ``values``); False when its row is gone
        (it was declared dead and must re-register).

        Raises:
            StorageUnavailable: nothing was written.
        """
        ...

    def unregister(self, worker_id: str) -> None:
        """Delete a worker's row. Idempotent."""
        ...

    def list(self) -> list[WorkerInfo]:
        """Every registered worker, oldest first."""
        ...

    def dead(self, cutoff: dt.datetime) -> list[str]:
        """Ids of workers whose last heartbeat is older than ``cutoff``."""
        ...

    def remove(self, worker_ids: Sequence[str], cutoff: dt.datetime) -> list[str]:
        """Delete those of ``worker_ids`` still stale at ``cutoff`` (conditional); return them."""
        ...


class EventStore(Protocol):
    """The events journal: one row per task change, written in the change's transaction.

    Ids grow with every event. Consumers (webhook and hook delivery, the events stream) read
    ``id > cursor``; a named cursor is leased and advanced conditionally, so two managers never
    both deliver a batch.
    """

    def read(self, after_id: int, query: EventQuery | None = None, limit: int = 500) -> list[Event]:
        """Events with ``id > after_id`` matching ``query``, by id.

        Raises:
            StorageUnavailable: the database does not answer.
        """
        ...

    def last_id(self) -> int:
        """The newest event id (0 when the journal is empty)."""
        ...

    def oldest_id(self) -> int:
        """The oldest kept event id (0 when the journal is empty)."""
        ...

    def prune(self, before: dt.datetime, limit: int = 10_000) -> int:
        """Delete up to ``limit`` of the oldest events recorded before ``before``; return how many."""
        ...

    def get_cursor(self, name: str) -> int:
        """The position of consumer ``name`` (created at 0 when new)."""
        ...

    def lease_cursor(self, name: str, owner: str, seconds: float) -> int | None:
        """Take consumer ``name`` for ``owner`` for ``seconds`` unless another owner holds an
        unexpired lease; return its position, or None when someone else holds it."""
        ...

    def advance_cursor(self, name: str, from_id: int, to_id: int, owner: str | None = None) -> bool:
        """Move cursor ``name`` from ``from_id`` to ``to_id`` (releasing ``owner``'s lease) if it is
        still at ``from_id``; False when another consumer moved it first."""
        ...


class SettingsStore(Protocol):
    """Key/value pairs for installation secrets and leader-free bookkeeping."""

    def get(self, key: str) -> str | None:
        """The value of ``key``, or None."""
        ...

    def set(self, key: str, value: str) -> None:
        """Store ``value`` under ``key`` (replacing it)."""
        ...

    def get_or_create(self, key: str, value: str) -> str:
        """The stored value of ``key``, storing ``value`` first when absent (race-safe)."""
        ...
