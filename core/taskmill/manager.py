"""The manager role: a loop of idempotent ticks.

Each tick releases due delayed and retry-waiting tasks, releases tasks whose dependencies are
done (and cancels those whose dependency failed), recovers the tasks of workers that stopped
heartbeating, re-publishes queued tasks a non-durable broker lost, deletes expired results, feeds
the ``taskmill_task_event`` observers (webhooks) from the events journal and prunes the journal.
Every step is a conditional, set-based write, so any number of managers can run at once: a row
that another manager already moved is simply not matched again.
"""

from __future__ import annotations

import datetime as dt
import logging
import signal
import threading
import time
from typing import TYPE_CHECKING
from typing import Any

from taskmill.errors import BrokerUnavailable
from taskmill.errors import StorageUnavailable
from taskmill.journal import JournalFeed
from taskmill.models import utcnow
from taskmill.probes import beat
from taskmill.schedules import timer_for

if TYPE_CHECKING:  # pragma: no cover
    from taskmill.runtime import Runtime

__all__ = ["Manager"]

logger = logging.getLogger("taskmill.manager")


class Manager:
    """Runs :meth:`tick` every ``manager_interval`` seconds until stopped."""

    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime
        self.settings = runtime.settings
        self.lifecycle = runtime.lifecycle
        self.storage = runtime.storage
        self._stop = threading.Event()
        self._last_expiry = 0.0
        self._last_republish = 0.0
        self._last_prune = 0.0
        self.feed = JournalFeed(runtime)

    def stop(self, *_: Any) -> None:
        self._stop.set()

    def run(self) -> None:
        """Tick until SIGTERM/SIGINT."""
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self.stop)
            signal.signal(signal.SIGINT, self.stop)
        logger.info("manager started (tick every %ss)", self.settings.manager_interval)
        while not self._stop.is_set():
            beat()  # liveness: /health/live fails when this loop stops passing
            started = time.monotonic()
            try:
                self.tick()
            except (StorageUnavailable, BrokerUnavailable) as exc:
                logger.warning("manager tick skipped: %s", exc)
            except Exception:  # noqa: BLE001 - a bug in one tick must not stop the manager
                logger.exception("manager tick failed")
            elapsed = time.monotonic() - started
            self._stop.wait(max(0.0, self.settings.manager_interval - elapsed))
        logger.info("manager stopped")

    def tick(self) -> dict[str, int]:
        """One pass of every duty; returns how many tasks each step touched."""
        counts = {
            # due delayed tasks and schedules, timed by the broker's timer or by this tick
            **timer_for(self.rt).tick(),
            "released_waiting": len(self.lifecycle.release_waiting()),
            "cancelled_blocked": self._cancel_blocked(),
            "recovered": self.recover_dead_workers(),
            "republished": self._republish(),
            "expired": self._expire(),
            "events_delivered": self.feed.run_once(),
            "events_pruned": self._prune_events(),
            "workflows_finished": self.storage.workflows.finalize(),
        }
        if any(counts.values()):
            logger.info("manager tick: %s", ", ".join(f"{k}={v}" for k, v in counts.items() if v))
        return counts

    def _cancel_blocked(self) -> int:
        total = 0
        for _ in range(10):  # a failed dependency cancels its dependents' dependents too
            n = len(self.lifecycle.cancel_blocked())
            total += n
            if not n:
                break
        return total

    def recover_dead_workers(self) -> int:
        """Declare workers without a heartbeat for ``worker_lease`` dead; run their tasks again."""
        now = utcnow()
        cutoff = now - dt.timedelta(seconds=self.settings.worker_lease)
        dead = self.storage.workers.dead(cutoff)
        removed = self.storage.workers.remove(dead, cutoff) if dead else []
        tasks = self.storage.tasks.running_of_workers(removed) if removed else []
        # running tasks of a worker that never registered or was already removed
        tasks += [t for t in self.storage.tasks.orphaned_running(cutoff) if t.id not in {x.id for x in tasks}]
        if removed:
            logger.warning(
                "workers %s stopped heartbeating; recovering %s task(s)", ", ".join(removed), len(tasks)
            )
        if not tasks:
            return 0
        return len(self.lifecycle.recover(tasks, "the worker running the task stopped heartbeating"))

    def _republish(self) -> int:
        broker = self.rt.broker
        if broker.durable:
            return 0
        now = time.monotonic()
        if now - self._last_republish < max(1.0, self.settings.republish_after / 3):
            return 0
        self._last_republish = now
        cutoff = utcnow() - dt.timedelta(seconds=self.settings.republish_after)
        stale = self.storage.tasks.stale_queued(cutoff, 5000)
        if not stale:
            return 0
        return broker.republish_lost(stale)

    def _expire(self) -> int:
        now = time.monotonic()
        if now - self._last_expiry < 60:
            return 0
        self._last_expiry = now
        before = utcnow() - dt.timedelta(seconds=self.settings.result_ttl)
        return self.storage.tasks.delete_finished(before, 10_000)

    def _prune_events(self) -> int:
        """Delete journal rows older than ``events_retention`` every 10 s, in batches of 10,000
        while batches come back full (a pass with nothing to prune reads one row)."""
        now = time.monotonic()
        if now - self._last_prune < 10:
            return 0
        self._last_prune = now
        retention = float(getattr(self.settings, "events_retention", 86400.0))
        before = utcnow() - dt.timedelta(seconds=retention)
        total = 0
        for _ in range(50):
            n = self.storage.events.prune(before, 10_000)
            total += n
            if n < 10_000:
                break
        return total
