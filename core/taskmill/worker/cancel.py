"""CancelWatch: which running tasks were asked to stop, and which ignored it past the grace.

Cancellation is cooperative first: the handler sees ``ctx.cancel_requested`` and returns. A task
that is still running ``grace`` seconds after the request is stopped by force (the pool kills it
where it can). The watch reads the flags of the tasks it holds in one statement per check, and
looks at a task only once it has run ``first_check`` seconds, so short tasks cost no query.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from collections.abc import Iterable
from typing import Any

from taskmill.errors import StorageUnavailable

__all__ = ["CancelWatch"]

logger = logging.getLogger("taskmill.worker")


class CancelWatch:
    """Tracks cancel requests of the tasks a worker runs.

    Args:
        lifecycle: the runtime's lifecycle (``cancel_requested(ids) -> set``).
        grace: seconds a task may keep running after its cancel request.
        interval: seconds between two checks.
        first_check: a task is checked only after it has run this long.
        clock: monotonic clock.
    """

    def __init__(
        self,
        lifecycle: Any,
        grace: float,
        interval: float = 0.5,
        first_check: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.lifecycle = lifecycle
        self.grace = grace
        self.interval = interval
        self.first_check = first_check
        self.clock = clock
        self._started: dict[uuid.UUID, float] = {}
        self._flagged: dict[uuid.UUID, float] = {}  # task → when the grace ends
        self._forced: set[uuid.UUID] = set()
        self.next_check = 0.0

    # -- what the worker tells it ---------------------------------------------------------------
    def started(self, task_id: uuid.UUID) -> None:
        self._started[task_id] = self.clock()

    def finished(self, task_id: uuid.UUID) -> None:
        self._started.pop(task_id, None)
        self._flagged.pop(task_id, None)
        self._forced.discard(task_id)

    # -- what it tells the worker ---------------------------------------------------------------
    def is_cancelled(self, task_id: uuid.UUID) -> bool:
        """The cooperative flag: True once a cancel request for this task was seen."""
        return task_id in self._flagged

    def due(self) -> float:
        """When the next check or forced stop is due (monotonic time; inf when idle)."""
        if not self._started:
            return float("inf")
        nxt = max(self.next_check, min(self._started.values()) + self.first_check)
        pending = [t for task, t in self._flagged.items() if task not in self._forced]
        return min([nxt, *pending])

    def poll(self) -> tuple[list[uuid.UUID], list[uuid.UUID]]:
        """Check flags if a check is due; return ``(newly_flagged, past_grace)``.

        ``newly_flagged`` tasks should be told to stop (cooperatively); ``past_grace`` tasks
        should be stopped by force now (each is returned once).
        """
        now = self.clock()
        newly: list[uuid.UUID] = []
        if now >= self.next_check:
            ids = [
                t for t, s in self._started.items() if now - s >= self.first_check and t not in self._flagged
            ]
            if ids:
                self.next_check = now + self.interval
                newly = self._check(ids, now)
        forced = [t for t, end in self._flagged.items() if now >= end and t not in self._forced]
        self._forced.update(forced)
        return newly, forced

    def _check(self, ids: Iterable[uuid.UUID], now: float) -> list[uuid.UUID]:
        try:
            flagged = self.lifecycle.cancel_requested(list(ids))
        except StorageUnavailable as exc:
            logger.warning("cannot read cancel flags: %s", exc)
            return []
        newly = [t for t in flagged if t in self._started and t not in self._flagged]
        for t in newly:
            self._flagged[t] = now + self.grace
        return newly
