"""Schedules on a real PostgreSQL with three managers at once: one task per due time, across a DST
change (a controllable clock), and no replay storm after downtime."""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from taskmill.config import Settings
from taskmill.manager import Manager
from taskmill.models import TaskQuery
from taskmill.runtime import build_runtime
from taskmill.schedules import ScheduleService
from taskmill.schedules import idempotency_key
from taskmill.schedules import parse_timezone
from tests.jobs import JobsPlugin

pytestmark = pytest.mark.integration

UTC = dt.UTC


@pytest.fixture
def runtimes(pg_url: str) -> Iterator[list[Any]]:
    """Three runtimes (as three manager processes would have) on one fresh database."""
    settings = Settings(database_url=pg_url, load_plugins=("sql",), secret_key="test")
    made = [build_runtime(settings, plugins=[JobsPlugin()], upgrade=True) for _ in range(3)]
    try:
        yield made
    finally:
        for rt in made:
            rt.close()


class Clock:
    def __init__(self, at: dt.datetime) -> None:
        self.at = at
        self.lock = threading.Lock()

    def __call__(self) -> dt.datetime:
        with self.lock:
            return self.at

    def advance(self, **delta: float) -> None:
        with self.lock:
            self.at += dt.timedelta(**delta)


def tasks_of(rt: Any, name: str) -> list[Any]:
    items, _ = rt.storage.tasks.list(TaskQuery(tag=f"schedule:{name}", limit=1000))
    return items


def test_three_managers_submit_one_task_per_due_time(runtimes: list[Any]) -> None:
    ScheduleService(runtimes[0]).create({"name": "tick", "interval": 1, "type": "j.echo"}, "acme")
    managers = [Manager(rt) for rt in runtimes]
    stop = threading.Event()
    errors: list[BaseException] = []

    def loop(m: Manager) -> None:
        while not stop.is_set():
            try:
                m.tick()
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)
                return
            time.sleep(0.02)

    threads = [threading.Thread(target=loop, args=(m,)) for m in managers]
    for th in threads:
        th.start()
    time.sleep(4.6)
    stop.set()
    for th in threads:
        th.join(timeout=30)
    assert not errors, errors
    tasks = tasks_of(runtimes[0], "tick")
    keys = sorted(t.idempotency_key for t in tasks)
    assert len(keys) == len(set(keys)), "a due time fired twice"
    assert 3 <= len(tasks) <= 6, keys
    schedule = ScheduleService(runtimes[0]).get("tick", "acme")
    # the due times are consecutive seconds from the first to the last run: none skipped, none doubled
    first = schedule.created_at + dt.timedelta(seconds=1)
    expected = [idempotency_key("tick", first + dt.timedelta(seconds=i)) for i in range(len(tasks))]
    assert keys == sorted(expected)
    assert schedule.last_task_id in {t.id for t in tasks}
    assert all(t.tenant == "acme" and t.type == "j.echo" for t in tasks)


def test_dst_fall_back_with_three_managers_and_a_controllable_clock(runtimes: list[Any]) -> None:
    ny = parse_timezone("America/New_York")
    clock = Clock(dt.datetime(2026, 10, 31, 23, 0, tzinfo=ny).astimezone(UTC))
    services = [ScheduleService(rt, clock) for rt in runtimes]
    services[0].create(
        {"name": "nightly", "cron": "30 1 * * *", "timezone": "America/New_York", "type": "j.echo"}, "acme"
    )
    services[0].create(
        {"name": "spring", "cron": "30 2 * * *", "timezone": "America/New_York", "type": "j.echo"}, "acme"
    )
    barrier = threading.Barrier(3)

    def fire(service: ScheduleService) -> None:
        barrier.wait()
        service.fire_due()

    end = dt.datetime(2026, 11, 1, 4, 0, tzinfo=ny).astimezone(UTC)
    while clock() < end:  # every minute through the repeated hour, three managers at once
        clock.advance(minutes=1)
        threads = [threading.Thread(target=fire, args=(s,)) for s in services]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
    nightly = tasks_of(runtimes[0], "nightly")
    assert len(nightly) == 1
    assert nightly[0].idempotency_key == "schedule:nightly:2026-11-01T05:30:00.000Z"  # 01:30 EDT
    # 02:30 comes once that day, after the repeated hour (02:30 EST = 07:30 UTC)
    [spring] = tasks_of(runtimes[0], "spring")
    assert spring.idempotency_key == "schedule:spring:2026-11-01T07:30:00.000Z"
    assert services[1].get("nightly", "acme").next_run_at == dt.datetime(2026, 11, 2, 6, 30, tzinfo=UTC)


def test_downtime_gives_one_catch_up_run(runtimes: list[Any]) -> None:
    clock = Clock(dt.datetime(2026, 1, 1, 0, 0, tzinfo=UTC))
    services = [ScheduleService(rt, clock) for rt in runtimes]
    services[0].create({"name": "minutely", "cron": "* * * * *", "type": "j.echo"}, "acme")
    clock.advance(hours=6)  # every manager was down for six hours
    fired = [s.fire_due() for s in services]
    assert sum(len(f) for f in fired) == 1
    assert len(tasks_of(runtimes[0], "minutely")) == 1
    assert services[2].get("minutely", "acme").next_run_at == dt.datetime(2026, 1, 1, 6, 1, tzinfo=UTC)
