"""The progress coalescer: what handlers report reaches the API within about a second, batched.

A handler may call ``ctx.progress()`` thousands of times a second. The coalescer keeps the latest
value per task and writes all of them at most every ``interval`` seconds with one
``lifecycle.set_progress({id: value})`` statement, so progress costs at most one write per task
per interval, whatever the handler does.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from taskmill.errors import StorageUnavailable

__all__ = ["ProgressCoalescer", "write_progress"]

logger = logging.getLogger("taskmill.worker")


def write_progress(lifecycle: Any, values: dict[uuid.UUID, float]) -> None:
    """``lifecycle.set_progress(values)`` in one statement (per task on an older lifecycle)."""
    if not values:
        return
    try:
        lifecycle.set_progress(values)
    except TypeError:  # the lifecycle before the batched door: set_progress(task_id, value)
        for task_id, value in values.items():
            lifecycle.set_progress(task_id, value)


class ProgressCoalescer:
    """Latest progress per task, flushed in batches.

    Args:
        lifecycle: the runtime's lifecycle.
        interval: seconds between two writes.
    """

    def __init__(
        self, lifecycle: Any, interval: float = 0.5, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.lifecycle = lifecycle
        self.interval = interval
        self.clock = clock
        self._values: dict[uuid.UUID, float] = {}
        self._lock = threading.Lock()
        self.next_flush = 0.0
        self.writes = 0

    def report(self, task_id: uuid.UUID, value: float) -> None:
        """Remember ``value`` as the task's progress (written at the next flush)."""
        with self._lock:
            if not self._values:
                self.next_flush = max(self.next_flush, self.clock())
            self._values[task_id] = value

    def forget(self, task_id: uuid.UUID) -> None:
        """The task ended: its pending value is not worth a write any more."""
        with self._lock:
            self._values.pop(task_id, None)

    def deadline(self) -> float:
        """When the next flush is due (monotonic; inf when nothing is pending)."""
        return self.next_flush if self._values else float("inf")

    def due(self) -> bool:
        return bool(self._values) and self.clock() >= self.next_flush

    def flush(self) -> int:
        """Write the pending values now (one statement). Returns how many tasks were written."""
        with self._lock:
            values, self._values = self._values, {}
            self.next_flush = self.clock() + self.interval
        if not values:
            return 0
        try:
            write_progress(self.lifecycle, values)
        except StorageUnavailable as exc:
            logger.warning("cannot record progress of %s task(s): %s", len(values), exc)
            return 0
        self.writes += 1
        return len(values)
