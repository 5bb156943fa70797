"""The prefork pool: ``concurrency`` forked children run handlers; the parent supervises.

Parent and children speak JSON over pipes (never pickle). A child runs one task at a time and
sends ``progress`` (at most every :data:`PROGRESS_EVERY` seconds per task, from a small thread,
so a handler reporting in a tight loop costs nothing) and ``done``. A task is stopped by force
by killing its child, which is then replaced: a crashing or leaking handler cannot take the
worker down. Children die with the parent (``PR_SET_PDEATHSIG``). With
``max_tasks_per_child`` (``--max-tasks-per-child``, ``TASKMILL_WORKER_MAX_TASKS_PER_CHILD``) a
child that ran that many tasks is replaced by a fresh one, bounding what a leaking handler holds.
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import signal
import threading
import time
import uuid
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING
from typing import Any

from taskmill.execution import run_handler
from taskmill.models import Outcome
from taskmill.models import Task
from taskmill.worker.options import die_with_parent
from taskmill.worker.pool import Pool
from taskmill.worker.pool import PoolEvent

if TYPE_CHECKING:  # pragma: no cover
    from taskmill.runtime import Runtime

__all__ = ["PreforkPool", "PROGRESS_EVERY"]

PROGRESS_EVERY = 0.2
"""Seconds between two progress messages of one child."""


# --- messages: JSON over pipes -------------------------------------------------------------------


def send(conn: Connection, *msg: Any) -> None:
    conn.send_bytes(json.dumps(msg, separators=(",", ":")).encode())


def recv(conn: Connection) -> list[Any]:
    return json.loads(conn.recv_bytes())


def task_msg(task: Task) -> dict[str, Any]:
    return {
        "id": str(task.id),
        "type": task.type,
        "payload": task.payload,
        "attempts": task.attempts,
        "timeout": task.timeout,
        "queue": task.queue,  # for the child's log lines (taskmill.logs.task_context)
        "tenant": task.tenant,
    }


def task_from_msg(data: dict[str, Any]) -> Task:
    return Task(
        id=uuid.UUID(data["id"]),
        type=data["type"],
        payload=data["payload"],
        attempts=data["attempts"],
        timeout=data["timeout"],
        queue=data.get("queue", "default"),
        tenant=data.get("tenant", "default"),
    )


def outcome_msg(o: Outcome) -> dict[str, Any]:
    return dataclasses.asdict(o) | {"task_id": str(o.task_id)}


def outcome_from_msg(data: dict[str, Any]) -> Outcome:
    return Outcome(**(data | {"task_id": uuid.UUID(data["task_id"])}))


# --- the child ----------------------------------------------------------------------------------


class _ChildProgress:
    """The child's side of progress: the latest value, sent by a thread every PROGRESS_EVERY."""

    def __init__(self, conn: Connection, lock: threading.Lock) -> None:
        self.conn = conn
        self.lock = lock
        self.pending: dict[str, float] = {}
        threading.Thread(target=self._run, name="taskmill-progress", daemon=True).start()

    def report(self, task_id: str, value: float) -> None:
        self.pending[task_id] = value

    def drop(self, task_id: str) -> None:
        self.pending.pop(task_id, None)

    def _run(self) -> None:
        while True:
            time.sleep(PROGRESS_EVERY)
            if not self.pending:
                continue
            items, self.pending = self.pending, {}
            with self.lock:
                try:
                    for task_id, value in items.items():
                        send(self.conn, "progress", task_id, value)
                except (BrokenPipeError, OSError):
                    return


def _child_main(conn: Connection, runtime: Runtime) -> None:
    """Run tasks sent by the parent until told to stop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    die_with_parent()
    runtime.after_fork()
    lock = threading.Lock()
    progress = _ChildProgress(conn, lock)
    cancelled: set[str] = set()

    def check_cancel(task_id: str) -> bool:
        with lock:
            while conn.poll():
                msg = recv(conn)
                if msg[0] == "cancel":
                    cancelled.add(msg[1])
        return task_id in cancelled

    while True:
        try:
            msg = recv(conn)
        except (EOFError, OSError):
            return
        if msg[0] == "stop":
            return
        if msg[0] == "cancel":
            cancelled.add(msg[1])
            continue
        task = task_from_msg(msg[1])
        tid = str(task.id)
        outcome = run_handler(
            runtime,
            task,
            report_progress=lambda v, t=tid: progress.report(t, v),
            check_cancel=lambda t=tid: check_cancel(t),
        )
        progress.drop(tid)
        cancelled.discard(tid)
        try:
            with lock:
                send(conn, "done", outcome_msg(outcome))
        except (BrokenPipeError, OSError):
            return


# --- the parent ---------------------------------------------------------------------------------


@dataclasses.dataclass
class _Slot:
    process: Any
    conn: Connection
    task: Task | None = None
    started: float = 0.0
    done: int = 0


class PreforkPool(Pool):
    """Forked children, one task each at a time."""

    name = "prefork"
    can_force = True

    def __init__(self, runtime: Runtime, concurrency: int) -> None:
        super().__init__(runtime, concurrency)
        self.ctx = multiprocessing.get_context("fork")
        self.slots: list[_Slot] = []
        self.max_tasks_per_child = int(getattr(runtime.settings, "worker_max_tasks_per_child", 0) or 0)

    def start(self) -> None:
        self.slots = [self._spawn() for _ in range(self.concurrency)]

    def _spawn(self) -> _Slot:
        parent, child = self.ctx.Pipe(duplex=True)
        proc = self.ctx.Process(
            target=_child_main, args=(child, self.runtime), daemon=True, name="taskmill-child"
        )
        proc.start()
        child.close()
        return _Slot(process=proc, conn=parent)

    def _replace(self, slot: _Slot) -> None:
        try:
            slot.process.kill()
        except (OSError, AttributeError):
            pass
        slot.process.join(timeout=5)
        slot.conn.close()
        self.slots[self.slots.index(slot)] = self._spawn()

    def _recycle(self, slot: _Slot) -> None:
        """Replace an idle child that ran ``max_tasks_per_child`` tasks."""
        try:
            send(slot.conn, "stop")
        except (BrokenPipeError, OSError):
            pass
        slot.process.join(timeout=2)
        self._replace(slot)

    def _slot_of(self, task_id: uuid.UUID) -> _Slot | None:
        return next((s for s in self.slots if s.task is not None and s.task.id == task_id), None)

    def free(self) -> int:
        return sum(1 for s in self.slots if s.task is None)

    def running(self) -> list[Task]:
        return [s.task for s in self.slots if s.task is not None]

    def run(self, task: Task) -> None:
        for _ in range(3):
            slot = next(s for s in self.slots if s.task is None)
            try:
                send(slot.conn, "run", task_msg(task))
            except (BrokenPipeError, OSError):
                self._replace(slot)
                continue
            slot.task = task
            slot.started = time.monotonic()
            return
        raise RuntimeError("cannot start a child process")

    def waitables(self) -> list[Any]:
        return [s.conn for s in self.slots]

    def events(self, ready: list[Any]) -> list[PoolEvent]:
        out: list[PoolEvent] = []
        for obj in ready:
            slot = next((s for s in self.slots if s.conn is obj), None)
            if slot is not None:
                self._read(slot, out)
        return out

    def _read(self, slot: _Slot, out: list[PoolEvent]) -> None:
        while True:
            try:
                if not slot.conn.poll():
                    return
                msg = recv(slot.conn)
            except (EOFError, OSError):
                self._died(slot, out)
                return
            if msg[0] == "progress" and slot.task is not None and msg[1] == str(slot.task.id):
                out.append(PoolEvent("progress", slot.task.id, value=float(msg[2])))
            elif msg[0] == "done" and slot.task is not None:
                outcome = outcome_from_msg(msg[1])
                slot.task = None
                slot.done += 1
                out.append(PoolEvent("done", outcome.task_id, outcome=outcome))
                if self.max_tasks_per_child and slot.done >= self.max_tasks_per_child:
                    self._recycle(slot)
                    return

    def _died(self, slot: _Slot, out: list[PoolEvent]) -> None:
        task = slot.task
        if task is not None:
            slot.process.join(timeout=1)
            code = slot.process.exitcode
            outcome = Outcome(
                task.id,
                "failed",
                error={
                    "type": "WorkerLost",
                    "message": f"the process running the task exited unexpectedly (exit code {code})",
                    "traceback": None,
                },
                duration=time.monotonic() - slot.started,
            )
            slot.task = None
            out.append(PoolEvent("done", task.id, outcome=outcome))
        self._replace(slot)

    def cancel(self, task_id: uuid.UUID) -> None:
        slot = self._slot_of(task_id)
        if slot is None:
            return
        try:
            send(slot.conn, "cancel", str(task_id))
        except (BrokenPipeError, OSError):
            pass

    def kill(self, task_id: uuid.UUID) -> bool:
        slot = self._slot_of(task_id)
        if slot is None:
            return False
        slot.task = None
        self._replace(slot)
        return True

    def close(self, force: bool = False) -> list[Task]:
        stopped: list[Task] = []
        for slot in self.slots:
            if slot.task is not None:
                # stop it first, so it cannot finish while it already runs elsewhere
                slot.process.kill()
                slot.process.join(timeout=5)
                stopped.append(slot.task)
                slot.task = None
        for slot in self.slots:
            try:
                send(slot.conn, "stop")
            except (BrokenPipeError, OSError):
                pass
        deadline = time.monotonic() + 2
        for slot in self.slots:
            slot.process.join(timeout=max(0.0, deadline - time.monotonic()))
            if slot.process.is_alive():
                slot.process.kill()
                slot.process.join(timeout=2)
            slot.conn.close()
        self.slots = []
        return stopped
