"""Core's duty units for one RQ worker, and the thread that drives them.

RQ's loop runs one job at a time and cannot be asked to heartbeat, flush or watch; a small
thread does that beside it, every :data:`TICK` seconds, with core's units only:
:class:`Presence` (the worker's row; re-registers when a manager declared it dead),
:class:`CancelWatch` (the cooperative flag a handler reads; after the grace, ``force_stop``),
:class:`ProgressCoalescer` (one batched write per half second) and :class:`OutcomeBuffer`
(batched ``lifecycle.finish``). It also bounds a warm shutdown: a task still running
``shutdown_timeout`` seconds after SIGTERM is stopped through ``force_stop`` too (and handed
back by the worker).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from taskmill.plugin_api import CancelWatch
from taskmill.plugin_api import Outcome
from taskmill.plugin_api import OutcomeBuffer
from taskmill.plugin_api import Presence
from taskmill.plugin_api import ProgressCoalescer
from taskmill.plugin_api import Task
from taskmill.plugin_api import WorkerInfo

__all__ = ["Duties", "TICK"]

logger = logging.getLogger("taskmill.redis.worker")

TICK = 0.1
"""Seconds between two rounds of the duty thread."""


class Duties:
    """Presence, cancel, progress and outcomes of one RQ worker.

    Args:
        runtime: the process's runtime.
        info: the worker's row.
        force_stop: called from the duty thread with ``(task_id, reason)`` to stop a task by
            force (``cancel`` after the grace, ``shutdown`` after the shutdown timeout).
        batch: batch outcomes (False: write each at once, as a work-horse that exits must).
        presence: heartbeat the worker's row (False in a work-horse: its worker does).
    """

    def __init__(
        self,
        runtime: Any,
        info: WorkerInfo,
        force_stop: Callable[[uuid.UUID, str], None] | None = None,
        batch: bool = True,
        presence: bool = True,
    ) -> None:
        s = runtime.settings
        self.rt = runtime
        self.force_stop = force_stop
        self.presence = Presence(runtime.storage, info, s.heartbeat, on_lost=self._lost)
        self.cancels = CancelWatch(runtime.lifecycle, s.cancel_grace)
        self.progress = ProgressCoalescer(runtime.lifecycle)
        self.outcomes = OutcomeBuffer(runtime.lifecycle, info.id, on_written=self._count)
        self.batch = batch
        self.beats = presence
        self.current: uuid.UUID | None = None
        self.processed = 0
        self.failed = 0
        self.stop_requested_at: float | None = None
        self.taken_away: set[uuid.UUID] = set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    # -- the worker's calls -----------------------------------------------------------------------
    def start(self) -> None:
        """Register and start the duty thread (and the outcome buffer's)."""
        self.presence.register()
        if self.batch:
            self.outcomes.start()
        self.start_thread()

    def start_thread(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="taskmill-duties", daemon=True)
        self._thread.start()

    def close(self, unregister: bool = True) -> None:
        """Stop the thread, write what is pending, unregister."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        self.progress.flush()
        self.outcomes.close()
        if unregister:
            self.presence.unregister()

    def started(self, task_id: uuid.UUID) -> None:
        with self._lock:
            self.current = task_id
            self.cancels.started(task_id)

    def finished(self, task_id: uuid.UUID) -> None:
        with self._lock:
            if self.current == task_id:
                self.current = None
            self.cancels.finished(task_id)
            self.progress.forget(task_id)

    def outcome(self, task: Task, outcome: Outcome) -> None:
        """Record how an attempt ended (batched, or at once without batching)."""
        if task.id in self.taken_away:
            self.taken_away.discard(task.id)
            return
        self.outcomes.put(task, outcome)
        if not self.batch:
            self.outcomes.flush()

    def _count(self, written: list[Task]) -> None:
        for t in written:
            if t.status.value == "completed":
                self.processed += 1
            elif t.status.value in ("failed", "scheduled"):
                self.failed += 1

    def _lost(self) -> None:
        current = self.current
        if current is not None:
            self.taken_away.add(current)

    # -- the thread -------------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.wait(TICK):
            try:
                self.tick()
            except Exception:  # noqa: BLE001 - the next tick tries again
                logger.exception("worker duty round failed")

    def tick(self) -> None:
        """One round: heartbeat, cancel flags and forced stops, progress, warm-shutdown bound."""
        current = self.current
        if self.beats and self.presence.due():
            values = {
                "current_task": str(current) if current else None,
                "processed": self.processed,
                "failed": self.failed,
            }
            self.presence.beat(values)
        with self._lock:
            _newly, forced = self.cancels.poll() if current is not None else ([], [])
        for task_id in forced:
            if task_id == self.current and self.force_stop is not None:
                logger.info("task %s did not stop within the cancel grace period; stopping it", task_id)
                self.force_stop(task_id, "cancel")
        if self.progress.due():
            self.progress.flush()
        stop_at = self.stop_requested_at
        if stop_at is not None and current is not None and self.force_stop is not None:
            if time.monotonic() - stop_at >= self.rt.settings.shutdown_timeout:
                logger.warning("task %s still runs after the shutdown timeout; handing it back", current)
                self.stop_requested_at = float("inf")
                self.force_stop(current, "shutdown")
