"""Three real ``taskmill manager`` processes at once fire each due time of a schedule exactly once,
on the SQL broker (the managers time it) and on the Redis broker (rq-scheduler times it)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack
from contextlib import contextmanager
from typing import Any

import pytest

from taskmill.config import Settings
from taskmill.models import TaskQuery
from taskmill.runtime import build_runtime
from taskmill.schedules import ScheduleService
from tests.services import redis_server

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@contextmanager
def managers(env: dict[str, str], n: int, log_dir: Any) -> Iterator[list[subprocess.Popen[bytes]]]:
    procs = []
    logs = []
    try:
        for i in range(n):
            log = open(log_dir / f"manager{i}.log", "wb")  # noqa: SIM115 - closed below
            logs.append(log)
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "taskmill.cli", "manager"], env=env, stdout=log, stderr=log
                )
            )
        yield procs
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for log in logs:
            log.close()


@pytest.mark.parametrize("broker", ["sql", "redis"])
def test_three_manager_processes_fire_each_due_time_once(pg_url: str, tmp_path: Any, broker: str) -> None:
    with ExitStack() as stack:
        broker_url = ""
        if broker == "redis":
            broker_url = stack.enter_context(redis_server()).url
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("TASKMILL_") or k.startswith("TASKMILL_TEST_")
        }
        env.update(
            TASKMILL_DATABASE_URL=pg_url,
            TASKMILL_BROKER_URL=broker_url,
            TASKMILL_MANAGER_INTERVAL="0.2",
            TASKMILL_LOG_LEVEL="INFO",
            PROMETHEUS_MULTIPROC_DIR=str(tmp_path),
        )
        settings = Settings(
            database_url=pg_url, broker_url=broker_url, load_plugins=("sql", "redis", "handlers")
        )
        rt = build_runtime(settings, upgrade=True)
        stack.callback(rt.close)
        with managers(env, 3, tmp_path) as procs:
            deadline = time.monotonic() + 60  # all three started (a loaded machine takes seconds)
            while not all("manager started" in (tmp_path / f"manager{i}.log").read_text() for i in range(3)):
                assert time.monotonic() < deadline, "the managers did not start"
                time.sleep(0.2)
            ScheduleService(rt).create({"name": "beat", "interval": 1, "type": "echo"}, "acme")
            time.sleep(5)
            assert all(p.poll() is None for p in procs), [
                (tmp_path / f"manager{i}.log").read_text() for i in range(3)
            ]
        items, total = rt.storage.tasks.list(TaskQuery(tag="schedule:beat", limit=100))
        keys = sorted(t.idempotency_key for t in items)
        assert len(keys) == len(set(keys)), keys
        # on Redis these came from rq-scheduler reminders: the timer's own database sweep ran once,
        # at start-up before the schedule existed, and runs again only after 15 s
        assert 3 <= total <= 6, keys
        schedule = ScheduleService(rt).get("beat", "acme")
        assert schedule.last_run_at is not None and schedule.next_run_at > schedule.last_run_at
