"""Schedules: periodic tasks, per tenant, fired exactly once per due time.

A schedule is a cron expression (five fields, read in an IANA time zone) or an interval in
seconds, plus the fields of the task it submits. ``next_run_at`` is the next due time; when it
comes, one manager submits the task and advances ``next_run_at``:

- **Exactly once.** The task carries the idempotency key ``schedule:<name>:<due time>``, so two
  managers firing the same due time insert one task (the second submission finds the first), and
  the advance is conditional (``WHERE next_run_at = <due time>``), so only one of them moves the
  schedule on. A manager that dies between the two leaves a due schedule whose submission is a
  no-op for the next manager, which then advances it: no run is lost and none is doubled.
- **No replay storm.** After downtime the overdue schedule fires once (for the due time it
  missed) and its next due time is the first one after *now*, not after the missed one.
- **Wall-clock cron across DST.** A cron due time is a local wall-clock time. When clocks spring
  forward, a time that does not exist runs at the first instant after the gap (croniter moves
  02:30 to 03:00); when they fall back, a wall-clock time that happens twice runs once, at its
  first occurrence (croniter yields it twice; the repeat, ``fold=1``, is skipped here). Interval
  schedules count elapsed seconds and ignore the time zone.

The timing (who looks at ``next_run_at`` and when) is the broker's business (:class:`Timer`): on
the SQL and RabbitMQ brokers the manager's tick does it (:class:`ManagerTimer`); the Redis broker
times ticks with rq-scheduler (``taskmill_redis.scheduler``). The database decides in both cases.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import logging
import re
import uuid
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING
from typing import Any
from typing import Protocol
from zoneinfo import ZoneInfo
from zoneinfo import ZoneInfoNotFoundError
from zoneinfo import available_timezones

from croniter import croniter

from taskmill.errors import Conflict
from taskmill.errors import NotFound
from taskmill.errors import TaskmillError
from taskmill.errors import ValidationError
from taskmill.models import Task
from taskmill.models import utcnow

if TYPE_CHECKING:  # pragma: no cover
    from taskmill.runtime import Runtime

__all__ = [
    "Schedule",
    "ScheduleNotFound",
    "TASK_FIELDS",
    "Clock",
    "parse_timezone",
    "validate_cron",
    "CRON_PATTERN",
    "time_zones",
    "next_due",
    "first_due_after",
    "schedule_tag",
    "idempotency_key",
    "ScheduleService",
    "Timer",
    "ManagerTimer",
    "timer_for",
]

logger = logging.getLogger("taskmill.schedules")

TASK_FIELDS = ("type", "payload", "queue", "priority", "max_retries", "timeout", "tags")
"""The task fields a schedule carries (API.md)."""


def _cron_field(number: str) -> str:
    atom = rf"(?:\*|{number}(?:-{number})?)(?:/[1-9][0-9]?)?"
    return rf"{atom}(?:,{atom})*"


CRON_PATTERN = (
    "^"
    + " ".join(
        _cron_field(n)
        for n in (
            r"[1-5]?[0-9]",
            r"(?:1?[0-9]|2[0-3])",
            r"(?:[1-9]|[12][0-9]|3[01])",
            r"(?:[1-9]|1[0-2])",
            r"[0-7]",
        )
    )
    + "$"
)
"""The cron expressions accepted: five fields separated by single spaces (minute 0-59, hour 0-23,
day of month 1-31, month 1-12, day of week 0-7), each a list of ``*`` or a number or a range, with
an optional step ``/1``..``/99``; numbers only (no ``MON``/``JAN`` names, no ``@daily``). The
OpenAPI document states it, so a client knows exactly what is refused."""

_CRON_RE = re.compile(CRON_PATTERN)

MAX_CRON_SEARCH = 2000
"""Candidates croniter may yield while skipping repeated wall-clock times before we give up."""

Clock = Callable[[], dt.datetime]
"""Something that tells the time (aware UTC). Tests pass a controllable one."""


class ScheduleNotFound(NotFound):
    """No schedule of that name in the caller's tenant."""


@dataclasses.dataclass
class Schedule:
    """A periodic task of one tenant."""

    id: uuid.UUID
    tenant: str
    name: str
    task: dict[str, Any]
    cron: str | None = None
    interval: int | None = None
    timezone: str = "UTC"
    paused: bool = False
    next_run_at: dt.datetime | None = None
    last_run_at: dt.datetime | None = None
    """The due time of the last run."""
    last_task_id: uuid.UUID | None = None
    created_at: dt.datetime | None = None
    updated_at: dt.datetime | None = None


# ---- times -------------------------------------------------------------------------------------


def parse_timezone(name: str) -> ZoneInfo:
    """The IANA zone of ``name``.

    Raises:
        ValueError: not a zone name this machine knows.
    """
    if not isinstance(name, str) or name not in time_zones():
        raise ValueError(f"unknown time zone {name!r}")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ValueError(f"unknown time zone {name!r}") from None


@functools.cache
def time_zones() -> frozenset[str]:
    """The IANA zone names this machine knows (``zoneinfo.available_timezones()``)."""
    return frozenset(available_timezones())


def validate_cron(expr: str) -> None:
    """Accept only a five-field cron expression that croniter reads and that ever fires.

    Raises:
        ValueError: with a message naming what is wrong.
    """
    if not isinstance(expr, str) or len(expr.split()) != 5:
        raise ValueError("a cron expression has five fields: minute hour day-of-month month day-of-week")
    if not _CRON_RE.match(expr):
        raise ValueError(
            f"not a cron expression taskmill reads: {expr!r} (numbers, '*', ranges, lists and steps, "
            "fields separated by single spaces)"
        )
    if not croniter.is_valid(expr):
        raise ValueError(f"not a valid cron expression: {expr!r}")
    try:
        croniter(expr, dt.datetime(2026, 1, 1, tzinfo=dt.UTC)).get_next(dt.datetime)
    except Exception:  # noqa: BLE001 - croniter raises several types for a date that never comes
        raise ValueError(f"cron expression {expr!r} never fires") from None


def _is_repeat(local: dt.datetime) -> bool:
    """True for the second occurrence of an ambiguous wall-clock time (clocks fell back)."""
    return local.fold == 1 and local.replace(fold=0).utcoffset() != local.utcoffset()


def _cron_after(expr: str, zone: ZoneInfo, after: dt.datetime) -> dt.datetime:
    it = croniter(expr, after.astimezone(zone))
    for _ in range(MAX_CRON_SEARCH):
        candidate = it.get_next(dt.datetime)
        if _is_repeat(candidate):
            continue
        at = candidate.astimezone(dt.UTC)
        if at > after:
            return at
    raise ValueError(f"cron expression {expr!r} has no due time after {after.isoformat()}")


def next_due(
    *, cron: str | None, interval: int | None, timezone: str, after: dt.datetime, anchor: dt.datetime
) -> dt.datetime:
    """The first due time strictly after ``after`` (aware UTC).

    Args:
        cron: five-field expression, read in ``timezone`` (exclusive with ``interval``).
        interval: seconds between runs, counted from ``anchor`` (the last due time, or creation).
        timezone: IANA zone of the cron expression.
        after: the instant the due time must follow.
        anchor: the phase of an interval schedule.
    """
    after = after.astimezone(dt.UTC)
    if cron is not None:
        return _cron_after(cron, parse_timezone(timezone), after)
    if not interval or interval <= 0:
        raise ValueError("a schedule needs a cron expression or a positive interval")
    anchor = anchor.astimezone(dt.UTC)
    if anchor > after:
        return anchor
    steps = int((after - anchor).total_seconds() // interval) + 1
    due = anchor + dt.timedelta(seconds=steps * interval)
    while due <= after:  # float rounding on very long spans
        due += dt.timedelta(seconds=interval)
    return due


def first_due_after(schedule: Schedule, after: dt.datetime) -> dt.datetime:
    """The schedule's first due time strictly after ``after``."""
    anchor = schedule.next_run_at
    if anchor is None:
        anchor = (schedule.created_at or after) + dt.timedelta(seconds=schedule.interval or 0)
    return next_due(
        cron=schedule.cron,
        interval=schedule.interval,
        timezone=schedule.timezone,
        after=after,
        anchor=anchor,
    )


def _iso(at: dt.datetime) -> str:
    at = at.astimezone(dt.UTC)
    return at.strftime("%Y-%m-%dT%H:%M:%S.") + f"{at.microsecond // 1000:03d}Z"


def schedule_tag(name: str) -> str:
    """The tag every task of a schedule carries."""
    return f"schedule:{name}"


def idempotency_key(name: str, due: dt.datetime) -> str:
    """The key that makes one due time of one schedule one task."""
    return f"schedule:{name}:{_iso(due)}"


# ---- the service ---------------------------------------------------------------------------------


class ScheduleService:
    """Create, pause, resume and fire schedules. The store is ``runtime.storage.schedules``."""

    def __init__(self, runtime: Runtime, clock: Clock = utcnow) -> None:
        self.rt = runtime
        self.clock = clock

    @property
    def store(self) -> Any:
        return self.rt.storage.schedules

    def _timer(self) -> Timer:
        return timer_for(self.rt)

    def build(self, data: dict[str, Any], tenant: str) -> Schedule:
        """A new schedule from a validated request body (not stored).

        Raises:
            ValidationError: a bad cron, time zone or interval, or a task the lifecycle refuses.
        """
        cron = data.get("cron")
        interval = data.get("interval")
        if (cron is None) == (interval is None):
            field = "interval" if cron is not None else "cron"
            raise ValidationError(
                "give exactly one of cron or interval", {field: ["give exactly one of cron or interval"]}
            )
        timezone = data.get("timezone") or "UTC"
        try:
            parse_timezone(timezone)
        except ValueError as exc:
            raise ValidationError(str(exc), {"timezone": [str(exc)]}) from None
        if cron is not None:
            try:
                validate_cron(cron)
            except ValueError as exc:
                raise ValidationError(str(exc), {"cron": [str(exc)]}) from None
        elif not isinstance(interval, int) or isinstance(interval, bool) or interval < 1:
            raise ValidationError("interval must be at least 1 second", {"interval": ["must be ≥ 1"]})
        task = {k: data[k] for k in TASK_FIELDS if data.get(k) is not None}
        # the lifecycle's own checks (known type, payload schema) run now, so a bad schedule
        # is a 422 at creation rather than a failure at every due time
        self.rt.lifecycle.build(self._task_body(data["name"], task, None), tenant)
        now = self.clock()
        schedule = Schedule(
            id=uuid.uuid4(),
            tenant=tenant,
            name=data["name"],
            task=task,
            cron=cron,
            interval=interval,
            timezone=timezone,
            created_at=now,
            updated_at=now,
        )
        schedule.next_run_at = first_due_after(schedule, now)
        return schedule

    def create(self, data: dict[str, Any], tenant: str) -> Schedule:
        """Store a new schedule; its first run is the first due time after now.

        Raises:
            ValidationError: see :meth:`build`.
            Conflict: the name is taken in the tenant.
        """
        schedule = self.build(data, tenant)
        self.store.create(schedule)
        self._timer().arm_schedules([schedule])
        return schedule

    def get(self, name: str, tenant: str | None) -> Schedule:
        schedule = self.store.get(name, tenant=tenant)
        if schedule is None:
            raise ScheduleNotFound(f"schedule {name!r} not found")
        return schedule

    def delete(self, name: str, tenant: str | None) -> Schedule:
        schedule = self.get(name, tenant)
        if not self.store.delete(schedule.id):
            raise ScheduleNotFound(f"schedule {name!r} not found")
        return schedule

    def pause(self, name: str, tenant: str | None) -> Schedule:
        schedule = self.get(name, tenant)
        return self.store.set_paused(schedule.id, True, schedule.next_run_at) or schedule

    def resume(self, name: str, tenant: str | None) -> Schedule:
        """Resume a paused schedule: its next run is the first due time after now (the runs it
        missed while paused are not made up)."""
        schedule = self.get(name, tenant)
        if not schedule.paused:
            return schedule
        now = self.clock()
        nxt = schedule.next_run_at
        if nxt is None or nxt <= now:
            nxt = first_due_after(schedule, now)
        updated = self.store.set_paused(schedule.id, False, nxt) or schedule
        self._timer().arm_schedules([updated])
        return updated

    # ---- firing ----------------------------------------------------------------------------------
    @staticmethod
    def _task_body(name: str, task: dict[str, Any], due: dt.datetime | None) -> dict[str, Any]:
        body = dict(task)
        tags = list(body.get("tags") or [])
        tag = schedule_tag(name)
        if tag not in tags:
            tags.append(tag)
        body["tags"] = tags
        if due is not None:
            body["idempotency_key"] = idempotency_key(name, due)
        return body

    def fire_due(self, limit: int = 100) -> list[Task]:
        """Fire every schedule due now (once each); returns the tasks this call created."""
        now = self.clock()
        created: list[Task] = []
        for schedule in self.store.due(now, limit):
            task = self.fire(schedule, now)
            if task is not None:
                created.append(task)
        return created

    def fire(self, schedule: Schedule, now: dt.datetime | None = None) -> Task | None:
        """Submit the task of the schedule's due time and advance it to the first due time after
        now. Returns the task if this call created it (None when another manager did, or when the
        task could not be built)."""
        now = now or self.clock()
        due = schedule.next_run_at
        if due is None or schedule.paused or due > now:
            return None
        lifecycle = self.rt.lifecycle
        task: Task | None = None
        created = False
        try:
            new = lifecycle.build(self._task_body(schedule.name, schedule.task, due), schedule.tenant)
            [(task, created)] = lifecycle.submit([new])
        except Conflict:
            created = False  # the key exists with another body: that due time has its task
        except TaskmillError as exc:
            # an unknown type (a plugin was removed), a quota: skip this due time, keep going
            logger.error("schedule %s of tenant %s could not fire: %s", schedule.name, schedule.tenant, exc)
        nxt = first_due_after(schedule, now)
        advanced = self.store.advance(
            schedule.id, due, nxt, last_run_at=due, last_task_id=task.id if task is not None else None
        )
        if advanced:
            schedule.next_run_at = nxt
            schedule.last_run_at = due
            self._timer().arm_schedules([schedule])
            logger.info(
                "schedule %s (%s) fired for %s; next run %s",
                schedule.name,
                schedule.tenant,
                _iso(due),
                _iso(nxt),
            )
        return task if created else None


# ---- timing ------------------------------------------------------------------------------------------


class Timer(Protocol):
    """Who looks at due times and when; the database always decides what fires."""

    def arm_schedules(self, schedules: list[Schedule]) -> None:
        """A schedule's next due time is known (created, resumed, advanced)."""

    def arm_releases(self, run_ats: list[dt.datetime]) -> None:
        """Delayed or retry-waiting tasks are due at these times."""

    def tick(self) -> dict[str, int]:
        """Called on every manager tick: fire what is due. Returns counts for the log."""


class ManagerTimer:
    """The manager times everything: every tick releases due tasks and fires due schedules
    (SQL and RabbitMQ brokers)."""

    def __init__(self, runtime: Runtime, clock: Clock = utcnow) -> None:
        self.rt = runtime
        self.schedules = ScheduleService(runtime, clock)

    def arm_schedules(self, schedules: list[Schedule]) -> None:
        return None

    def arm_releases(self, run_ats: list[dt.datetime]) -> None:
        return None

    def tick(self) -> dict[str, int]:
        return {
            "released_due": len(self.rt.lifecycle.release_due()),
            "schedules_fired": len(self.schedules.fire_due()),
        }


def timer_for(runtime: Runtime) -> Timer:
    """The runtime's timer: the broker's own (``broker.timer()``, e.g. rq-scheduler on Redis) or
    the manager's. Built once per broker object."""
    timer = _TIMERS.get(runtime)
    if timer is None:
        make = getattr(runtime.broker, "timer", None)
        timer = make() if callable(make) else ManagerTimer(runtime)
        _TIMERS[runtime] = timer
    return timer


_TIMERS: weakref.WeakKeyDictionary[Any, Timer] = weakref.WeakKeyDictionary()
