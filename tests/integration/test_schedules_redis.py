"""On the Redis broker, rq-scheduler times delayed tasks and schedule ticks (as JSON, never pickle)
while PostgreSQL decides: a private redis-server and a scratch database."""

from __future__ import annotations

import json
import math
import time
import zlib
from collections.abc import Iterator
from typing import Any

import pytest

from taskmill.config import Settings
from taskmill.models import TaskQuery
from taskmill.models import TaskStatus
from taskmill.runtime import build_runtime
from taskmill.schedules import ScheduleService
from taskmill.schedules import timer_for
from taskmill_redis.scheduler import RedisTimer
from taskmill_redis.scheduler import TaskmillScheduler
from tests.jobs import JobsPlugin
from tests.services import redis_server

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture
def rt(pg_url: str) -> Iterator[Any]:
    with redis_server() as server:
        settings = Settings(
            database_url=pg_url, broker_url=server.url, load_plugins=("sql", "redis"), secret_key="test"
        )
        runtime = build_runtime(settings, plugins=[JobsPlugin()], upgrade=True)
        try:
            yield runtime
        finally:
            timer = timer_for(runtime)
            if isinstance(timer, RedisTimer):
                timer.close()
            runtime.close()


def reminders(timer: RedisTimer) -> list[str]:
    conn = timer.scheduler.connection
    return [k.decode() for k in conn.zrange(TaskmillScheduler.scheduled_jobs_key, 0, -1)]


def stored_as_json(timer: RedisTimer, job_id: str) -> Any:
    """The reminder's job data as RQ stored it: zlib-compressed JSON (pickle would not load)."""
    raw = timer.scheduler.connection.hget(f"rq:job:{job_id}", "data")
    return json.loads(zlib.decompress(raw))


def test_a_delayed_task_is_released_by_its_rq_scheduler_reminder(rt: Any) -> None:
    timer = timer_for(rt)
    assert isinstance(timer, RedisTimer)
    timer.tick()  # the start-up sweep (nothing due yet); from now on only reminders release
    timer.sweep_seconds = 3600
    [(task, _)] = rt.lifecycle.submit([rt.lifecycle.build({"type": "j.echo", "delay": 1.5}, "acme")])
    assert task.status is TaskStatus.SCHEDULED
    [job_id] = [r for r in reminders(timer) if r.startswith("taskmill-release-")]
    func, _instance, args, _kwargs = stored_as_json(timer, job_id)
    assert func == "taskmill_redis.scheduler.release_due" and args == []
    released = 0
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not released:
        counts = timer.tick()
        released = counts["released_due"]
        time.sleep(0.1)
    assert released == 1
    assert rt.storage.tasks.get(task.id).status is TaskStatus.QUEUED
    assert reminders(timer) == []
    # the task went to RQ like any queued task
    assert rt.broker.backlog().get("default") == 1


def test_schedule_ticks_through_reminders_fire_each_due_time_once(rt: Any) -> None:
    timer = timer_for(rt)
    timer.tick()
    timer.sweep_seconds = 3600
    # two timers (two managers) on the same Redis and database
    other = RedisTimer(rt.broker, sweep_seconds=3600)
    schedule = ScheduleService(rt).create({"name": "fast", "interval": 1, "type": "j.echo"}, "acme")
    assert f"taskmill-schedule-{schedule.id}-{math.ceil(schedule.next_run_at.timestamp())}" in reminders(
        timer
    )
    end = time.monotonic() + 3.5
    fired = 0
    while time.monotonic() < end:
        fired += timer.tick()["schedules_fired"] + other.tick()["schedules_fired"]
        time.sleep(0.05)
    other.close()
    items, total = rt.storage.tasks.list(TaskQuery(tag="schedule:fast", limit=100))
    keys = [t.idempotency_key for t in items]
    assert len(keys) == len(set(keys)) == total == fired
    assert 2 <= total <= 4, keys
    # the next due time is armed, and nothing else is left behind
    nxt = ScheduleService(rt).get("fast", "acme").next_run_at
    assert reminders(timer) == [f"taskmill-schedule-{schedule.id}-{math.ceil(nxt.timestamp())}"]
