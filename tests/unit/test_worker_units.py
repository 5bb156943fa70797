"""Core's worker duty units, each alone, with a fake clock and a recording lifecycle."""

from __future__ import annotations

import uuid
from typing import Any

from taskmill.errors import StorageUnavailable
from taskmill.models import Outcome
from taskmill.models import Task
from taskmill.models import WorkerInfo
from taskmill.worker import CancelWatch
from taskmill.worker import OutcomeBuffer
from taskmill.worker import Presence
from taskmill.worker import ProgressCoalescer
from taskmill.worker.pool import make_pool


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Lifecycle:
    """Records what the units ask of the lifecycle."""

    def __init__(self) -> None:
        self.flags: set[uuid.UUID] = set()
        self.flag_reads: list[list[uuid.UUID]] = []
        self.progress_writes: list[dict[uuid.UUID, float]] = []
        self.finishes: list[list[tuple[Task, Outcome]]] = []
        self.fail_finish = 0

    def cancel_requested(self, ids: list[uuid.UUID]) -> set[uuid.UUID]:
        self.flag_reads.append(list(ids))
        return self.flags & set(ids)

    def set_progress(self, values: dict[uuid.UUID, float]) -> int:
        self.progress_writes.append(dict(values))
        return len(values)

    def finish(self, batch: list[tuple[Task, Outcome]], worker_id: str) -> list[Task]:
        if self.fail_finish:
            self.fail_finish -= 1
            raise StorageUnavailable("down")
        self.finishes.append(list(batch))
        return [t for t, _ in batch]


class Workers:
    def __init__(self) -> None:
        self.rows: dict[str, WorkerInfo] = {}
        self.beats: list[dict[str, Any]] = []

    def register(self, info: WorkerInfo) -> None:
        self.rows[info.id] = info

    def heartbeat(self, worker_id: str, values: dict[str, Any]) -> bool:
        self.beats.append(values)
        return worker_id in self.rows

    def unregister(self, worker_id: str) -> None:
        self.rows.pop(worker_id, None)


class Storage:
    def __init__(self) -> None:
        self.workers = Workers()


def test_presence_registers_beats_and_registers_again_when_declared_dead() -> None:
    storage, clock, lost = Storage(), Clock(), []
    info = WorkerInfo(id="w1", host="h", pid=1, queues=["default"])
    p = Presence(storage, info, interval=5.0, on_lost=lambda: lost.append(1), clock=clock)
    p.register()
    assert "w1" in storage.workers.rows and not p.due()
    clock.now += 5
    assert p.due() and p.beat({"processed": 1})
    del storage.workers.rows["w1"]  # a manager declared it dead
    clock.now += 5
    assert not p.beat({"processed": 2})
    assert "w1" in storage.workers.rows and lost == [1] and p.lost == 1
    p.unregister()
    assert storage.workers.rows == {}


def test_cancel_watch_flags_after_first_check_and_forces_after_the_grace() -> None:
    lc, clock = Lifecycle(), Clock()
    w = CancelWatch(lc, grace=2.0, interval=0.5, first_check=0.5, clock=clock)
    short, long_ = uuid.uuid4(), uuid.uuid4()
    w.started(short)
    w.started(long_)
    assert w.poll() == ([], []) and lc.flag_reads == [], "a task younger than 0.5 s costs no query"
    w.finished(short)
    lc.flags = {long_}
    clock.now += 0.6
    assert w.poll() == ([long_], []) and w.is_cancelled(long_)
    clock.now += 1.0
    assert w.poll() == ([], [])
    clock.now += 1.1
    assert w.poll() == ([], [long_])
    clock.now += 1.0
    assert w.poll() == ([], []), "a forced stop is returned once"
    w.finished(long_)
    assert w.due() == float("inf")


def test_progress_is_coalesced_into_one_write_per_interval() -> None:
    lc, clock = Lifecycle(), Clock()
    c = ProgressCoalescer(lc, interval=0.5, clock=clock)
    a, b = uuid.uuid4(), uuid.uuid4()
    for i in range(1000):
        c.report(a, i / 1000)
    c.report(b, 0.5)
    assert c.due() and c.flush() == 2
    assert lc.progress_writes == [{a: 0.999, b: 0.5}]
    c.report(a, 1.0)
    assert not c.due(), "the next write waits for the interval"
    clock.now += 0.5
    assert c.due()
    c.forget(a)
    assert c.flush() == 0 and len(lc.progress_writes) == 1


def test_outcome_buffer_batches_and_retries_while_the_database_is_down() -> None:
    lc, clock = Lifecycle(), Clock()
    buf = OutcomeBuffer(lc, "w1", max_delay=0.02, max_batch=3, clock=clock)
    tasks = [Task(id=uuid.uuid4(), type="t") for _ in range(3)]
    buf.put(tasks[0], Outcome(tasks[0].id, "completed"))
    assert not buf.due()
    clock.now += 0.03
    assert buf.due()
    buf.put(tasks[1], Outcome(tasks[1].id, "completed"))
    buf.put(tasks[2], Outcome(tasks[2].id, "failed"))
    lc.fail_finish = 1
    assert buf.flush() == tasks and len(lc.finishes) == 1 and len(lc.finishes[0]) == 3


def test_outcome_buffer_flushes_from_its_thread() -> None:
    lc = Lifecycle()
    buf = OutcomeBuffer(lc, "w1", max_delay=0.01)
    buf.start()
    t = Task(id=uuid.uuid4(), type="t")
    buf.put(t, Outcome(t.id, "completed"))
    buf.close()
    assert [x for batch in lc.finishes for x, _ in batch] == [t]


def test_an_unknown_pool_is_a_clear_error() -> None:
    try:
        make_pool("fibres", None, 1)  # type: ignore[arg-type]
    except ValueError as exc:
        assert "prefork" in str(exc)
    else:  # pragma: no cover
        raise AssertionError("no error")


def test_core_imports_have_no_cycle_between_execution_worker_and_interfaces() -> None:
    import subprocess
    import sys

    code = (
        "import sys; import taskmill.interfaces, taskmill.execution;"
        "bad = [m for m in ('taskmill.worker', 'taskmill.worker.loop') if m in sys.modules];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
