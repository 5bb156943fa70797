"""rq-scheduler times schedule ticks and delayed tasks on the Redis broker; the database decides.

rq-scheduler 0.14 pickles by default (its ``Scheduler`` takes no serializer), so every job it
stores here is a :class:`JsonJob` and every queue a :class:`JsonQueue`: RQ's JSON serializer by
default, for the scheduler, for :meth:`Job.fetch` and for the queue it moves due jobs to.

Two kinds of timer jobs, each only a reminder that names what came due:

- ``fire_schedule(schedule_id, due)`` at a schedule's ``next_run_at`` (job id
  ``taskmill-schedule-<id>-<epoch>``: arming the same due time twice is one job);
- ``release_due()`` at the ``run_at`` of delayed and retry-waiting tasks (one job per second of
  due times, ``taskmill-release-<epoch>``).

The manager's tick on the Redis broker (:class:`RedisTimer`) takes rq-scheduler's lock
(``taskmill:scheduler_lock``; another manager skips that pass), lets rq-scheduler move the jobs
that came due onto the ``taskmill:timer`` queue, and drains that queue: a reminder fires the
schedule through :class:`taskmill.schedules.ScheduleService` (a conditional advance and an
idempotency key per due time: exactly one task, however many managers run and however often a
reminder arrives) or releases the due tasks (a conditional scheduled → queued statement). Every
:data:`SWEEP_SECONDS` the timer also re-arms the active schedules and asks the database directly,
so a Redis that lost its data delays a tick by at most that long and never loses it.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import time
import uuid
from collections.abc import Sequence
from typing import Any

from redis.exceptions import RedisError
from rq.job import Job
from rq.queue import Queue
from rq_scheduler import Scheduler

from taskmill.plugin_api import utcnow
from taskmill_redis.factory import SERIALIZER
from taskmill_redis.factory import connect

__all__ = [
    "JsonJob",
    "JsonQueue",
    "TaskmillScheduler",
    "RedisTimer",
    "TIMER_QUEUE",
    "FIRE_SCHEDULE",
    "RELEASE_DUE",
    "fire_schedule",
    "release_due",
]

logger = logging.getLogger("taskmill.redis.scheduler")

TIMER_QUEUE = "taskmill:timer"
"""The RQ queue rq-scheduler moves due reminders to; the manager drains it."""

FIRE_SCHEDULE = "taskmill_redis.scheduler.fire_schedule"
RELEASE_DUE = "taskmill_redis.scheduler.release_due"

SWEEP_SECONDS = 15.0
"""How often the timer also asks the database (lost reminders, schedules armed elsewhere)."""

REMINDER_TTL = 7 * 86400
"""Seconds a reminder's job hash lives in Redis at most."""


class JsonJob(Job):
    """An RQ job whose serializer is JSON unless told otherwise (``Job.fetch`` included)."""

    def __init__(self, id: str | None = None, connection: Any = None, serializer: Any = None) -> None:  # noqa: A002
        super().__init__(id, connection=connection, serializer=serializer or SERIALIZER)


class JsonQueue(Queue):
    """An RQ queue of :class:`JsonJob` with the JSON serializer."""

    job_class = JsonJob

    def __init__(self, name: str = "default", connection: Any = None, **kwargs: Any) -> None:
        kwargs.setdefault("serializer", SERIALIZER)
        kwargs.setdefault("job_class", JsonJob)
        super().__init__(name, connection=connection, **kwargs)


class TaskmillScheduler(Scheduler):
    """rq-scheduler with taskmill's own keys, so it never meets another application's jobs."""

    scheduler_key = "taskmill:scheduler"
    scheduler_lock_key = "taskmill:scheduler_lock"
    scheduled_jobs_key = "taskmill:scheduler:scheduled_jobs"
    redis_scheduler_namespace_prefix = "taskmill:scheduler_instance:"


def fire_schedule(schedule_id: str, due: str) -> None:
    """Reminder: a schedule's due time came. Run by :class:`RedisTimer`, never by an RQ worker."""
    raise RuntimeError("taskmill timer reminders are handled by the manager's RedisTimer")


def release_due() -> None:
    """Reminder: delayed tasks came due. Run by :class:`RedisTimer`, never by an RQ worker."""
    raise RuntimeError("taskmill timer reminders are handled by the manager's RedisTimer")


def _epoch(at: dt.datetime) -> int:
    """The second a reminder is due: rounded up, since one a fraction early would find nothing due."""
    return math.ceil(at.timestamp())


def _naive_utc(at: dt.datetime) -> dt.datetime:
    """rq-scheduler converts with ``utctimetuple()``: hand it UTC."""
    return at.astimezone(dt.UTC).replace(tzinfo=None)


class RedisTimer:
    """:class:`taskmill.schedules.Timer` on rq-scheduler (see the module docstring)."""

    def __init__(self, broker: Any, *, sweep_seconds: float = SWEEP_SECONDS) -> None:
        self.broker = broker
        self.rt = broker.runtime
        self.sweep_seconds = sweep_seconds
        self._conn: Any = None
        self._scheduler: TaskmillScheduler | None = None
        self._last_sweep = 0.0

    @property
    def scheduler(self) -> TaskmillScheduler:
        if self._scheduler is None:
            self._conn = connect(self.broker.url)
            self._scheduler = TaskmillScheduler(
                queue_name=TIMER_QUEUE,
                connection=self._conn,
                interval=1,
                job_class=JsonJob,
                queue_class=JsonQueue,
            )
        return self._scheduler

    def _services(self) -> Any:
        from taskmill.plugin_api import ScheduleService

        return ScheduleService(self.rt)

    # ---- arming ----------------------------------------------------------------------------------
    def arm_schedules(self, schedules: Sequence[Any]) -> None:
        try:
            for s in schedules:
                if s.paused or s.next_run_at is None:
                    continue
                due = s.next_run_at
                self.scheduler.enqueue_at(
                    dt.datetime.fromtimestamp(_epoch(due), dt.UTC).replace(tzinfo=None),
                    FIRE_SCHEDULE,
                    str(s.id),
                    due.astimezone(dt.UTC).isoformat(),
                    job_id=f"taskmill-schedule-{s.id}-{_epoch(due)}",
                    job_ttl=REMINDER_TTL,
                    job_result_ttl=0,
                    queue_name=TIMER_QUEUE,
                )
        except RedisError as exc:  # the sweep asks the database anyway
            logger.warning("could not arm schedule reminders in Redis: %s", exc)

    def arm_releases(self, run_ats: Sequence[dt.datetime]) -> None:
        try:
            for second in sorted({_epoch(at) for at in run_ats}):
                at = dt.datetime.fromtimestamp(second, dt.UTC)
                self.scheduler.enqueue_at(
                    _naive_utc(at),
                    RELEASE_DUE,
                    job_id=f"taskmill-release-{second}",
                    job_ttl=REMINDER_TTL,
                    job_result_ttl=0,
                    queue_name=TIMER_QUEUE,
                )
        except RedisError as exc:
            logger.warning("could not arm release reminders in Redis: %s", exc)

    # ---- the manager's tick ------------------------------------------------------------------------
    def tick(self) -> dict[str, int]:
        counts = {"released_due": 0, "schedules_fired": 0, "reminders": 0}
        service = self._services()
        now = time.monotonic()
        if now - self._last_sweep >= self.sweep_seconds:
            self._last_sweep = now
            counts["released_due"] += len(self.rt.lifecycle.release_due())
            counts["schedules_fired"] += len(service.fire_due())
            self.arm_schedules(self.rt.storage.schedules.active())
        try:
            scheduler = self.scheduler
            if scheduler.acquire_lock():
                try:
                    scheduler.enqueue_jobs()
                finally:
                    scheduler.remove_lock()
            queue = JsonQueue(TIMER_QUEUE, connection=self._conn)
            while True:
                popped = JsonQueue.dequeue_any([queue], None, connection=self._conn, job_class=JsonJob)
                if popped is None:
                    break
                job, _ = popped
                job.delete()  # before handling: handling may arm a reminder of the same id again
                counts["reminders"] += 1
                fired, released = self._handle(job, service)
                counts["schedules_fired"] += fired
                counts["released_due"] += released
        except RedisError as exc:
            logger.warning("rq-scheduler pass skipped (Redis unavailable: %s); the sweep covers it", exc)
        return counts

    def _handle(self, job: Job, service: Any) -> tuple[int, int]:
        """Act on one reminder; returns (schedules fired, tasks released)."""
        if job.func_name == RELEASE_DUE:
            return 0, len(self.rt.lifecycle.release_due())
        if job.func_name == FIRE_SCHEDULE:
            schedule_id, due = job.args
            schedule = self.rt.storage.schedules.get_by_id(uuid.UUID(schedule_id))
            if schedule is None or schedule.next_run_at is None:
                return 0, 0
            if schedule.next_run_at > utcnow():  # an early or stale reminder: the next one is armed
                self.arm_schedules([schedule])
                return 0, 0
            return (1 if service.fire(schedule) is not None else 0), 0
        logger.warning("unknown reminder %s on %s dropped", job.func_name, TIMER_QUEUE)
        return 0, 0

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except RedisError:
                pass
            self._conn = None
            self._scheduler = None
