"""The lifecycle and the SQL storage together, on SQLite and on a real PostgreSQL."""

from __future__ import annotations

import datetime as dt
import random
import threading
import time
import uuid
from typing import Any

import pytest

from taskmill.errors import Conflict
from taskmill.errors import InvalidTransition
from taskmill.errors import TaskNotFound
from taskmill.errors import ValidationError
from taskmill.lifecycle import TRANSITIONS
from taskmill.lifecycle import backoff_delay
from taskmill.lifecycle import check_transition
from taskmill.manager import Manager
from taskmill.models import Outcome
from taskmill.models import Task
from taskmill.models import TaskQuery
from taskmill.models import TaskStatus
from taskmill.models import WorkerInfo
from taskmill.models import utcnow
from tests.storages import BACKENDS
from tests.storages import runtime_on

S = TaskStatus


@pytest.fixture(params=BACKENDS)
def rt(request: pytest.FixtureRequest, tmp_path: Any) -> Any:
    with runtime_on(request.param, tmp_path) as runtime:
        yield runtime


def submit(rt: Any, tenant: str = "acme", **body: Any) -> Task:
    body.setdefault("type", "j.echo")
    [(task, created)] = rt.lifecycle.submit([rt.lifecycle.build(body, tenant)])
    assert created
    return task


def count(rt: Any, **filters: Any) -> int:
    return rt.storage.tasks.list(TaskQuery(**filters, limit=1))[1]


# ---- pure rules ------------------------------------------------------------------------------------


def test_transition_table_allows_only_documented_moves() -> None:
    assert check_transition([S.QUEUED, S.COMPLETED, S.WAITING], S.CANCELLED) == [S.QUEUED, S.WAITING]
    with pytest.raises(InvalidTransition):
        check_transition([S.COMPLETED], S.QUEUED)
    assert TRANSITIONS[S.COMPLETED] == frozenset()
    assert S.RUNNING not in TRANSITIONS[S.SCHEDULED]


def test_backoff_grows_exponentially_within_jittered_bounds() -> None:
    rng = random.Random(1)
    for attempts, expected in [(1, 2.0), (2, 4.0), (3, 8.0), (10, 300.0)]:
        task = Task(id=uuid.uuid4(), type="x", attempts=attempts, retry_backoff=2.0)
        for _ in range(50):
            d = backoff_delay(task, 300.0, rng)
            assert expected / 2 <= d <= expected


# ---- submission ------------------------------------------------------------------------------------


def test_claim_order_is_priority_then_fifo(rt: Any) -> None:
    low = [submit(rt, priority=1, payload={"i": i}) for i in range(3)]
    high = [submit(rt, priority=9, payload={"i": i}) for i in range(3)]
    mid = submit(rt, priority=5)
    claimed = []
    for _ in range(7):
        claimed += rt.lifecycle.claim(["default"], 1, "w1")
    assert [t.id for t in claimed] == [t.id for t in high] + [mid.id] + [t.id for t in low]
    assert all(t.status is S.RUNNING and t.attempts == 1 and t.worker == "w1" for t in claimed)


def test_batch_claim_returns_tasks_in_priority_order(rt: Any) -> None:
    ids = [submit(rt, priority=p).id for p in (1, 9, 5, 9)]
    claimed = rt.lifecycle.claim(["default"], 10, "w1")
    assert [t.id for t in claimed] == [ids[1], ids[3], ids[2], ids[0]]


def test_unknown_type_and_missing_dependency_are_rejected_without_writing(rt: Any) -> None:
    with pytest.raises(ValidationError):
        rt.lifecycle.build({"type": "nope"}, "acme")
    with pytest.raises(ValidationError):
        submit(rt, depends_on=[str(uuid.uuid4())])
    assert count(rt) == 0


def test_idempotent_submit_returns_the_first_task_and_conflicts_on_another_body(rt: Any) -> None:
    lc = rt.lifecycle
    first = lc.submit([lc.build({"type": "j.echo", "payload": {"a": 1}, "idempotency_key": "k1"}, "acme")])
    again = lc.submit([lc.build({"type": "j.echo", "payload": {"a": 1}, "idempotency_key": "k1"}, "acme")])
    assert first[0][1] is True and again[0][1] is False
    assert again[0][0].id == first[0][0].id
    with pytest.raises(Conflict):
        lc.submit([lc.build({"type": "j.echo", "payload": {"a": 2}, "idempotency_key": "k1"}, "acme")])
    # keys are per tenant
    other = lc.submit([lc.build({"type": "j.echo", "payload": {"a": 2}, "idempotency_key": "k1"}, "other")])
    assert other[0][1] is True
    assert count(rt) == 2


def test_a_batch_with_a_conflicting_key_writes_nothing(rt: Any) -> None:
    lc = rt.lifecycle
    lc.submit([lc.build({"type": "j.echo", "payload": {"a": 1}, "idempotency_key": "k"}, "acme")])
    batch = [lc.build({"type": "j.echo", "payload": {"i": i}}, "acme") for i in range(5)]
    batch.append(lc.build({"type": "j.echo", "payload": {"a": 9}, "idempotency_key": "k"}, "acme"))
    with pytest.raises(Conflict):
        lc.submit(batch)
    assert count(rt) == 1


def test_concurrent_submits_with_one_key_create_one_task(rt: Any) -> None:
    lc = rt.lifecycle
    results: list[Any] = []

    def go() -> None:
        results.append(lc.submit([lc.build({"type": "j.echo", "idempotency_key": "race"}, "acme")])[0])

    threads = [threading.Thread(target=go) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({task.id for task, _ in results}) == 1
    assert sum(created for _, created in results) == 1
    assert count(rt) == 1


# ---- delays, retries, dead letters ----------------------------------------------------------------


def test_delayed_task_is_released_when_due(rt: Any) -> None:
    task = submit(rt, delay=0.3)
    assert task.status is S.SCHEDULED
    assert rt.lifecycle.release_due() == []
    time.sleep(0.35)
    released = rt.lifecycle.release_due()
    assert [t.id for t in released] == [task.id]
    assert released[0].status is S.QUEUED
    past = submit(rt, run_at=utcnow() - dt.timedelta(hours=1))
    assert past.status is S.QUEUED


def test_failed_attempts_back_off_then_dead_letter(rt: Any) -> None:
    task = submit(rt, type="j.boom", max_retries=2, retry_backoff=10)
    lc = rt.lifecycle
    for attempt in (1, 2, 3):
        [claimed] = lc.claim(["default"], 1, "w1")
        before = utcnow()
        [after] = lc.finish([(claimed, Outcome(claimed.id, "failed", error={"type": "ValueError"}))], "w1")
        assert claimed.attempts == attempt
        if attempt < 3:
            assert after.status is S.SCHEDULED
            delay = (after.run_at - before).total_seconds()
            bound = 10 * 2 ** (attempt - 1)
            assert bound / 2 - 0.01 <= delay <= bound + 0.01
            rt.storage.tasks.transition([task.id], [S.SCHEDULED], None, {"run_at": utcnow()})
            assert [t.id for t in lc.release_due()] == [task.id]
        else:
            assert after.status is S.FAILED and after.error == {"type": "ValueError"}


def test_no_retry_outcome_dead_letters_at_once(rt: Any) -> None:
    submit(rt, max_retries=5)
    [claimed] = rt.lifecycle.claim(["default"], 1, "w1")
    [after] = rt.lifecycle.finish([(claimed, Outcome(claimed.id, "failed", no_retry=True))], "w1")
    assert after.status is S.FAILED


def test_retry_gives_a_fresh_budget_and_keeps_counting_attempts(rt: Any) -> None:
    task = submit(rt, max_retries=0)
    [claimed] = rt.lifecycle.claim(["default"], 1, "w1")
    rt.lifecycle.finish([(claimed, Outcome(claimed.id, "failed", error={"type": "X"}))], "w1")
    again = rt.lifecycle.retry(task.id, "acme")
    assert again.status is S.QUEUED and again.attempts == 1 and again.error is None
    [claimed] = rt.lifecycle.claim(["default"], 1, "w1")
    assert claimed.attempts == 2 and claimed.retries_left == 0
    with pytest.raises(InvalidTransition):
        rt.lifecycle.retry(task.id, "acme")  # running
    with pytest.raises(TaskNotFound):
        rt.lifecycle.retry(task.id, "someone-else")


def test_requeue_dead_letters_touches_only_failed_tasks(rt: Any) -> None:
    dead = submit(rt, max_retries=0)
    alive = submit(rt)
    [c1, c2] = rt.lifecycle.claim(["default"], 2, "w1")
    rt.lifecycle.finish([(c1, Outcome(c1.id, "failed")), (c2, Outcome(c2.id, "completed", result=1))], "w1")
    requeued = rt.lifecycle.requeue_dead_letters([dead.id, alive.id], "acme")
    assert [t.id for t in requeued] == [dead.id]


# ---- cancellation -----------------------------------------------------------------------------------


def test_cancel_pending_running_and_final(rt: Any) -> None:
    pending = submit(rt, delay=60)
    task, done = rt.lifecycle.cancel(pending.id, "acme")
    assert done and task.status is S.CANCELLED and task.finished_at is not None
    running = submit(rt)
    rt.lifecycle.claim(["default"], 1, "w1")
    task, done = rt.lifecycle.cancel(running.id, "acme")
    assert not done and task.status is S.RUNNING and task.cancel_requested
    assert rt.lifecycle.cancel_requested([running.id]) == {running.id}
    with pytest.raises(InvalidTransition):
        rt.lifecycle.cancel(pending.id, "acme")
    with pytest.raises(TaskNotFound):
        rt.lifecycle.cancel(running.id, "other-tenant")


# ---- workers and outcomes ---------------------------------------------------------------------------


def test_only_the_holding_worker_records_an_outcome(rt: Any) -> None:
    submit(rt)
    [claimed] = rt.lifecycle.claim(["default"], 1, "w1")
    assert rt.lifecycle.finish([(claimed, Outcome(claimed.id, "completed", result=1))], "w2") == []
    [done] = rt.lifecycle.finish([(claimed, Outcome(claimed.id, "completed", result={"ok": True}))], "w1")
    assert done.status is S.COMPLETED and done.result == {"ok": True} and done.progress == 1.0
    # a second report of the same attempt changes nothing
    assert rt.lifecycle.finish([(claimed, Outcome(claimed.id, "failed"))], "w1") == []


def test_mixed_outcomes_in_one_batch(rt: Any) -> None:
    for _ in range(4):
        submit(rt, max_retries=1)
    c = rt.lifecycle.claim(["default"], 4, "w1")
    written = rt.lifecycle.finish(
        [
            (c[0], Outcome(c[0].id, "completed", result=[1, 2])),
            (c[1], Outcome(c[1].id, "failed", error={"type": "E"})),
            (c[2], Outcome(c[2].id, "cancelled")),
            (c[3], Outcome(c[3].id, "requeue")),
        ],
        "w1",
    )
    by_id = {t.id: t for t in written}
    assert by_id[c[0].id].status is S.COMPLETED and by_id[c[0].id].result == [1, 2]
    assert by_id[c[1].id].status is S.SCHEDULED
    assert by_id[c[2].id].status is S.CANCELLED
    assert by_id[c[3].id].status is S.QUEUED and by_id[c[3].id].attempts == 0


def test_paused_queue_is_not_claimed(rt: Any) -> None:
    submit(rt, queue="slow")
    rt.storage.queues.set_paused("slow", True)
    assert rt.lifecycle.claim(["slow"], 5, "w1") == []
    rt.storage.queues.set_paused("slow", False)
    assert len(rt.lifecycle.claim(["slow"], 5, "w1")) == 1
    [q] = [q for q in rt.storage.queues.stats(None) if q.name == "slow"]
    assert q.depth == {"running": 1} and q.paused is False


def test_dependencies_release_and_cancel(rt: Any) -> None:
    parent = submit(rt)
    child = submit(rt, depends_on=[str(parent.id)])
    doomed_parent = submit(rt)
    doomed = submit(rt, depends_on=[str(doomed_parent.id)])
    grandchild = submit(rt, depends_on=[str(doomed.id)])
    assert child.status is S.WAITING
    assert rt.lifecycle.release_waiting() == []
    claimed = {t.id: t for t in rt.lifecycle.claim(["default"], 2, "w1")}
    rt.lifecycle.finish(
        [
            (claimed[parent.id], Outcome(parent.id, "completed")),
            (claimed[doomed_parent.id], Outcome(doomed_parent.id, "failed", no_retry=True)),
        ],
        "w1",
    )
    assert [t.id for t in rt.lifecycle.release_waiting()] == [child.id]
    Manager(rt).tick()
    after = rt.storage.tasks.get(doomed.id)
    assert after.status is S.CANCELLED and after.error["type"] == "DependencyFailed"
    assert rt.storage.tasks.get(grandchild.id).status is S.CANCELLED
    # a dependency that already completed does not make a new task wait
    late = submit(rt, depends_on=[str(parent.id)])
    assert late.status is S.QUEUED


def test_manager_recovers_tasks_of_a_dead_worker(rt: Any) -> None:
    old = utcnow() - dt.timedelta(minutes=5)
    rt.storage.workers.register(WorkerInfo(id="dead", host="h", pid=1, queues=["default"], started_at=old))
    rt.storage.workers.heartbeat("dead", {"last_heartbeat": old})
    alive = WorkerInfo(id="alive", host="h", pid=2, queues=["default"])
    rt.storage.workers.register(alive)
    a, b, c = submit(rt), submit(rt), submit(rt, max_retries=0)
    rt.lifecycle.claim(["default"], 1, "alive")
    rt.lifecycle.claim(["default"], 2, "dead")
    counts = Manager(rt).tick()
    assert counts["recovered"] == 2
    assert rt.storage.tasks.get(a.id).status is S.RUNNING  # alive worker keeps its task
    requeued = rt.storage.tasks.get(b.id)
    assert requeued.status is S.QUEUED and requeued.attempts == 1 and requeued.error["type"] == "WorkerLost"
    assert rt.storage.tasks.get(c.id).status is S.FAILED  # no retries left: dead letter
    assert [w.id for w in rt.storage.workers.list()] == ["alive"]


def test_two_managers_release_each_due_task_once(rt: Any) -> None:
    tasks = [submit(rt, delay=0.2) for _ in range(60)]
    time.sleep(0.25)
    released: list[Task] = []
    lock = threading.Lock()

    def tick() -> None:
        out = rt.lifecycle.release_due(limit=7)
        while out:
            with lock:
                released.extend(out)
            out = rt.lifecycle.release_due(limit=7)

    threads = [threading.Thread(target=tick) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(t.id for t in released) == sorted(t.id for t in tasks)


def test_concurrent_claims_never_hand_out_a_task_twice(rt: Any) -> None:
    lc = rt.lifecycle
    lc.submit([lc.build({"type": "j.echo", "payload": {"i": i}}, "acme") for i in range(200)])
    got: list[uuid.UUID] = []
    lock = threading.Lock()

    def worker(name: str) -> None:
        while True:
            batch = lc.claim(["default"], 5, name)
            if not batch:
                return
            with lock:
                got.extend(t.id for t in batch)

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 200 and len(set(got)) == 200


def test_list_filters_and_pagination(rt: Any) -> None:
    for i in range(5):
        submit(rt, tags=["a"] if i % 2 else ["b"], queue="q1" if i < 2 else "q2")
    submit(rt, tenant="other")
    items, total = rt.storage.tasks.list(TaskQuery(tenant="acme", tag="a", limit=10))
    assert total == 2 and all("a" in t.tags for t in items)
    items, total = rt.storage.tasks.list(TaskQuery(tenant="acme", queue="q2", offset=1, limit=1))
    assert total == 3 and len(items) == 1
    everything, total = rt.storage.tasks.list(TaskQuery(limit=100))
    assert total == 6
    assert [t.created_at for t in everything] == sorted((t.created_at for t in everything), reverse=True)


def test_expired_results_are_deleted(rt: Any) -> None:
    keep = submit(rt)
    gone = submit(rt)
    [c1, c2] = rt.lifecycle.claim(["default"], 2, "w")
    rt.lifecycle.finish([(c1, Outcome(c1.id, "completed")), (c2, Outcome(c2.id, "completed"))], "w")
    rt.storage.tasks.transition(
        [gone.id], [S.COMPLETED], None, {"finished_at": utcnow() - dt.timedelta(days=30)}
    )
    assert rt.storage.tasks.delete_finished(utcnow() - dt.timedelta(days=7), 100) == 1
    assert rt.storage.tasks.get(gone.id) is None and rt.storage.tasks.get(keep.id) is not None
