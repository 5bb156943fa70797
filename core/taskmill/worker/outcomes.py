"""OutcomeBuffer: how attempts ended, written to the database in batches.

A finished task's outcome waits at most ``max_delay`` seconds (or until ``max_batch`` are
pending) and is then written with the others by one ``lifecycle.finish`` (one statement). If the
process dies in between, the task is still ``running`` in the database and the manager runs it
again after the lease: at-least-once, as for any worker that dies mid-task.

The buffer is passive by default (the owner calls :meth:`flush` when :meth:`due`); with
:meth:`start` it flushes from a thread of its own (RQ's loop, which cannot be asked).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from taskmill.errors import StorageUnavailable
from taskmill.logs import task_context
from taskmill.models import Outcome
from taskmill.models import Task

__all__ = ["OutcomeBuffer"]

logger = logging.getLogger("taskmill.worker")


class OutcomeBuffer:
    """Batches ``lifecycle.finish`` for one worker.

    Args:
        lifecycle: the runtime's lifecycle.
        worker_id: the worker whose tasks these are (only tasks it still holds are written).
        max_delay: longest wait of an outcome, in seconds.
        max_batch: flush as soon as this many are pending.
        max_pending: beyond this many unwritten outcomes the buffer is :attr:`backlogged`: its
            producer should take no more tasks until the writer catches up (when the database
            slows down, finished tasks, each with its result, would otherwise pile up in memory,
            and all of them run again if the worker died).
        on_written: called with the tasks written (counters, metrics).
        retries: attempts when the database is unreachable, with a growing pause.
    """

    def __init__(
        self,
        lifecycle: Any,
        worker_id: str,
        max_delay: float = 0.02,
        max_batch: int = 100,
        max_pending: int = 2000,
        on_written: Callable[[list[Task]], None] | None = None,
        retries: int = 10,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.lifecycle = lifecycle
        self.worker_id = worker_id
        self.max_delay = max_delay
        self.max_batch = max_batch
        self.max_pending = max_pending
        self.on_written = on_written
        self.retries = retries
        self.clock = clock
        self._pending: list[tuple[Task, Outcome]] = []
        self._first_at = 0.0
        self._cond = threading.Condition()
        self._write_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._kicked = False

    def __len__(self) -> int:
        return len(self._pending)

    @property
    def backlogged(self) -> bool:
        """True while ``max_pending`` or more outcomes wait to be written."""
        return len(self._pending) >= self.max_pending

    def put(self, task: Task, outcome: Outcome) -> None:
        if outcome.kind in ("failed", "retry"):
            _log_failure(task, outcome, self.worker_id)
        with self._cond:
            if not self._pending:
                self._first_at = self.clock()
            self._pending.append((task, outcome))
            self._cond.notify()

    def due(self) -> bool:
        """True when the oldest pending outcome waited ``max_delay`` or the batch is full."""
        if not self._pending:
            return False
        return len(self._pending) >= self.max_batch or self.clock() - self._first_at >= self.max_delay

    def deadline(self) -> float:
        """When the next flush is due (monotonic; inf when nothing is pending)."""
        return self._first_at + self.max_delay if self._pending else float("inf")

    def flush(self) -> list[Task]:
        """Write everything pending now, in the calling thread. Returns the tasks written."""
        with self._cond:
            batch, self._pending = self._pending, []
        return self._write(batch)

    # -- background mode ------------------------------------------------------------------------
    def start(self) -> None:
        """Flush from a background thread from now on (until :meth:`close`)."""
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="taskmill-outcomes", daemon=True)
        self._thread.start()

    def kick(self) -> None:
        """Background mode: write what is pending now rather than at ``max_delay``."""
        with self._cond:
            self._kicked = True
            self._cond.notify()

    def close(self) -> None:
        """Stop the background thread (if any) and write what is pending."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None
        self.flush()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                while len(self._pending) < self.max_batch and not self._closed and not self._kicked:
                    left = self._first_at + self.max_delay - self.clock()
                    if left <= 0:
                        break
                    self._cond.wait(left)
                self._kicked = False
                batch, self._pending = self._pending, []
            self._write(batch)

    def _write(self, batch: list[tuple[Task, Outcome]]) -> list[Task]:
        if not batch:
            return []
        with self._write_lock:
            for attempt in range(self.retries):
                try:
                    written = self.lifecycle.finish(batch, self.worker_id)
                except StorageUnavailable as exc:
                    logger.warning("cannot record %s outcome(s), retrying: %s", len(batch), exc)
                    time.sleep(min(5.0, 0.2 * 2**attempt))
                    continue
                if self.on_written is not None:
                    self.on_written(written)
                return written
        logger.error("gave up recording %s outcome(s); the manager will recover those tasks", len(batch))
        return []


def _log_failure(task: Task, outcome: Outcome, worker_id: str) -> None:
    """One WARNING line per failed attempt, with the task's fields and the handler's traceback."""
    error = outcome.error or {}
    with task_context(task, worker=worker_id):
        logger.warning(
            "attempt %s of task %s failed: %s: %s",
            task.attempts,
            task.id,
            error.get("type"),
            error.get("message"),
            extra={"traceback": error.get("traceback")} if error.get("traceback") else None,
        )
