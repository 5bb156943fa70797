"""Domain records: plain dataclasses that every plugin and the API speak.

Storage plugins turn rows into these; nothing here knows about SQL or HTTP.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import uuid
from typing import Any

__all__ = [
    "TaskStatus",
    "Task",
    "NewTask",
    "Outcome",
    "WorkerInfo",
    "QueueInfo",
    "Principal",
    "Role",
    "ApiKey",
    "utcnow",
    "SameAs",
    "FINAL_STATES",
    "PENDING_STATES",
    "TaskQuery",
    "DeadLetterQuery",
    "Event",
    "EventQuery",
    "EVENT_NAMES",
]


def utcnow() -> dt.datetime:
    """The current time as an aware UTC datetime, truncated to milliseconds."""
    now = dt.datetime.now(dt.UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


@dataclasses.dataclass(frozen=True)
class SameAs:
    """In a storage write: set the column to the value of another column of the same row."""

    column: str


class TaskStatus(enum.StrEnum):
    """The states of a task (API.md)."""

    SCHEDULED = "scheduled"
    WAITING = "waiting"
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    def __str__(self) -> str:
        return self.value


FINAL_STATES = frozenset({TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED})
"""States a task never leaves except through an explicit retry."""

PENDING_STATES = frozenset({TaskStatus.SCHEDULED, TaskStatus.WAITING, TaskStatus.QUEUED})
"""States of a task that has not started its next attempt yet."""


class Role(enum.StrEnum):
    """Roles, each including the ones before it."""

    VIEWER = "viewer"
    SUBMITTER = "submitter"
    OPERATOR = "operator"
    ADMIN = "admin"

    @property
    def rank(self) -> int:
        return _ROLE_ORDER.index(self)

    def includes(self, other: Role | str) -> bool:
        """True when this role may do what ``other`` may."""
        return self.rank >= Role(other).rank


_ROLE_ORDER = [Role.VIEWER, Role.SUBMITTER, Role.OPERATOR, Role.ADMIN]


@dataclasses.dataclass(frozen=True)
class Principal:
    """Who is calling: a tenant and a role (from an API key, a JWT, or local development)."""

    subject: str
    tenant: str
    role: Role
    key_id: str | None = None

    @property
    def is_admin(self) -> bool:
        return self.role is Role.ADMIN


@dataclasses.dataclass
class Task:
    """A task as stored: the API's task resource plus a few internal fields."""

    id: uuid.UUID
    type: str
    queue: str = "default"
    priority: int = 5
    payload: dict[str, Any] = dataclasses.field(default_factory=dict)
    status: TaskStatus = TaskStatus.QUEUED
    tenant: str = "default"
    attempts: int = 0
    max_retries: int = 3
    timeout: int = 300
    retry_backoff: float = 1.0
    run_at: dt.datetime | None = None
    depends_on: list[str] = dataclasses.field(default_factory=list)
    idempotency_key: str | None = None
    callback_url: str | None = None
    tags: list[str] = dataclasses.field(default_factory=list)
    progress: float | None = None
    cancel_requested: bool = False
    result: Any = None
    error: dict[str, Any] | None = None
    worker: str | None = None
    created_at: dt.datetime | None = None
    started_at: dt.datetime | None = None
    finished_at: dt.datetime | None = None
    updated_at: dt.datetime | None = None
    # internal: attempts made before the last manual retry (the retry budget counts from here)
    budget_start: int = 0
    # internal: hash of the submitted body, to tell an idempotent repeat from a conflicting one
    request_hash: str | None = None
    queued_at: dt.datetime | None = None
    workflow_id: uuid.UUID | None = None

    @property
    def retries_left(self) -> int:
        """Retries still allowed if the current attempt fails (0: it goes to the dead letters).

        ``attempts`` counts the current attempt; ``budget_start`` is where the last manual retry
        reset the budget, so ``max_retries=2`` allows three attempts in all.
        """
        return max(0, self.max_retries - (self.attempts - self.budget_start - 1))

    @property
    def is_final(self) -> bool:
        return self.status in FINAL_STATES


@dataclasses.dataclass
class NewTask:
    """A validated submission, ready for the lifecycle to insert."""

    type: str
    payload: dict[str, Any]
    queue: str
    priority: int
    max_retries: int
    timeout: int
    retry_backoff: float
    tenant: str
    run_at: dt.datetime | None = None
    depends_on: list[uuid.UUID] = dataclasses.field(default_factory=list)
    idempotency_key: str | None = None
    callback_url: str | None = None
    tags: list[str] = dataclasses.field(default_factory=list)
    request_hash: str | None = None
    id: uuid.UUID | None = None
    """Set when the caller must know the id before the insert (a workflow's tasks); else assigned."""
    workflow_id: uuid.UUID | None = None


@dataclasses.dataclass(frozen=True)
class Outcome:
    """How one attempt ended, as a worker reports it to the lifecycle.

    ``kind`` is ``completed``, ``failed`` (an exception, a timeout, a lost process),
    ``retry`` (the handler raised :class:`taskmill.Retry`), ``cancelled`` (stopped on
    request) or ``requeue`` (handed back unstarted at shutdown; the attempt is not counted).
    """

    task_id: uuid.UUID
    kind: str
    result: Any = None
    error: dict[str, Any] | None = None
    retry_delay: float | None = None
    no_retry: bool = False
    duration: float | None = None


@dataclasses.dataclass
class WorkerInfo:
    """A live worker process, as it registers and heartbeats."""

    id: str
    host: str
    pid: int
    queues: list[str]
    concurrency: int = 1
    current_task: str | None = None
    started_at: dt.datetime | None = None
    last_heartbeat: dt.datetime | None = None
    processed: int = 0
    failed: int = 0


@dataclasses.dataclass
class QueueInfo:
    """A queue's pause flag and its depth per state."""

    name: str
    paused: bool = False
    depth: dict[str, int] = dataclasses.field(default_factory=dict)
    oldest_queued_age: float | None = None


@dataclasses.dataclass
class ApiKey:
    """An API key's stored record (never the secret itself)."""

    id: str
    name: str | None
    tenant: str
    role: Role
    key_hash: str
    prefix: str
    created_at: dt.datetime
    last_used_at: dt.datetime | None = None
    revoked_at: dt.datetime | None = None


@dataclasses.dataclass(frozen=True)
class TaskQuery:
    """A filtered page of tasks (newest first). ``None`` leaves a filter out."""

    tenant: str | None = None
    status: TaskStatus | str | None = None
    type: str | None = None
    queue: str | None = None
    tag: str | None = None
    created_after: dt.datetime | None = None
    created_before: dt.datetime | None = None
    workflow_id: uuid.UUID | None = None
    offset: int = 0
    limit: int = 50


@dataclasses.dataclass(frozen=True)
class DeadLetterQuery:
    """Failed tasks to requeue: by tenant, type, queue and when they failed."""

    tenant: str | None = None
    type: str | None = None
    queue: str | None = None
    failed_after: dt.datetime | None = None
    failed_before: dt.datetime | None = None
    limit: int = 1000


EVENT_NAMES = (
    "task.submitted",
    "task.started",
    "task.progress",
    "task.retry_scheduled",
    "task.completed",
    "task.failed",
    "task.cancelled",
    "task.requeued",
)
"""The journal's event names (API.md, Events)."""


@dataclasses.dataclass(frozen=True)
class Event:
    """One row of the events journal: a task changed (the task itself is read from its row)."""

    id: int
    at: dt.datetime
    tenant: str
    task_id: uuid.UUID
    workflow_id: uuid.UUID | None
    queue: str
    type: str
    event: str


@dataclasses.dataclass(frozen=True)
class EventQuery:
    """Filters of a journal read; each tuple matches any of its values (empty: no filter)."""

    tenant: str | None = None
    task_ids: tuple[uuid.UUID, ...] = ()
    workflow_ids: tuple[uuid.UUID, ...] = ()
    queues: tuple[str, ...] = ()
    types: tuple[str, ...] = ()
    events: tuple[str, ...] = ()
