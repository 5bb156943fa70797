"""The Redis broker on real Redis and PostgreSQL, with real worker and manager processes.

Each module run gets its own PostgreSQL database and its own redis-server (no persistence), both
removed at the end; each test uses its own queue names and stops every process it started.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from taskmill.config import load_settings
from taskmill.errors import BrokerUnavailable
from taskmill.models import Task
from taskmill.runtime import Runtime
from taskmill.runtime import build_runtime
from tests.services import RedisServer
from tests.services import postgres_url
from tests.services import redis_server
from tests.services import scratch_database
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
FINAL = {"completed", "failed", "cancelled"}


class Env:
    """One database and one Redis, a runtime on them, and the processes a test starts."""

    def __init__(self, db_url: str, redis: RedisServer, tmp: Path) -> None:
        self.db_url = db_url
        self.redis = redis
        self.tmp = tmp
        self.procs: list[subprocess.Popen[bytes]] = []
        self.vars = {
            "TASKMILL_DATABASE_URL": db_url,
            "TASKMILL_BROKER_URL": redis.url,
            "TASKMILL_LOG_LEVEL": "WARNING",
            "TASKMILL_MANAGER_INTERVAL": "0.2",
            "TASKMILL_CANCEL_GRACE": "1",
        }
        self.rt: Runtime = build_runtime(load_settings(environ=self.vars), upgrade=True)

    def spawn(self, *args: str, **extra: str) -> subprocess.Popen[bytes]:
        """Start ``python -m taskmill.cli <args>`` with this environment (plus ``extra``)."""
        clean = {k: v for k, v in os.environ.items() if not k.startswith("TASKMILL_")}
        env = {**clean, **self.vars, **extra, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        log = open(self.tmp / f"{args[0]}-{len(self.procs)}.log", "wb")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(
            [sys.executable, "-m", "taskmill.cli", *args], env=env, stdout=log, stderr=subprocess.STDOUT
        )
        log.close()
        self.procs.append(proc)
        return proc

    def worker(self, queue: str, *more: str, **extra: str) -> subprocess.Popen[bytes]:
        """Start a worker on ``queue`` and wait until it is registered (a new worker id)."""
        before = {w.id for w in self.rt.storage.workers.list()}
        proc = self.spawn("worker", "--queues", queue, *more, **extra)
        self.wait_for(
            lambda: [w for w in self.rt.storage.workers.list() if queue in w.queues and w.id not in before],
            20,
            "the worker to register",
        )
        return proc

    def submit(self, type_: str, payload: dict[str, Any] | None = None, **fields: Any) -> Task:
        body = {"type": type_, "payload": payload or {}, **fields}
        [(task, _)] = self.rt.lifecycle.submit([self.rt.lifecycle.build(body, "default")])
        return task

    def get(self, task: Task | uuid.UUID) -> Task:
        tid = task.id if isinstance(task, Task) else task
        found = self.rt.storage.tasks.get(tid)
        assert found is not None
        return found

    def wait_for(self, cond: Callable[[], Any], timeout: float, what: str = "condition") -> Any:
        return wait_for(cond, timeout, what, context=self.logs)

    def wait_status(self, task: Task, statuses: set[str], timeout: float = 20) -> Task:
        return self.wait_for(
            lambda: (t := self.get(task)).status.value in statuses and t, timeout, f"{task.id} in {statuses}"
        )

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in sorted(self.tmp.glob("*.log"))
        )

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs.clear()


@pytest.fixture(scope="module")
def db_url() -> Iterator[str]:
    with scratch_database(postgres_url()) as url:
        yield url


@pytest.fixture(scope="module")
def redis() -> Iterator[RedisServer]:
    with redis_server() as server:
        yield server


@pytest.fixture
def env(db_url: str, redis: RedisServer, tmp_path: Path) -> Iterator[Env]:
    if redis.proc is None:
        redis.start()
    e = Env(db_url, redis, tmp_path)
    try:
        yield e
    finally:
        e.stop_all()
        e.rt.close()


def q() -> str:
    """A queue name of its own for one test."""
    return f"q{uuid.uuid4().hex[:8]}"


# --- delivery ----------------------------------------------------------------------------------------


def test_priority_order_is_exact_and_fifo_within_a_priority(env: Env) -> None:
    queue = q()
    prios = [1, 5, 9, 5, 1, 9, 0, 7]
    tasks = [env.submit("echo", {"i": i}, queue=queue, priority=p) for i, p in enumerate(prios)]
    # one id per take, so each start has its own time (a take of several starts them together)
    proc = env.spawn("worker", "--queues", queue, "--concurrency", "1", "--burst", "--prefetch", "0")
    assert proc.wait(timeout=30) == 0, env.logs()
    done = [env.get(t) for t in tasks]
    assert all(t.status.value == "completed" for t in done), env.logs()
    ran = [t.payload["i"] for t in sorted(done, key=lambda t: t.started_at)]
    expected = [i for i, _ in sorted(enumerate(prios), key=lambda x: (-x[1], x[0]))]
    assert ran == expected


def test_a_duplicate_delivery_does_not_run_the_task_twice(env: Env) -> None:
    queue = q()
    task = env.submit("echo", {"x": 1}, queue=queue)
    env.rt.broker.publish([task])
    env.rt.broker.publish([task])
    assert env.rt.broker.backlog()[queue] == 3
    assert env.rt.broker.republish_lost([task]) == 0, "it is in a list"
    proc = env.spawn("worker", "--queues", queue, "--concurrency", "1", "--burst")
    assert proc.wait(timeout=30) == 0, env.logs()
    done = env.get(task)
    assert done.status.value == "completed" and done.attempts == 1
    assert env.rt.broker.backlog().get(queue, 0) == 0
    conn = env.rt.broker.connection
    assert not conn.exists(f"rq:job:{task.id}"), "RQ keeps no record of a finished task"


def test_timeout_is_a_failed_attempt_with_timeout_error(env: Env) -> None:
    queue = q()
    env.worker(queue)
    task = env.submit("sleep", {"seconds": 10}, queue=queue, timeout=1, max_retries=0)
    done = env.wait_status(task, FINAL, 15)
    assert done.status.value == "failed"
    assert done.error["type"] == "TimeoutError"


@pytest.mark.parametrize("worker_class", ["simple", "fork"])
def test_cancel_stops_a_running_task(env: Env, worker_class: str) -> None:
    queue = q()
    env.worker(queue, TASKMILL_REDIS_WORKER_CLASS=worker_class)
    task = env.submit("sleep", {"seconds": 60}, queue=queue)
    env.wait_status(task, {"running"}, 15)
    time.sleep(0.3)
    _, done_now = env.rt.lifecycle.cancel(task.id, None)
    assert not done_now
    started = time.monotonic()
    done = env.wait_status(task, FINAL, 10)
    assert done.status.value == "cancelled"
    assert time.monotonic() - started < 5


def test_pause_holds_from_the_moment_the_pause_call_returns(env: Env) -> None:
    """A worker already blocked waiting for the queue takes a task submitted right after the
    pause, and drops it: no task of a paused queue starts. Resume publishes the dropped tasks
    again, and they run in priority order (FIFO within one)."""
    queue = q()
    env.worker(queue, "--concurrency", "1", "--prefetch", "0")  # a start time per task
    warm = env.submit("echo", {}, queue=queue)
    env.wait_status(warm, FINAL, 15)  # the worker is idle, blocked on the queue
    env.rt.storage.queues.set_paused(queue, True)
    prios = [1, 9, 5, 9, 1]
    tasks = [env.submit("echo", {"i": i}, queue=queue, priority=p) for i, p in enumerate(prios)]
    time.sleep(2.0)
    for t in tasks:
        held = env.get(t)
        assert held.status.value == "queued" and held.attempts == 0, env.logs()
    assert env.rt.broker.backlog().get(queue, 0) == 0, "the worker took and dropped the deliveries"
    env.rt.storage.queues.set_paused(queue, False)
    assert env.rt.broker.queue_resumed(queue) == len(tasks)
    done = [env.wait_status(t, FINAL, 15) for t in tasks]
    assert all(t.status.value == "completed" and t.attempts == 1 for t in done)
    ran = [t.payload["i"] for t in sorted(done, key=lambda t: t.started_at)]
    assert ran == [i for i, _ in sorted(enumerate(prios), key=lambda x: (-x[1], x[0]))]


def test_a_task_taken_but_not_started_runs_once_the_taker_is_gone(env: Env) -> None:
    """A worker killed between its take and the start leaves the id in its in-flight list (the
    take is one Lua script, so there is no moment when the id is only in its memory). The
    manager returns it to the queue once that worker is not registered, and it runs once."""
    from taskmill_redis.factory import listen_order
    from taskmill_redis.reliable import inflight_key
    from taskmill_redis.reliable import take

    queue = q()
    task = env.submit("echo", {"x": 1}, queue=queue)
    conn = env.rt.broker.connection
    keys = [f"rq:queue:{name}" for name in listen_order([queue])]
    got = take(conn, inflight_key("ghost-worker"), keys)
    assert [job_id for _, job_id in got] == [str(task.id)]
    assert env.rt.broker.backlog().get(queue, 0) == 0
    env.worker(queue)
    time.sleep(1.0)
    assert env.get(task).status.value == "queued", "nobody else can take it while it is in flight"
    env.spawn("manager", TASKMILL_REPUBLISH_AFTER="1")
    done = env.wait_status(task, FINAL, 20)
    assert done.status.value == "completed" and done.attempts == 1
    assert not conn.exists(inflight_key("ghost-worker"))


def test_a_task_in_no_list_is_published_again(env: Env) -> None:
    """Re-publish looks for queued tasks in no Redis list (only ids travel: there is no job hash)."""
    queue = q()
    task = env.submit("echo", {}, queue=queue)
    conn = env.rt.broker.connection
    assert not conn.exists(f"rq:job:{task.id}"), "a publish writes the id only"
    for key in conn.keys(f"rq:queue:{queue}:p*"):
        conn.delete(key)  # the id is in no list
    assert env.rt.broker.republish_lost([env.get(task)]) == 1
    assert env.rt.broker.republish_lost([env.get(task)]) == 0, "now it is in a list"


def test_workers_are_listed_with_heartbeats_and_counts(env: Env) -> None:
    queue = q()
    proc = env.worker(queue, "--concurrency", "2")
    tasks = [env.submit("echo", {"i": i}, queue=queue) for i in range(6)]
    for t in tasks:
        env.wait_status(t, FINAL, 15)

    def counted() -> list[Any]:
        ours = [w for w in env.rt.storage.workers.list() if queue in w.queues]
        return ours if sum(w.processed for w in ours) == 6 else []

    workers = env.wait_for(counted, 15, "heartbeats with counts")  # a heartbeat is lease/6 = 5 s
    assert len(workers) == 2
    assert all(w.last_heartbeat is not None and w.current_task is None for w in workers)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=15) == 0, env.logs()
    assert not [w for w in env.rt.storage.workers.list() if queue in w.queues], "workers unregister on exit"


# --- failures, delays, recovery -------------------------------------------------------------------------


def test_delayed_task_runs_when_due_and_retries_end_in_dead_letters(env: Env) -> None:
    queue = q()
    env.worker(queue)
    env.spawn("manager")
    delayed = env.submit("echo", {}, queue=queue, delay=1.5)
    failing = env.submit("fail", {"message": "boom"}, queue=queue, max_retries=2, retry_backoff=0.1)
    assert env.get(delayed).status.value == "scheduled"
    done = env.wait_status(delayed, FINAL, 15)
    assert done.status.value == "completed"
    assert (done.started_at - done.created_at).total_seconds() >= 1.4
    dead = env.wait_status(failing, FINAL, 20)
    assert dead.status.value == "failed" and dead.attempts == 3
    assert dead.error["message"] == "boom"


def test_warm_shutdown_lets_the_running_task_finish(env: Env) -> None:
    queue = q()
    proc = env.worker(queue)
    task = env.submit("sleep", {"seconds": 1.5}, queue=queue)
    env.wait_status(task, {"running"}, 15)
    proc.send_signal(signal.SIGTERM)
    try:
        code = proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the worker did not stop within 20 s of SIGTERM:\n{env.logs()}")
    assert code == 0, env.logs()
    assert env.get(task).status.value == "completed"


@pytest.mark.slow
def test_a_sigkilled_worker_is_noticed_within_the_lease_and_its_task_runs_again(env: Env) -> None:
    queue = q()
    lease = {"TASKMILL_WORKER_LEASE": "3"}
    victim = env.worker(queue, **lease)
    env.spawn("manager", **lease)
    task = env.submit("sleep", {"seconds": 2}, queue=queue, max_retries=2)
    env.wait_status(task, {"running"}, 15)
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=5)
    killed_at = time.monotonic()
    env.worker(queue, **lease)
    requeued = env.wait_for(lambda: (t := env.get(task)).attempts == 2 and t, 15, "a second attempt")
    assert time.monotonic() - killed_at < 3 + 3, "recovered within the lease (plus a heartbeat)"
    assert requeued.error is None or requeued.error["type"] == "WorkerLost"
    done = env.wait_status(task, FINAL, 20)
    assert done.status.value == "completed" and done.attempts == 2


@pytest.mark.slow
def test_redis_restart_without_persistence_loses_no_task(env: Env) -> None:
    """Redis dies mid-run and comes back empty; tasks submitted meanwhile are accepted. Every one
    reaches a final state (the manager re-publishes what Redis lost), and none runs twice."""
    queue = q()
    fast = {"TASKMILL_REPUBLISH_AFTER": "1"}
    env.worker(queue, "--concurrency", "2", **fast)
    env.spawn("manager", **fast)
    first = [env.submit("sleep", {"seconds": 0.05}, queue=queue) for _ in range(40)]
    env.wait_for(lambda: env.get(first[3]).status.value in FINAL, 15, "the run to start")
    env.redis.stop()
    with pytest.raises(BrokerUnavailable):
        env.rt.broker.check()
    during = [env.submit("echo", {"i": i}, queue=queue) for i in range(10)]  # accepted: the DB is the truth
    assert all(t.status.value == "queued" for t in during)
    time.sleep(2)
    env.redis.start()
    env.rt.broker.check()
    for t in first + during:
        done = env.wait_status(t, FINAL, 60)
        assert done.status.value == "completed", done
        assert done.attempts == 1 or (done.error or {}).get("type") == "WorkerLost"


@pytest.mark.slow
def test_flushall_mid_run_loses_no_task(env: Env) -> None:
    """FLUSHALL on the (private) Redis while workers drain: queue lists, job hashes and in-flight
    lists are gone; the manager publishes again what is queued in the database, and every task
    completes."""
    queue = q()
    fast = {"TASKMILL_REPUBLISH_AFTER": "1"}
    env.worker(queue, "--concurrency", "2", **fast)
    env.spawn("manager", **fast)
    tasks = [env.submit("sleep", {"seconds": 0.05}, queue=queue) for _ in range(80)]
    env.wait_for(lambda: env.get(tasks[5]).status.value in FINAL, 15, "the run to start")
    env.rt.broker.connection.flushall()
    for t in tasks:
        done = env.wait_status(t, FINAL, 60)
        assert done.status.value == "completed", done


def test_progress_reaches_the_database_while_the_task_runs(env: Env) -> None:
    queue = q()
    env.worker(queue)
    task = env.submit("sleep", {"seconds": 3}, queue=queue)
    env.wait_status(task, {"running"}, 15)
    seen = set()
    while (t := env.get(task)).status.value == "running":
        if t.progress:
            seen.add(round(t.progress, 2))
        time.sleep(0.1)
    assert len([v for v in seen if 0 < v < 1]) >= 2, seen


def test_submit_while_redis_is_down_is_published_later(env: Env, tmp_path: Path) -> None:
    """A crash between the commit and the publish, simulated by a Redis that is down: the task
    is accepted and queued in the database, and the manager publishes it once Redis is back."""
    queue = q()
    with redis_server() as own:
        own_env = {**env.vars, "TASKMILL_BROKER_URL": own.url}
        rt = build_runtime(load_settings(environ=own_env))
        try:
            own.stop()
            [(task, created)] = rt.lifecycle.submit(
                [rt.lifecycle.build({"type": "echo", "queue": queue}, "default")]
            )
            assert created and task.status.value == "queued"
            own.start()
            env.vars = own_env
            env.worker(queue)
            env.spawn("manager", TASKMILL_REPUBLISH_AFTER="1")
            assert env.wait_status(task, FINAL, 20).status.value == "completed"
        finally:
            env.stop_all()
            rt.close()


def test_health_and_backlog_against_the_service_redis(redis_url: str, env: Env) -> None:
    """The broker answers check() and backlog() on the configured service Redis too."""
    from taskmill_redis.broker import RedisBroker

    url = redis_url.rsplit("/", 1)[0] + "/14"
    broker = RedisBroker(url, env.rt.settings, env.rt)
    try:
        broker.check()
        queue = q()
        broker.publish([Task(id=uuid.uuid4(), type="echo", queue=queue, priority=p) for p in (1, 9, 9)])
        assert broker.backlog()[queue] == 3
    finally:
        broker.connection.flushdb()
        broker.close()
    dead = RedisBroker("redis://127.0.0.1:1/0", env.rt.settings, env.rt)
    started = time.monotonic()
    with pytest.raises(BrokerUnavailable):
        dead.check()
    assert time.monotonic() - started < 3, "redis-py 8 retries are bounded"
