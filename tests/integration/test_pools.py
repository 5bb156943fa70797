"""Every pool (prefork, threads, asyncio) under core's loop on the SQL broker: results, failures,
retries, timeouts, cooperative and forced cancel, async handlers, recycling — on SQLite and
PostgreSQL, in process (the loop runs in a thread; prefork children are real forks)."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from taskmill import handler
from taskmill import hookimpl
from taskmill.config import Settings
from taskmill.models import TaskStatus
from taskmill.runtime import build_runtime
from taskmill.worker import WorkerOptions
from taskmill.worker.loop import WorkerLoop
from tests.jobs import JobsPlugin
from tests.services import postgres_url
from tests.services import scratch_database
from tests.waiting import wait_for

S = TaskStatus
POOLS = ["prefork", "threads", "asyncio"]


@handler("a.echo")
async def a_echo(ctx: Any, payload: dict[str, Any]) -> dict[str, Any]:
    await asyncio.sleep(0)
    return {"echo": payload, "pid": os.getpid(), "attempt": ctx.attempt}


@handler("a.sleep")
async def a_sleep(ctx: Any, payload: dict[str, Any]) -> dict[str, Any]:
    """Await in small steps, honouring cancellation, reporting progress."""
    seconds = float(payload.get("seconds", 1))
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if ctx.cancel_requested:
            return {"stopped": True}
        ctx.progress(1 - (end - time.monotonic()) / seconds)
        await asyncio.sleep(0.02)
    return {"slept": seconds}


@handler("a.stubborn")
async def a_stubborn(ctx: Any, payload: dict[str, Any]) -> None:
    """Ignore cancellation: only a forced stop ends it (at its await)."""
    await asyncio.sleep(float(payload.get("seconds", 60)))


@handler("a.boom")
async def a_boom(ctx: Any, payload: dict[str, Any]) -> None:
    raise ValueError("async boom")


class AsyncJobs:
    @hookimpl
    def taskmill_handlers(self) -> list[Any]:
        return [a_echo, a_sleep, a_stubborn, a_boom]


@contextmanager
def _runtime(backend: str, tmp_path: Any, **overrides: Any) -> Iterator[Any]:
    if backend == "sqlite":
        url_ctx: Any = _value(f"sqlite:///{tmp_path}/pools.db")
    else:
        url_ctx = scratch_database(postgres_url())
    with url_ctx as url:
        values: dict[str, Any] = {"load_plugins": ("sql",), "secret_key": "test", **overrides}
        settings = Settings().replace(database_url=url, **values)
        rt = build_runtime(settings, plugins=[JobsPlugin(), AsyncJobs()], upgrade=True)
        try:
            yield rt
        finally:
            rt.close()


@contextmanager
def _value(v: str) -> Iterator[str]:
    yield v


@pytest.fixture(
    params=[
        pytest.param("sqlite", id="sqlite"),
        pytest.param("postgresql", id="postgresql", marks=pytest.mark.integration),
    ]
)
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(params=POOLS)
def pool(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def rt(backend: str, tmp_path: Any) -> Iterator[Any]:
    with _runtime(backend, tmp_path, cancel_grace=1.0, heartbeat_interval=0.5) as runtime:
        yield runtime


def submit(rt: Any, **body: Any) -> Any:
    body.setdefault("type", "j.echo")
    [(task, _)] = rt.lifecycle.submit([rt.lifecycle.build(body, "acme")])
    return task


def get(rt: Any, task: Any) -> Any:
    return rt.storage.tasks.get(task.id)


def burst(rt: Any, pool: str, concurrency: int = 2) -> None:
    rt.broker.run_worker(WorkerOptions(queues=["default"], concurrency=concurrency, burst=True, pool=pool))


class Running:
    """A worker loop in a thread, stopped (warm) at the end of the block."""

    def __init__(self, rt: Any, pool: str, concurrency: int = 2) -> None:
        self.options = WorkerOptions(queues=["default"], concurrency=concurrency, pool=pool)
        consumer = rt.broker.consumer(self.options.queues, self.options.worker_id, self.options.prefetch)
        self.loop = WorkerLoop(rt, self.options, consumer)
        self.thread = threading.Thread(target=self.loop.run, daemon=True)

    def __enter__(self) -> WorkerLoop:
        self.thread.start()
        return self.loop

    def __exit__(self, *exc: Any) -> None:
        self.loop.stop()
        self.thread.join(timeout=30)
        assert not self.thread.is_alive()


def test_sync_and_async_handlers_complete_with_their_results(rt: Any, pool: str) -> None:
    sync = [submit(rt, payload={"i": i}) for i in range(20)]
    asyn = [submit(rt, type="a.echo", payload={"i": i}) for i in range(20)]
    burst(rt, pool)
    for i, t in enumerate(sync):
        done = get(rt, t)
        assert done.status is S.COMPLETED and done.result == {"i": i} and done.attempts == 1
    for i, t in enumerate(asyn):
        done = get(rt, t)
        assert done.status is S.COMPLETED and done.result["echo"] == {"i": i}
        # prefork runs handlers in children; threads and asyncio in the worker process itself
        assert (done.result["pid"] == os.getpid()) is (pool != "prefork")


def test_failures_and_retries_are_recorded(rt: Any, pool: str) -> None:
    boom = submit(rt, type="j.boom", max_retries=0)
    aboom = submit(rt, type="a.boom", max_retries=0)
    retry = submit(rt, type="j.retry", payload={"until": 2}, max_retries=3)
    burst(rt, pool)
    rt.lifecycle.release_due()
    burst(rt, pool)
    assert get(rt, boom).status is S.FAILED and get(rt, boom).error["type"] == "ValueError"
    assert get(rt, aboom).status is S.FAILED and "async boom" in get(rt, aboom).error["message"]
    done = get(rt, retry)
    assert done.status is S.COMPLETED and done.result == {"attempt": 2} and done.attempts == 2


@pytest.mark.parametrize("kind", ["j.stubborn", "a.stubborn"])
def test_timeout_ends_the_task_and_the_pool_carries_on(rt: Any, pool: str, kind: str) -> None:
    slow = submit(rt, type=kind, payload={"seconds": 30}, timeout=1, max_retries=0)
    after = submit(rt)
    started = time.monotonic()
    burst(rt, pool, concurrency=1)
    assert time.monotonic() - started < 10
    t = get(rt, slow)
    assert t.status is S.FAILED and t.error["type"] == "TimeoutError"
    assert get(rt, after).status is S.COMPLETED


@pytest.mark.parametrize("kind", ["j.sleep", "a.sleep"])
def test_cooperative_cancel_with_progress(rt: Any, pool: str, kind: str) -> None:
    task = submit(rt, type=kind, payload={"seconds": 30})
    with Running(rt, pool):
        wait_for(lambda: get(rt, task).status is S.RUNNING)
        wait_for(lambda: (get(rt, task).progress or 0) > 0)
        rt.lifecycle.cancel(task.id, "acme")
        t = wait_for(lambda: (x := get(rt, task)).status is S.CANCELLED and x, timeout=10)
    assert t.result == {"stopped": True}


@pytest.mark.parametrize("kind", ["j.stubborn", "a.stubborn"])
def test_forced_cancel_after_the_grace_frees_the_slot(rt: Any, pool: str, kind: str) -> None:
    task = submit(rt, type=kind, payload={"seconds": 60})
    with Running(rt, pool, concurrency=1):
        wait_for(lambda: get(rt, task).status is S.RUNNING)
        follow = submit(rt)
        rt.lifecycle.cancel(task.id, "acme")
        t = wait_for(lambda: (x := get(rt, task)).status is S.CANCELLED and x, timeout=15)
        assert "force" in t.error["message"]
        wait_for(lambda: get(rt, follow).status is S.COMPLETED)


def test_warm_stop_finishes_running_tasks(rt: Any, pool: str) -> None:
    task = submit(rt, type="j.sleep", payload={"seconds": 0.5})
    with Running(rt, pool, concurrency=1):
        wait_for(lambda: get(rt, task).status is S.RUNNING)
    # one stop (on leaving the block): the running task finishes before the loop exits
    assert get(rt, task).status is S.COMPLETED


def test_prefork_replaces_a_child_after_max_tasks(backend: str, tmp_path: Any) -> None:
    with _runtime(backend, tmp_path, worker_max_tasks_per_child=3) as rt:
        tasks = [submit(rt, type="j.attempt") for _ in range(9)]
        burst(rt, "prefork", concurrency=1)
        done = [get(rt, t) for t in tasks]
    assert all(t.status is S.COMPLETED for t in done)
    pids = [t.result["pid"] for t in done]
    assert len(set(pids)) == 3, pids  # 9 tasks, a fresh child every 3


def test_threads_pool_cannot_kill_a_thread_and_says_so() -> None:
    from taskmill.worker.pool import make_pool

    class _Rt:
        settings = Settings()

    assert make_pool("threads", _Rt(), 2).can_force is False  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown pool"):
        make_pool("gevent", _Rt(), 2)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown pool"):
        WorkerOptions(queues=["default"], concurrency=1, pool="gevent")
