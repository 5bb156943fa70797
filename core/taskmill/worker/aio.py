"""The asyncio pool: ``async def`` handlers on an event loop in the worker process.

The loop runs in a thread of its own beside core's worker loop (which waits on pipes and the
broker's descriptor); sync handlers run in the threads pool beside it. ``concurrency`` counts
every task running at once, async and sync together — hundreds of awaiting tasks are cheap.

A forced stop (cancel after the grace, timeout) of an ``async def`` handler cancels its
:class:`asyncio.Task`: ``CancelledError`` is raised at its next ``await`` and the task ends at
once. A coroutine that blocks the loop without awaiting (``time.sleep``, CPU work) cannot be
stopped and stalls the other async tasks until it returns — use ``await asyncio.sleep`` /
``asyncio.to_thread``, or a sync handler. Sync handlers follow the threads pool's rule (a thread
cannot be killed: the task ends, the thread is abandoned, see :mod:`taskmill.worker.threads`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import uuid
from typing import TYPE_CHECKING
from typing import Any

from taskmill.execution import run_handler_async
from taskmill.models import Task
from taskmill.worker.pool import PoolEvent
from taskmill.worker.threads import ThreadPool
from taskmill.worker.threads import _Job

if TYPE_CHECKING:  # pragma: no cover
    from taskmill.runtime import Runtime

__all__ = ["AsyncioPool"]


@dataclasses.dataclass
class _AsyncJob(_Job):
    future: asyncio.Task[Any] | None = None


class AsyncioPool(ThreadPool):
    """``async def`` handlers on an event loop thread; sync ones on threads beside it."""

    name = "asyncio"
    can_force = True  # async handlers: cancelled at their next await; sync ones: abandoned

    def __init__(self, runtime: Runtime, concurrency: int) -> None:
        super().__init__(runtime, concurrency)
        self.loop = asyncio.new_event_loop()
        self._loop_thread: threading.Thread | None = None
        self._pending: list[_AsyncJob] = []
        self._pending_lock = threading.Lock()

    def start(self) -> None:
        super().start()
        self._loop_thread = threading.Thread(target=self._loop_main, name="taskmill-asyncio", daemon=True)
        self._loop_thread.start()

    def _loop_main(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def _is_async(self, task: Task) -> bool:
        spec = self.runtime.registries.handler(task.type)
        return spec is not None and spec.is_async

    def run(self, task: Task) -> None:
        if not self._is_async(task):
            super().run(task)
            return
        job = _AsyncJob(task)
        self.jobs[task.id] = job
        with self._pending_lock:
            first = not self._pending
            self._pending.append(job)
        if first:  # one wake-up of the loop for a whole dispatch round
            self.loop.call_soon_threadsafe(self._start_pending)

    def _start_pending(self) -> None:
        with self._pending_lock:
            jobs, self._pending = self._pending, []
        for job in jobs:
            if not job.abandoned:
                job.future = self.loop.create_task(self._run_async(job))

    async def _run_async(self, job: _AsyncJob) -> None:
        try:
            report = self._reporter(job)
            outcome = await run_handler_async(
                self.runtime, job.task, report_progress=report, check_cancel=lambda: job.cancelled
            )
        except asyncio.CancelledError:
            return  # stopped by force: the worker loop already recorded how it ended
        if not job.abandoned:
            self.wakeup.put(PoolEvent("done", job.task.id, outcome=outcome))

    def kill(self, task_id: uuid.UUID) -> bool:
        job = self.jobs.get(task_id)
        if not isinstance(job, _AsyncJob):
            return super().kill(task_id)
        self.jobs.pop(task_id, None)
        job.cancelled = True
        job.abandoned = True
        self.loop.call_soon_threadsafe(self._cancel, job)
        return True

    @staticmethod
    def _cancel(job: _AsyncJob) -> None:
        if job.future is not None:
            job.future.cancel()

    def close(self, force: bool = False) -> list[Task]:
        for job in list(self.jobs.values()):
            if isinstance(job, _AsyncJob):
                job.abandoned = True
                self.loop.call_soon_threadsafe(self._cancel, job)
        stopped = super().close(force)
        if self._loop_thread is not None:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._loop_thread.join(timeout=2)
            self._loop_thread = None
        if not self.loop.is_running():
            self.loop.close()
        return stopped
