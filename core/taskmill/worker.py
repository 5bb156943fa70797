"""The worker role's process pool, used by pull brokers (the SQL broker).

One parent process talks to the database and the broker; ``concurrency`` forked children run
handlers. The parent claims tasks in batches (one statement), hands them to idle children over
pipes, and records outcomes in batches (one statement), so a task costs a fraction of a round
trip. Children are killed when a task runs past its timeout or past the cancel grace period,
and replaced. On SIGTERM/SIGINT the parent stops claiming, hands back the tasks it holds but
has not started, and waits for running ones up to ``shutdown_timeout``; a second signal stops
at once and hands everything back.
"""

from __future__ import annotations

import ctypes
import dataclasses
import json
import logging
import multiprocessing
import os
import signal
import socket
import sys
import threading
import time
import uuid
from collections import deque
from multiprocessing.connection import Connection
from multiprocessing.connection import wait
from typing import TYPE_CHECKING
from typing import Any
from typing import Protocol

from taskmill.errors import StorageUnavailable
from taskmill.execution import run_handler
from taskmill.models import Outcome
from taskmill.models import Task
from taskmill.models import WorkerInfo

if TYPE_CHECKING:  # pragma: no cover
    from taskmill.runtime import Runtime

__all__ = [
    "die_with_parent",
    "WorkerOptions",
    "TaskSource",
    "WorkerPool",
    "make_worker_id",
    "current_runtime",
    "set_current_runtime",
]

logger = logging.getLogger("taskmill.worker")

_RUNTIME: Runtime | None = None


def set_current_runtime(runtime: Runtime) -> None:
    """Make ``runtime`` the one :func:`taskmill.execution.execute` uses in this process."""
    global _RUNTIME
    _RUNTIME = runtime


def current_runtime() -> Runtime:
    """The runtime of this worker process (built on first use from the environment)."""
    global _RUNTIME
    if _RUNTIME is None:
        from taskmill.runtime import build_runtime

        _RUNTIME = build_runtime()
    return _RUNTIME


def make_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


@dataclasses.dataclass
class WorkerOptions:
    """What ``taskmill worker`` was asked to do."""

    queues: list[str]
    concurrency: int
    prefetch: int = -1
    """Tasks claimed beyond the free processes; -1 adapts to how long tasks take."""
    worker_id: str = ""
    burst: bool = False
    """Exit when no task is left (tests and batch jobs)."""

    def __post_init__(self) -> None:
        if not self.worker_id:
            self.worker_id = make_worker_id()


class TaskSource(Protocol):
    """Where a pool gets its tasks: claims them (they come back already running)."""

    def fetch(self, limit: int) -> list[Task]: ...

    def fileno(self) -> int | None:
        """A descriptor that becomes readable when new tasks may be there (or None to poll)."""

    def drain(self) -> None:
        """Consume the wake-up signal after ``fileno()`` became readable."""

    def close(self) -> None: ...


# --- messages between parent and children: JSON over pipes, never pickle -----------------------------


def _send(conn: Connection, *msg: Any) -> None:
    conn.send_bytes(json.dumps(msg, separators=(",", ":")).encode())


def _recv(conn: Connection) -> list[Any]:
    return json.loads(conn.recv_bytes())


def _task_msg(task: Task) -> dict[str, Any]:
    return {
        "id": str(task.id),
        "type": task.type,
        "payload": task.payload,
        "attempts": task.attempts,
        "timeout": task.timeout,
    }


def _task_from_msg(data: dict[str, Any]) -> Task:
    return Task(
        id=uuid.UUID(data["id"]),
        type=data["type"],
        payload=data["payload"],
        attempts=data["attempts"],
        timeout=data["timeout"],
    )


def _outcome_msg(o: Outcome) -> dict[str, Any]:
    return {
        "task_id": str(o.task_id),
        "kind": o.kind,
        "result": o.result,
        "error": o.error,
        "retry_delay": o.retry_delay,
        "no_retry": o.no_retry,
        "duration": o.duration,
    }


def _outcome_from_msg(data: dict[str, Any]) -> Outcome:
    return Outcome(
        task_id=uuid.UUID(data["task_id"]),
        kind=data["kind"],
        result=data["result"],
        error=data["error"],
        retry_delay=data["retry_delay"],
        no_retry=data["no_retry"],
        duration=data["duration"],
    )


# --- the child side ---------------------------------------------------------------------------------

_PR_SET_PDEATHSIG = 1

FLUSH_AFTER = 0.02
"""Longest time (s) a finished task's outcome waits to be written with others."""


def die_with_parent() -> None:
    """Have the kernel SIGKILL this process when its parent dies (Linux), so a killed worker
    never leaves a task running unsupervised."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:  # pragma: no cover - not Linux
        pass


def _child_main(conn: Connection, runtime: Runtime) -> None:
    """Run tasks sent by the parent until told to stop. Messages are plain tuples."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    die_with_parent()
    runtime.after_fork()
    cancelled: set[str] = set()

    def check_cancel_for(task_id: str) -> bool:
        while conn.poll():
            msg = _recv(conn)
            if msg[0] == "cancel":
                cancelled.add(msg[1])
        return task_id in cancelled

    while True:
        try:
            msg = _recv(conn)
        except (EOFError, OSError):
            return
        if msg[0] == "stop":
            return
        if msg[0] == "cancel":
            cancelled.add(msg[1])
            continue
        task = _task_from_msg(msg[1])
        tid = str(task.id)
        outcome = run_handler(
            runtime,
            task,
            report_progress=lambda v, t=tid: _send(conn, "progress", t, v),
            check_cancel=lambda t=tid: check_cancel_for(t),
        )
        cancelled.discard(tid)
        try:
            _send(conn, "done", _outcome_msg(outcome))
        except (BrokenPipeError, OSError):
            return


@dataclasses.dataclass
class _Slot:
    process: Any
    conn: Connection
    task: Task | None = None
    started: float = 0.0
    deadline: float = 0.0
    cancel_deadline: float | None = None
    taken_away: bool = False


# --- the parent side --------------------------------------------------------------------------------


class WorkerPool:
    """A prefork pool fed by a :class:`TaskSource`."""

    def __init__(self, runtime: Runtime, options: WorkerOptions, source: TaskSource) -> None:
        self.rt = runtime
        self.options = options
        self.source = source
        self.settings = runtime.settings
        self.lifecycle = runtime.lifecycle
        self.worker_id = options.worker_id
        self.ctx = multiprocessing.get_context("fork")
        self.slots: list[_Slot] = []
        self.buffer: deque[Task] = deque()
        self.outcomes: list[tuple[Task, Outcome]] = []
        self.progress: dict[uuid.UUID, float] = {}
        self.stopping = False
        self.force = False
        self.processed = 0
        self.failed = 0
        self._stop_deadline = 0.0
        self._avg_duration: float | None = None
        self._first_outcome_at = 0.0

    @property
    def capacity(self) -> int:
        """Tasks held at once: one per process plus the prefetch.

        With ``prefetch=-1`` the prefetch adapts: very short tasks (under 10 ms on average) are
        claimed sixteen per process and short ones (under 0.1 s) four, so a claim and a
        completion statement cover many tasks;
        long ones (over 1 s) are not prefetched at all, so they do not wait in one worker's
        buffer while another worker is idle.
        """
        n = self.options.concurrency
        if self.options.prefetch >= 0:
            return n + self.options.prefetch
        avg = self._avg_duration
        if avg is None or avg < 0.01:
            return n + 16 * n  # the buffer drains in well under 0.2 s
        if avg < 0.1:
            return n + 4 * n
        if avg < 1.0:
            return n + n
        return n

    # -- lifecycle of the pool -------------------------------------------------------------------
    def _spawn(self) -> _Slot:
        parent, child = self.ctx.Pipe(duplex=True)
        proc = self.ctx.Process(target=_child_main, args=(child, self.rt), daemon=True, name="taskmill-child")
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
        index = self.slots.index(slot)
        self.slots[index] = self._spawn()

    def stop(self, force: bool = False) -> None:
        """Stop as a first (or, with ``force``, a second) SIGTERM would."""
        if force:
            self.force = True
        elif not self.stopping:
            self.stopping = True
            self._stop_deadline = time.monotonic() + self.settings.shutdown_timeout

    def _on_signal(self, signum: int, _frame: Any) -> None:
        if self.stopping:
            logger.warning("second signal: stopping now and handing running tasks back")
            self.force = True
        else:
            logger.info("signal %s: finishing running tasks, then stopping (again to stop now)", signum)
            self.stopping = True
            self._stop_deadline = time.monotonic() + self.settings.shutdown_timeout

    def run(self) -> None:
        """Run until stopped by a signal (or, in burst mode, until nothing is left)."""
        info = WorkerInfo(
            id=self.worker_id,
            host=socket.gethostname(),
            pid=os.getpid(),
            queues=list(self.options.queues),
            concurrency=self.options.concurrency,
        )
        self.rt.storage.register_worker(info)
        old = {}
        if threading.current_thread() is threading.main_thread():
            old = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        logger.info(
            "worker %s listening on %s with %s processes",
            self.worker_id,
            ",".join(self.options.queues),
            self.options.concurrency,
        )
        try:
            self.slots = [self._spawn() for _ in range(self.options.concurrency)]
            self._loop()
        finally:
            self._shutdown()
            for s, h in old.items():
                signal.signal(s, h)

    def _loop(self) -> None:
        settings = self.settings
        next_heartbeat = 0.0
        next_cancel_check = 0.0
        next_poll = 0.0
        wake = True
        idle_sleep = 0.01
        while True:
            now = time.monotonic()
            if self.force or (self.stopping and now >= self._stop_deadline):
                return
            busy = [s for s in self.slots if s.task is not None]
            if self.stopping:
                self._hand_back_buffer()
                if not busy:
                    return
            else:
                capacity = self.capacity
                want = capacity - len(busy) - len(self.buffer)
                # claim in batches: wait until half the capacity is free, unless idle
                low_water = want >= max(1, capacity // 2) or (not busy and not self.buffer)
                if want > 0 and low_water and (wake or now >= next_poll):
                    claimed = self._fetch(want)
                    self.buffer.extend(claimed)
                    if len(claimed) == want:
                        wake = True  # there may be more
                    else:
                        wake = False
                        if claimed:
                            idle_sleep = 0.01
                        else:
                            idle_sleep = min(self._idle_cap(), idle_sleep * 2)
                        next_poll = now + idle_sleep
                    if (
                        self.options.burst
                        and not claimed
                        and not busy
                        and not self.buffer
                        and not self.outcomes
                    ):
                        return
            self._dispatch()
            if now >= next_heartbeat:
                self._heartbeat()
                next_heartbeat = now + settings.heartbeat
            if now >= next_cancel_check and any(s.task for s in self.slots):
                self._check_cancels()
                next_cancel_check = now + 0.5
            self._enforce_deadlines()
            timeout = self._wait_timeout(next_poll, next_heartbeat, wake)
            waitables: list[Any] = [s.conn for s in self.slots]
            fd = self.source.fileno()
            if fd is not None and not self.stopping:
                waitables.append(fd)
            try:
                ready = wait(waitables, timeout)
            except InterruptedError:  # pragma: no cover - PEP 475 retries, but be safe
                ready = []
            for obj in ready:
                if obj is fd or (isinstance(obj, int) and obj == fd):
                    self.source.drain()
                    wake = True
                    continue
                self._read(obj)
            if self._flush_due():
                self._flush()

    def _idle_cap(self) -> float:
        """Longest idle sleep: the poll interval when the source can wake us, else at most 0.1 s."""
        if self.source.fileno() is not None:
            return self.settings.poll_interval
        return min(0.1, self.settings.poll_interval)

    def _wait_timeout(self, next_poll: float, next_heartbeat: float, wake: bool) -> float:
        now = time.monotonic()
        if wake and not self.stopping:
            capacity = self.capacity
            free = capacity - len(self.buffer) - sum(1 for s in self.slots if s.task)
            if free >= max(1, capacity // 2):
                return 0.0
        deadlines = [next_heartbeat, now + 0.5]
        if self.outcomes:
            deadlines.append(self._first_outcome_at + FLUSH_AFTER)
        if not self.stopping:
            deadlines.append(next_poll)
        else:
            deadlines.append(self._stop_deadline)
        for s in self.slots:
            if s.task is not None:
                deadlines.append(s.deadline)
                if s.cancel_deadline is not None:
                    deadlines.append(s.cancel_deadline)
        return max(0.0, min(deadlines) - now)

    # -- steps -------------------------------------------------------------------------------------
    def _fetch(self, limit: int) -> list[Task]:
        try:
            return self.source.fetch(limit)
        except StorageUnavailable as exc:
            logger.warning("cannot claim tasks: %s", exc)
            time.sleep(0.5)
            return []

    def _dispatch(self) -> None:
        for slot in self.slots:
            if not self.buffer:
                return
            if slot.task is None:
                task = self.buffer.popleft()
                try:
                    _send(slot.conn, "run", _task_msg(task))
                except (BrokenPipeError, OSError):
                    self.buffer.appendleft(task)
                    self._replace(slot)
                    continue
                now = time.monotonic()
                slot.task = task
                slot.started = now
                slot.deadline = now + task.timeout
                slot.cancel_deadline = None
                slot.taken_away = False

    def _read(self, conn: Connection) -> None:
        slot = next((s for s in self.slots if s.conn is conn), None)
        if slot is None:
            return
        while True:
            try:
                if not conn.poll():
                    return
                msg = _recv(conn)
            except (EOFError, OSError):
                self._child_died(slot)
                return
            if msg[0] == "progress":
                self.progress[uuid.UUID(msg[1])] = msg[2]
            elif msg[0] == "done" and slot.task is not None:
                outcome = _outcome_from_msg(msg[1])
                if slot.cancel_deadline is not None and outcome.kind not in ("cancelled",):
                    outcome = dataclasses.replace(
                        outcome,
                        kind="cancelled",
                        error={"type": "Cancelled", "message": "cancelled by request", "traceback": None},
                    )
                self._record(slot, outcome)

    def _record(self, slot: _Slot, outcome: Outcome) -> None:
        task = slot.task
        assert task is not None
        slot.task = None
        slot.cancel_deadline = None
        self.progress.pop(task.id, None)
        if slot.taken_away:
            return  # the task was recovered elsewhere; this attempt's outcome does not count
        if not self.outcomes:
            self._first_outcome_at = time.monotonic()
        self.outcomes.append((task, outcome))
        if outcome.duration is not None:
            prev = self._avg_duration
            self._avg_duration = outcome.duration if prev is None else 0.8 * prev + 0.2 * outcome.duration
        if outcome.kind == "completed":
            self.processed += 1
        elif outcome.kind in ("failed", "retry"):
            self.failed += 1

    def _child_died(self, slot: _Slot) -> None:
        task = slot.task
        code = slot.process.exitcode
        if task is not None:
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
            self._record(slot, outcome)
        self._replace(slot)

    def _enforce_deadlines(self) -> None:
        now = time.monotonic()
        for slot in list(self.slots):
            task = slot.task
            if task is None:
                continue
            if slot.cancel_deadline is not None and now >= slot.cancel_deadline:
                logger.info("task %s did not stop within the cancel grace period; killing it", task.id)
                self._kill(
                    slot,
                    Outcome(
                        task.id,
                        "cancelled",
                        error={
                            "type": "Cancelled",
                            "message": "stopped by force after the cancel grace period",
                            "traceback": None,
                        },
                        duration=now - slot.started,
                    ),
                )
            elif now >= slot.deadline:
                logger.info("task %s ran past its timeout of %ss; killing it", task.id, task.timeout)
                self._kill(
                    slot,
                    Outcome(
                        task.id,
                        "failed",
                        error={
                            "type": "TimeoutError",
                            "message": f"timed out after {task.timeout}s",
                            "traceback": None,
                        },
                        duration=now - slot.started,
                    ),
                )

    def _kill(self, slot: _Slot, outcome: Outcome) -> None:
        self._record(slot, outcome)
        self._replace(slot)

    def _check_cancels(self) -> None:
        running = {s.task.id: s for s in self.slots if s.task is not None and s.cancel_deadline is None}
        if not running:
            return
        try:
            flagged = self.lifecycle.cancel_requested(list(running))
        except StorageUnavailable:
            return
        now = time.monotonic()
        for task_id in flagged:
            slot = running[task_id]
            try:
                _send(slot.conn, "cancel", str(task_id))
            except (BrokenPipeError, OSError):
                pass
            slot.cancel_deadline = now + self.settings.cancel_grace

    def _heartbeat(self) -> None:
        current = ",".join(str(s.task.id) for s in self.slots if s.task is not None) or None
        try:
            alive = self.rt.storage.heartbeat(
                self.worker_id, {"current_task": current, "processed": self.processed, "failed": self.failed}
            )
            if not alive:
                logger.warning("worker %s was declared dead by a manager; registering again", self.worker_id)
                for slot in self.slots:
                    if slot.task is not None:
                        slot.taken_away = True
                self.buffer.clear()
                self.rt.storage.register_worker(
                    WorkerInfo(
                        id=self.worker_id,
                        host=socket.gethostname(),
                        pid=os.getpid(),
                        queues=list(self.options.queues),
                        concurrency=self.options.concurrency,
                    )
                )
            if self.progress:
                for task_id, value in list(self.progress.items()):
                    self.lifecycle.set_progress(task_id, value)
                self.progress.clear()
        except StorageUnavailable as exc:
            logger.warning("heartbeat failed: %s", exc)

    def _flush_due(self) -> bool:
        """Record outcomes in batches: half the capacity at once, or when nothing else is
        pending, or after 20 ms; a completion then costs a fraction of one statement."""
        if not self.outcomes:
            return False
        if self.stopping or not self.buffer or len(self.outcomes) >= max(1, self.capacity // 2):
            return True
        return time.monotonic() - self._first_outcome_at >= FLUSH_AFTER

    def _flush(self) -> None:
        if not self.outcomes:
            return
        batch, self.outcomes = self.outcomes, []
        for attempt in range(10):
            try:
                self.lifecycle.finish(batch, self.worker_id)
                return
            except StorageUnavailable as exc:
                logger.warning("cannot record %s outcome(s), retrying: %s", len(batch), exc)
                time.sleep(min(5.0, 0.2 * 2**attempt))
        logger.error("gave up recording %s outcome(s); the manager will recover those tasks", len(batch))

    def _hand_back_buffer(self) -> None:
        if not self.buffer:
            return
        handed = [(t, Outcome(t.id, "requeue")) for t in self.buffer]
        self.buffer.clear()
        self.outcomes.extend(handed)
        self._flush()

    def _shutdown(self) -> None:
        """Hand back what is held, stop children, unregister."""
        self.outcomes.extend((t, Outcome(t.id, "requeue")) for t in self.buffer)
        self.buffer.clear()
        for slot in self.slots:
            if slot.task is not None:
                # stop it first, so it cannot finish while it already runs elsewhere
                slot.process.kill()
                slot.process.join(timeout=5)
                logger.warning("handing back task %s, still running at shutdown", slot.task.id)
                self.outcomes.append((slot.task, Outcome(slot.task.id, "requeue")))
                slot.task = None
        try:
            self._flush()
        except Exception:  # noqa: BLE001 - shutting down; the manager recovers what is left
            logger.exception("could not hand back tasks at shutdown")
        for slot in self.slots:
            try:
                _send(slot.conn, "stop")
            except (BrokenPipeError, OSError):
                pass
        deadline = time.monotonic() + 2
        for slot in self.slots:
            slot.process.join(timeout=max(0.0, deadline - time.monotonic()))
            if slot.process.is_alive():
                slot.process.kill()
                slot.process.join(timeout=2)
        try:
            self.source.close()
        except Exception:  # noqa: BLE001
            pass
        try:
            self.rt.storage.unregister_worker(self.worker_id)
        except StorageUnavailable:
            pass
        logger.info(
            "worker %s stopped (%s completed, %s failed)", self.worker_id, self.processed, self.failed
        )
        sys.stdout.flush()
