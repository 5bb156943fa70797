"""The dashboard's read model: typed filters, keyset pages and the insights store protocol.

The dashboard (and anything else that shows the queue to people) asks ``storage.insights`` for
bounded, indexed reads that stay fast at a million tasks (PgQueuer keeps such reads in an
"insights" port of its own). A storage plugin implements :class:`InsightsStore`; the SQL plugin's
is ``taskmill_sql.insights``.

Every read is either bounded by an index range and a LIMIT, or bounded by what is *unfinished*
(pending, running and dead-lettered tasks), never by the whole tasks table: lists are keyset
pages on ``(created_at, seq)`` with no total count; a payload search looks at the newest
:data:`SEARCH_WINDOW` tasks that match the other filters; the overview counts unfinished states
and buckets per minute only what was created or finished since a given time.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import json
import uuid
from typing import Any
from typing import Protocol

from taskmill.models import Task

__all__ = [
    "InsightsStore",
    "TaskFilter",
    "Page",
    "SEARCH_WINDOW",
    "LIVE_STATES",
    "encode_cursor",
    "decode_cursor",
    "parse_payload_query",
]

SEARCH_WINDOW = 100_000
"""Tasks a payload search examines at most (the newest that match the other filters)."""

LIVE_STATES = ("scheduled", "waiting", "queued", "running", "failed")
"""States counted exactly on the overview: unfinished ones, and the dead letters."""


@dataclasses.dataclass(frozen=True)
class TaskFilter:
    """The filters of the task list (all optional; ``tenant`` None means every tenant)."""

    tenant: str | None = None
    status: str | None = None
    type: str | None = None
    queue: str | None = None
    tag: str | None = None
    workflow: str | None = None
    created_after: dt.datetime | None = None
    created_before: dt.datetime | None = None
    payload: str | None = None  # "key=value", "a.b=value", or free text


@dataclasses.dataclass
class Page:
    """One keyset page: the tasks, the cursor of the next page (None: last page), and whether the
    search window was used up (a payload search that may have more matches further back)."""

    items: list[Task]
    next_cursor: str | None
    window_exhausted: bool = False


def encode_cursor(created_at: dt.datetime, seq: int) -> str:
    raw = json.dumps([created_at.isoformat(), seq], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(value: str | None) -> tuple[dt.datetime, int] | None:
    """The position a cursor names, or None for a missing or malformed one (first page)."""
    if not value:
        return None
    try:
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
        at, seq = json.loads(raw)
        when = dt.datetime.fromisoformat(at)
        if when.tzinfo is None:
            when = when.replace(tzinfo=dt.UTC)
        return when, int(seq)
    except (ValueError, TypeError):
        return None


def parse_payload_query(text: str) -> tuple[list[str], Any] | str:
    """``"a.b=value"`` → (``["a", "b"]``, value parsed as JSON when it is JSON, else the string);
    anything without ``=`` → the free text itself."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        return text.strip()
    raw = raw.strip()
    try:
        value: Any = json.loads(raw)
        if isinstance(value, dict | list):
            value = raw
    except ValueError:
        value = raw
    return [part for part in key.split(".") if part], value


class InsightsStore(Protocol):
    """Bounded reads for people watching the queue (the dashboard). Each raises
    :class:`~taskmill.errors.StorageUnavailable` when the database cannot be reached."""

    @property
    def has_workflows(self) -> bool: ...

    def live_counts(self) -> list[tuple[str, str, str, int, dt.datetime | None]]:
        """``(tenant, queue, status, count, oldest queued_at)`` of unfinished and failed tasks."""
        ...

    def known_queues(self) -> dict[str, bool]:
        """Every queue that has a row of its own, and whether it is paused."""
        ...

    def submitted_per_minute(
        self, since: dt.datetime, before: dt.datetime | None = None
    ) -> list[tuple[str, str, int, int]]:
        """``(tenant, queue, minute, count)`` of tasks created in ``[since, before)``."""
        ...

    def finished_per_minute(
        self, since: dt.datetime, before: dt.datetime | None = None
    ) -> list[tuple[str, str, str, int, int]]:
        """``(tenant, queue, status, minute, count)`` of tasks finished in ``[since, before)``."""
        ...

    def tasks_page(self, f: TaskFilter, *, cursor: str | None, limit: int) -> Page:
        """One keyset page of tasks, newest first."""
        ...

    def dead_letter_groups(self, tenant: str | None, **filters: Any) -> list[tuple[str, int]]:
        """Failed tasks counted by error type."""
        ...

    def dead_letters(self, tenant: str | None, **filters: Any) -> Page:
        """One keyset page of failed tasks."""
        ...

    def failed_ids(self, tenant: str | None, **filters: Any) -> list[uuid.UUID]:
        """Ids of the failed tasks matching the filters (requeue-all)."""
        ...

    def count_failed(self, tenant: str | None, **filters: Any) -> int:
        """How many failed tasks match (the requeue confirmation)."""
        ...

    def dependents(self, task_id: uuid.UUID, tenant: str | None, limit: int = 100) -> list[Task]:
        """Tasks that depend on ``task_id``."""
        ...

    def deliveries(self, task: Task, limit: int = 20) -> list[Task]:
        """The webhook delivery tasks of a task."""
        ...
