"""taskmill.testing: the stub broker as a transport, and the helpers plugin authors use."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from taskmill import handler
from taskmill.models import TaskStatus
from taskmill.testing import StubBroker
from taskmill.testing import make_runtime
from taskmill.testing import run_worker_until_idle
from taskmill.worker.transport import Consumer


@handler("stub.double")
def double(ctx: Any, payload: dict[str, Any]) -> dict[str, Any]:
    return {"n": payload["n"] * 2}


@pytest.fixture
def rt(tmp_path: Any) -> Any:
    runtime = make_runtime(tmp_path, handlers=[double])
    yield runtime
    runtime.close()


def submit(rt: Any, **body: Any) -> Any:
    [(task, _)] = rt.lifecycle.submit([rt.lifecycle.build({"type": "stub.double", **body}, "t")])
    return task


def test_a_stub_runtime_runs_tasks_through_core_s_worker(rt: Any) -> None:
    assert isinstance(rt.broker, StubBroker)
    tasks = [submit(rt, payload={"n": i}) for i in range(5)]
    run_worker_until_idle(rt)
    rt.broker.join("default", timeout=1)
    for t in tasks:
        done = rt.storage.tasks.get(t.id)
        assert done.status is TaskStatus.COMPLETED and done.result == {"n": 2 * t.payload["n"]}


def test_the_stub_consumer_keeps_the_contract(rt: Any) -> None:
    c = rt.broker.consumer(["default", "other"], "w", -1)
    assert isinstance(c, Consumer) and c.fileno() is not None
    low = submit(rt, payload={"n": 1}, priority=1)
    high = [submit(rt, payload={"n": i}, priority=9, queue="other") for i in range(2)]
    got = c.receive(10, 0)
    assert [d.task_id for d in got] == [high[0].id, high[1].id, low.id]
    assert all(d.task is None for d in got), "a push transport: core starts the tasks"
    c.requeue(got[:1])
    c.ack(got[1:])
    again = c.receive(10, 0.01)
    assert [d.task_id for d in again] == [high[0].id]
    assert rt.broker.backlog() == {}
    c.close()  # not acked: back to the broker
    assert rt.broker.backlog() == {"other": 1}
    assert rt.broker.republish_lost([high[0], low]) == 1
    with pytest.raises(TimeoutError):
        rt.broker.join("other", timeout=0.05)


def test_a_stub_broker_that_forgets_is_caught_up_by_republish(rt: Any) -> None:
    task = submit(rt, payload={"n": 4})
    rt.broker.forget()
    assert rt.broker.republish_lost([task]) == 1
    run_worker_until_idle(rt)
    assert rt.storage.tasks.get(task.id).result == {"n": 8}


def test_runtimes_on_one_stub_url_share_its_queues(tmp_path: Any) -> None:
    url = f"stub://{uuid.uuid4().hex}"
    api = make_runtime(tmp_path, handlers=[double], broker=url)
    worker = make_runtime(tmp_path, handlers=[double], broker=url)
    try:
        task = submit(api, payload={"n": 3})
        run_worker_until_idle(worker)
        assert api.storage.tasks.get(task.id).result == {"n": 6}
    finally:
        api.close()
        worker.close()
