"""The threads pool: ``concurrency`` threads in the worker process run handlers.

No process hop: a no-op task costs a queue put, a thread switch and a byte on a wake-up pipe,
so short I/O-bound tasks go several times faster than through the prefork pool's pipes. The
price is isolation: a handler that crashes the interpreter or leaks takes the worker with it,
and the GIL serialises CPU-bound handlers (use ``prefork`` for those).

**A thread cannot be killed.** A forced stop (cancel after the grace, timeout) ends the task at
once — it is recorded cancelled or timed out and the worker moves on — but its thread is
*abandoned*: it runs the handler to its end, its result is dropped, and a new thread takes its
slot. When more than :data:`MAX_ABANDONED` threads are still stuck, the pool asks the worker to
recycle its process (warm shutdown: the process exits, the supervisor — ``taskmill run``, systemd,
Kubernetes — starts a fresh one; the stuck threads die with it).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import queue
import threading
import time
import uuid
from collections import deque
from typing import TYPE_CHECKING
from typing import Any

from taskmill.execution import run_handler
from taskmill.models import Outcome
from taskmill.models import Task
from taskmill.worker.pool import Pool
from taskmill.worker.pool import PoolEvent

if TYPE_CHECKING:  # pragma: no cover
    from taskmill.runtime import Runtime

__all__ = ["ThreadPool", "Wakeup", "MAX_ABANDONED"]

logger = logging.getLogger("taskmill.worker.threads")

MAX_ABANDONED = 8
"""Stuck (force-stopped but still running) threads after which the worker recycles itself."""


class Wakeup:
    """A self-pipe: threads append events and poke it; the worker loop waits on its read end."""

    def __init__(self) -> None:
        self.r, self.w = os.pipe()
        os.set_blocking(self.r, False)
        os.set_blocking(self.w, False)
        self.events: deque[PoolEvent] = deque()
        self._poked = False
        self._lock = threading.Lock()

    def put(self, event: PoolEvent) -> None:
        with self._lock:  # without it, a poke could be drained with an earlier event, and lost
            self.events.append(event)
            if self._poked:
                return
            self._poked = True
        try:
            os.write(self.w, b"x")
        except (BlockingIOError, OSError):
            pass

    def take(self) -> list[PoolEvent]:
        with self._lock:
            self._poked = False
            try:
                while os.read(self.r, 4096):
                    pass
            except (BlockingIOError, OSError):
                pass
            out = list(self.events)
            self.events.clear()
        return out

    def close(self) -> None:
        for fd in (self.r, self.w):
            try:
                os.close(fd)
            except OSError:
                pass


@dataclasses.dataclass
class _Job:
    task: Task
    cancelled: bool = False
    abandoned: bool = False
    progress: float | None = None


class ThreadPool(Pool):
    """Handlers on ``concurrency`` threads of the worker process."""

    name = "threads"
    can_force = False

    def __init__(self, runtime: Runtime, concurrency: int) -> None:
        super().__init__(runtime, concurrency)
        self.wakeup = Wakeup()
        self.jobs: dict[uuid.UUID, _Job] = {}
        self.inbox: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self.threads: list[threading.Thread] = []
        self.abandoned = 0
        self._lock = threading.Lock()
        self._progress: dict[uuid.UUID, _Job] = {}
        self.recycle_requested = False

    def start(self) -> None:
        for _ in range(self.concurrency):
            self._spawn()

    def _spawn(self) -> None:
        t = threading.Thread(target=self._thread_main, name="taskmill-thread", daemon=True)
        t.start()
        self.threads.append(t)

    # -- the threads ----------------------------------------------------------------------------
    def _thread_main(self) -> None:
        while True:
            job = self.inbox.get()
            if job is None:
                return
            if job.abandoned:  # stopped before it started: its replacement thread is running
                with self._lock:
                    self.abandoned -= 1
                return
            outcome = self.execute(job)
            if job.abandoned:
                with self._lock:
                    self.abandoned -= 1
                return  # a replacement took this slot
            self.wakeup.put(PoolEvent("done", job.task.id, outcome=outcome))

    def execute(self, job: _Job) -> Outcome:
        return run_handler(
            self.runtime, job.task, report_progress=self._reporter(job), check_cancel=lambda: job.cancelled
        )

    def _reporter(self, job: _Job) -> Any:
        """The handler's ``report_progress``: keeps the latest value and pokes the loop once per
        pending value (the loop reads it when it handles the tick)."""
        tid = job.task.id

        def report(value: float) -> None:
            job.progress = value
            if tid not in self._progress:
                self._progress[tid] = job
                self.wakeup.put(PoolEvent("tick", tid))

        return report

    # -- the loop's side -----------------------------------------------------------------------
    def free(self) -> int:
        return self.concurrency - len(self.jobs)

    def running(self) -> list[Task]:
        return [j.task for j in self.jobs.values()]

    def run(self, task: Task) -> None:
        job = _Job(task)
        self.jobs[task.id] = job
        self.inbox.put(job)

    def waitables(self) -> list[Any]:
        return [self.wakeup.r]

    def events(self, ready: list[Any]) -> list[PoolEvent]:
        out: list[PoolEvent] = []
        for ev in self.wakeup.take():
            if ev.kind == "done":
                if self.jobs.pop(ev.task_id, None) is not None:
                    self._progress.pop(ev.task_id, None)
                    out.append(ev)
            elif ev.kind == "tick":
                job = self._progress.pop(ev.task_id, None)
                if job is not None and job.progress is not None and ev.task_id in self.jobs:
                    out.append(PoolEvent("progress", ev.task_id, value=job.progress))
        return out

    def cancel(self, task_id: uuid.UUID) -> None:
        job = self.jobs.get(task_id)
        if job is not None:
            job.cancelled = True

    def kill(self, task_id: uuid.UUID) -> bool:
        """Forget the task and abandon its thread (it cannot be stopped); a new thread takes the
        slot. Too many stuck threads set :attr:`recycle_requested`."""
        job = self.jobs.pop(task_id, None)
        if job is None:
            return False
        job.cancelled = True
        job.abandoned = True
        with self._lock:
            self.abandoned += 1
            stuck = self.abandoned
        logger.warning("task %s abandoned in its thread (threads cannot be killed); %s stuck", task_id, stuck)
        if stuck > MAX_ABANDONED:
            self.recycle_requested = True
        self._spawn()
        return True

    def close(self, force: bool = False) -> list[Task]:
        stopped = [j.task for j in self.jobs.values()]
        for job in self.jobs.values():
            job.cancelled = True
            job.abandoned = True
        self.jobs.clear()
        for _ in self.threads:
            self.inbox.put(None)
        deadline = time.monotonic() + (0.5 if stopped else 2.0)
        for t in self.threads:
            t.join(timeout=max(0.0, deadline - time.monotonic()))
        self.threads = []
        self.wakeup.close()
        return stopped
