"""Presence: a worker's row in the database (register, heartbeat, re-register, unregister).

The manager declares a worker dead when its heartbeat is older than the lease and runs its tasks
again. A worker that was only slow (a long GC pause, a suspended VM) finds its row gone at the
next heartbeat: it registers again and tells its owner, whose running tasks now belong to their
next attempt, so their outcomes must not be recorded (``lifecycle.finish`` would ignore them
anyway: they are no longer held by this worker).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from typing import Any

from taskmill.errors import StorageUnavailable
from taskmill.models import WorkerInfo

__all__ = ["Presence", "workers_store"]

logger = logging.getLogger("taskmill.worker")


def workers_store(storage: Any) -> Any:
    """The storage's workers store (``storage.workers``)."""
    return storage.workers


class Presence:
    """Keeps one worker registered while it runs.

    Args:
        storage: the runtime's storage.
        info: what to register (id, host, pid, queues, concurrency).
        interval: seconds between heartbeats.
        on_lost: called (after registering again) when a heartbeat found the row gone.
        clock: monotonic clock (tests pass their own).
    """

    def __init__(
        self,
        storage: Any,
        info: WorkerInfo,
        interval: float,
        on_lost: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = workers_store(storage)
        self.info = info
        self.interval = interval
        self.on_lost = on_lost
        self.clock = clock
        self.next_beat = 0.0
        self.lost = 0

    @property
    def worker_id(self) -> str:
        return self.info.id

    def register(self) -> None:
        """Write the worker's row (again). Raises StorageUnavailable."""
        self.store.register(dataclasses.replace(self.info))
        self.next_beat = self.clock() + self.interval

    def due(self) -> bool:
        return self.clock() >= self.next_beat

    def beat(self, values: dict[str, Any]) -> bool:
        """Heartbeat now with ``values`` (current_task, processed, failed).

        Returns:
            True when the row was there; False when it was gone (the worker registered again
            and ``on_lost`` ran) or the database could not be reached (logged; tried again at
            the next interval).
        """
        self.next_beat = self.clock() + self.interval
        try:
            if self.store.heartbeat(self.info.id, values):
                return True
            logger.warning("worker %s was declared dead by a manager; registering again", self.info.id)
            self.lost += 1
            self.store.register(dataclasses.replace(self.info))
        except StorageUnavailable as exc:
            logger.warning("heartbeat of worker %s failed: %s", self.info.id, exc)
            return False
        if self.on_lost is not None:
            self.on_lost()
        return False

    def unregister(self) -> None:
        """Remove the row (a clean exit). Never raises for an unreachable database."""
        try:
            self.store.unregister(self.info.id)
        except StorageUnavailable as exc:
            logger.warning("cannot unregister worker %s: %s", self.info.id, exc)
