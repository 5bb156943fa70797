"""The journal feed: ``taskmill_task_event`` observers (webhooks among them) fed from the events
journal, not from the memory of the process that made a change.

Every task change writes its journal row in its own transaction (the stores do it), so an event
is never lost when that process dies right after its commit. The manager runs :class:`JournalFeed`:
it reads the rows after the ``hooks`` cursor, loads their tasks in one query, calls the observers,
then advances the cursor conditionally. The cursor is leased while a batch is delivered, so two
managers never both deliver it; a manager that dies mid-batch leaves it to the next one after the
lease, which delivers it again (observers must be idempotent: webhook deliveries carry an
idempotency key).
"""

from __future__ import annotations

import logging
import os
import socket
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from taskmill.runtime import Runtime

__all__ = ["JournalFeed", "HOOK_EVENTS", "CURSOR"]

logger = logging.getLogger("taskmill.journal")

CURSOR = "hooks"
"""The journal cursor of the ``taskmill_task_event`` feed."""

HOOK_EVENTS = {
    "task.submitted": "submitted",
    "task.started": "started",
    "task.progress": "progress",
    "task.retry_scheduled": "retrying",
    "task.completed": "completed",
    "task.failed": "failed",
    "task.cancelled": "cancelled",
    "task.requeued": "requeued",
}
"""Journal event → the name ``taskmill_task_event`` has always received."""


class JournalFeed:
    """Delivers the journal to ``taskmill_task_event`` observers, batch by batch."""

    def __init__(self, runtime: Runtime, *, batch: int = 500, lease: float = 30.0) -> None:
        self.rt = runtime
        self.events = runtime.storage.events
        self.batch = batch
        self.lease = lease
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{id(self):x}"

    def observed(self) -> bool:
        return bool(self.rt.pm.hook.taskmill_task_event.get_hookimpls())

    def run_once(self, max_batches: int = 20) -> int:
        """Deliver what the journal holds after the cursor (up to ``max_batches`` batches);
        return how many events were delivered by this call."""
        delivered = 0
        for _ in range(max_batches):
            n = self._one_batch()
            if n <= 0:
                break
            delivered += n
        return delivered

    def _one_batch(self) -> int:
        position = self.events.get_cursor(CURSOR)
        if not self.events.read(position, None, 1):
            return 0  # idle: two reads, no write
        position = self.events.lease_cursor(CURSOR, self.owner, self.lease)
        if position is None:
            return -1  # another manager is delivering
        batch = self.events.read(position, None, self.batch)
        if not batch:
            self.events.advance_cursor(CURSOR, position, position, self.owner)
            return 0
        if self.observed():
            ids = list(dict.fromkeys(e.task_id for e in batch))
            tasks = {t.id: t for t in self.rt.storage.tasks.get_many(ids)}
            for e in batch:
                task = tasks.get(e.task_id)
                if task is None:
                    continue  # expired since
                self.rt.host.task_event(task, HOOK_EVENTS.get(e.event, e.event), self.rt)
        if not self.events.advance_cursor(CURSOR, position, batch[-1].id, self.owner):
            logger.warning("journal cursor moved under this manager (lease expired?); batch delivered twice")
        return len(batch)
