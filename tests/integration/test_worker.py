"""Core's worker loop and prefork pool over the SQL broker's consumer: real forked processes on
SQLite and PostgreSQL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from typing import Any

import pytest

from taskmill.models import TaskStatus
from taskmill.worker import WorkerOptions
from taskmill.worker.loop import WorkerLoop
from tests.storages import BACKENDS
from tests.storages import runtime_on
from tests.waiting import wait_for

S = TaskStatus
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(params=BACKENDS)
def rt(request: pytest.FixtureRequest, tmp_path: Any) -> Any:
    with runtime_on(request.param, tmp_path, cancel_grace=1.0, heartbeat_interval=0.5) as runtime:
        yield runtime


def submit(rt: Any, **body: Any) -> Any:
    body.setdefault("type", "j.echo")
    [(task, _)] = rt.lifecycle.submit([rt.lifecycle.build(body, "acme")])
    return task


class RunningPool:
    """A pool running in a thread, stopped at the end of the test."""

    def __init__(self, rt: Any, concurrency: int = 2, **kw: Any) -> None:
        self.options = WorkerOptions(queues=["default"], concurrency=concurrency, **kw)
        consumer = rt.broker.consumer(self.options.queues, self.options.worker_id, self.options.prefetch)
        self.pool = WorkerLoop(rt, self.options, consumer)
        self.thread = threading.Thread(target=self.pool.run, daemon=True)

    def __enter__(self) -> WorkerLoop:
        self.thread.start()
        return self.pool

    def __exit__(self, *exc: Any) -> None:
        self.pool.stop()
        self.thread.join(timeout=30)
        assert not self.thread.is_alive()


def status(rt: Any, task: Any) -> TaskStatus:
    return rt.storage.tasks.get(task.id).status


def test_burst_worker_runs_everything_and_stores_results(rt: Any) -> None:
    tasks = [submit(rt, payload={"i": i}) for i in range(40)]
    options = WorkerOptions(queues=["default"], concurrency=2, burst=True)
    rt.broker.run_worker(options)
    for t in tasks:
        done = rt.storage.tasks.get(t.id)
        assert done.status is S.COMPLETED and done.result == {"i": t.payload["i"]} and done.attempts == 1
    assert rt.storage.workers.list() == []  # unregistered on exit


def test_failures_are_recorded_with_type_message_and_traceback(rt: Any) -> None:
    boom = submit(rt, type="j.boom", payload={"message": "kaput"}, max_retries=0)
    not_json = submit(rt, type="j.not_json", max_retries=0)
    no_retry = submit(rt, type="j.no_retry", max_retries=5)
    rt.broker.run_worker(WorkerOptions(queues=["default"], concurrency=2, burst=True))
    b = rt.storage.tasks.get(boom.id)
    assert b.status is S.FAILED and b.error["type"] == "ValueError" and b.error["message"] == "kaput"
    assert "Traceback" in b.error["traceback"] and "j_boom" in b.error["traceback"]
    assert rt.storage.tasks.get(not_json.id).error["type"] == "TypeError"
    nr = rt.storage.tasks.get(no_retry.id)
    assert nr.status is S.FAILED and nr.attempts == 1


def test_timeout_kills_the_task_and_counts_a_failed_attempt(rt: Any) -> None:
    slow = submit(rt, type="j.stubborn", payload={"seconds": 30}, timeout=1, max_retries=0)
    after = submit(rt)
    started = time.monotonic()
    rt.broker.run_worker(WorkerOptions(queues=["default"], concurrency=1, burst=True))
    assert time.monotonic() - started < 10
    t = rt.storage.tasks.get(slow.id)
    assert t.status is S.FAILED and t.error["type"] == "TimeoutError"
    assert status(rt, after) is S.COMPLETED  # the replacement process carries on


def test_a_crashing_handler_is_a_failed_attempt_and_the_pool_recovers(rt: Any) -> None:
    crash = submit(rt, type="j.crash", max_retries=0)
    others = [submit(rt) for _ in range(5)]
    rt.broker.run_worker(WorkerOptions(queues=["default"], concurrency=1, burst=True))
    t = rt.storage.tasks.get(crash.id)
    assert t.status is S.FAILED and t.error["type"] == "WorkerLost"
    assert all(status(rt, o) is S.COMPLETED for o in others)


def test_retry_exception_then_success(rt: Any) -> None:
    task = submit(rt, type="j.retry", payload={"until": 3}, max_retries=5)
    for _ in range(3):
        rt.broker.run_worker(WorkerOptions(queues=["default"], concurrency=1, burst=True))
        rt.lifecycle.release_due()
    done = rt.storage.tasks.get(task.id)
    assert done.status is S.COMPLETED and done.result == {"attempt": 3} and done.attempts == 3


def test_cooperative_cancel_of_a_running_task(rt: Any) -> None:
    task = submit(rt, type="j.sleep", payload={"seconds": 30})
    with RunningPool(rt):
        wait_for(lambda: status(rt, task) is S.RUNNING)
        wait_for(lambda: (rt.storage.tasks.get(task.id).progress or 0) > 0)
        _, done = rt.lifecycle.cancel(task.id, "acme")
        assert not done
        t = wait_for(lambda: (x := rt.storage.tasks.get(task.id)).status is S.CANCELLED and x, timeout=10)
    assert t.result == {"stopped": True} and t.finished_at is not None


def test_forced_cancel_after_the_grace_period(rt: Any) -> None:
    task = submit(rt, type="j.stubborn", payload={"seconds": 60})
    follow = submit(rt)
    with RunningPool(rt, concurrency=1):
        wait_for(lambda: status(rt, task) is S.RUNNING)
        started = time.monotonic()
        rt.lifecycle.cancel(task.id, "acme")
        t = wait_for(lambda: (x := rt.storage.tasks.get(task.id)).status is S.CANCELLED and x, timeout=15)
        assert time.monotonic() - started >= 0.9  # the grace period (1 s) was given
        assert "force" in t.error["message"]
        wait_for(lambda: status(rt, follow) is S.COMPLETED)


def test_heartbeat_and_current_task_are_visible(rt: Any) -> None:
    task = submit(rt, type="j.sleep", payload={"seconds": 3})
    with RunningPool(rt, concurrency=1) as pool:
        wait_for(lambda: status(rt, task) is S.RUNNING)
        w = wait_for(lambda: [w for w in rt.storage.workers.list() if w.current_task])
        assert w[0].id == pool.worker_id and w[0].current_task == str(task.id)
        first = w[0].last_heartbeat
        wait_for(lambda: rt.storage.workers.list()[0].last_heartbeat > first)


@pytest.mark.slow
def test_sigterm_finishes_running_and_hands_back_the_rest(tmp_path: Any) -> None:
    """A real `taskmill worker` process: SIGTERM lets the running task finish and gives back the
    tasks it had claimed but not started (their attempt is not counted)."""
    with runtime_on("sqlite", tmp_path, load_plugins=("sql", "handlers")) as rt:
        env = {
            **os.environ,
            "TASKMILL_DATABASE_URL": rt.settings.database_url,
            "TASKMILL_LOAD_PLUGINS": "sql,handlers",
            "TASKMILL_WORKER_PREFETCH": "3",
            "PYTHONPATH": ROOT,
        }
        lc = rt.lifecycle
        [(task, _)] = lc.submit([lc.build({"type": "sleep", "payload": {"seconds": 1.5}}, "t")])
        rest = lc.submit([lc.build({"type": "echo"}, "t") for _ in range(3)])
        proc = subprocess.Popen(
            [sys.executable, "-m", "taskmill.cli", "worker", "--concurrency", "1"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_for(lambda: rt.storage.tasks.get(task.id).status is S.RUNNING)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=20) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
        assert rt.storage.tasks.get(task.id).status is S.COMPLETED
        for t, _ in rest:
            after = rt.storage.tasks.get(t.id)
            assert after.status is S.QUEUED and after.attempts == 0
        assert rt.storage.workers.list() == []


@pytest.mark.integration
def test_notify_wakes_an_idle_worker_at_once(tmp_path: Any) -> None:
    """On PostgreSQL a committed submit wakes an idle worker through the NOTIFY trigger: with a
    30 s poll interval, only the notification can explain a start within a second."""
    with runtime_on("postgresql", tmp_path, poll_interval=30.0) as rt:
        with RunningPool(rt, concurrency=1):
            for _ in range(2):
                time.sleep(4.0)  # idle long enough that its next poll is seconds away
                task = submit(rt)
                done = wait_for(
                    lambda t=task: (x := rt.storage.tasks.get(t.id)).status is S.COMPLETED and x, 5
                )
                assert (done.started_at - done.created_at).total_seconds() < 0.5


def test_prefetch_adapts_to_task_duration(tmp_path: Any) -> None:
    with runtime_on("sqlite", tmp_path) as rt:
        options = WorkerOptions(queues=["default"], concurrency=2)
        pool = WorkerLoop(rt, options, rt.broker.consumer(["default"], options.worker_id, -1))
        expected = {None: 34, 0.001: 34, 0.05: 10, 0.5: 4, 5.0: 2}
        for avg, capacity in expected.items():
            pool._avg_duration = avg
            assert pool.capacity == capacity, avg
        fixed = WorkerLoop(rt, WorkerOptions(queues=["default"], concurrency=2, prefetch=1), pool.consumer)
        fixed._avg_duration = 0.001
        assert fixed.capacity == 3


def test_a_loop_holding_enough_tasks_waits_instead_of_spinning(tmp_path: Any) -> None:
    """Above the low-water mark the loop does not receive, so a past poll time must not make it
    wait 0 s (it spun like that, 882,641 waits for 2,000 tasks, starving the pool's threads)."""
    with runtime_on("sqlite", tmp_path) as rt:
        options = WorkerOptions(queues=["default"], concurrency=2, prefetch=4)  # capacity 6
        loop = WorkerLoop(rt, options, rt.broker.consumer(["default"], options.worker_id, 4))
        past = time.monotonic() - 10
        loop.presence.next_beat = time.monotonic() + 60  # as after a beat: no duty is due
        assert loop._next_deadline() > time.monotonic()
        loop.held.extend([object()] * 4)  # type: ignore[list-item]  # 4 held of 6: 2 free, below half
        assert loop._wait_timeout(past, wake=True) > 0
        assert loop._wait_timeout(past, wake=False) > 0
        loop.held.clear()  # all free: the next pass receives, so a due poll means no wait
        assert loop._wait_timeout(past, wake=True) == 0.0
        assert loop._wait_timeout(past, wake=False) == 0.0


def test_a_loop_whose_outcomes_lag_stops_taking_tasks(tmp_path: Any, monkeypatch: Any) -> None:
    """Outcomes pile up while the database is slow to write them (the writer is held here): past
    the buffer's ``max_pending`` finished-but-unwritten tasks the loop takes no more, so memory
    stays bounded and a killed worker has few to run again; once the writer catches up,
    everything completes."""
    with runtime_on("sqlite", tmp_path) as rt:
        tasks = [submit(rt, payload={"i": i}) for i in range(60)]
        running = RunningPool(rt, concurrency=2, prefetch=2, pool="threads")
        running.pool.outcomes.max_pending = 5
        gate = threading.Event()
        real_finish = rt.lifecycle.finish

        def held_finish(*args: Any, **kw: Any) -> Any:
            gate.wait(30)
            return real_finish(*args, **kw)

        monkeypatch.setattr(running.pool.outcomes.lifecycle, "finish", held_finish)
        with running as loop:
            wait_for(lambda: len(loop.outcomes) >= 5)
            time.sleep(0.5)  # time to take many more, were it not held back
            taken = sum(1 for t in tasks if status(rt, t) is not S.QUEUED)
            # at most: the batch in the held writer, the backlog, and what the loop holds
            assert taken <= 5 + 5 + 4, taken
            gate.set()
            wait_for(lambda: all(status(rt, t) is S.COMPLETED for t in tasks), 30)


@pytest.mark.parametrize("backend", BACKENDS)
def test_progress_moves_in_the_api_while_a_task_runs(backend: str, tmp_path: Any) -> None:
    """A 3 s ``sleep`` task (it reports every second): the API shows its progress moving while it
    runs, not 0.0 and then 1.0 (progress is coalesced and written every half second)."""
    from taskmill.app import create_app

    with runtime_on(backend, tmp_path, load_plugins=("sql", "handlers"), auth="none") as rt:
        client = create_app(runtime=rt).test_client()
        r = client.post("/api/v1/tasks", json={"type": "sleep", "payload": {"seconds": 3}})
        assert r.status_code == 201, r.get_data(as_text=True)
        tid = r.get_json()["id"]
        seen: list[float] = []
        with RunningPool(rt, concurrency=1):
            wait_for(lambda: client.get(f"/api/v1/tasks/{tid}").get_json()["status"] == "running")
            while (body := client.get(f"/api/v1/tasks/{tid}").get_json())["status"] == "running":
                seen.append(body["progress"] or 0.0)
                time.sleep(0.1)
        assert body["status"] == "completed" and body["progress"] == 1.0
        moving = sorted({round(v, 2) for v in seen if 0.0 < v < 1.0})
        assert len(moving) >= 2, seen
