"""The manager role: a loop of idempotent ticks.

Each tick releases due delayed and retry-waiting tasks, releases tasks whose dependencies are
done (and cancels those whose dependency failed), recovers the tasks of workers that stopped
heartbeating, re-publishes queued tasks a non-durable broker lost, and deletes expired results.
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
from taskmill.models import utcnow

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

    def stop(self, *_: Any) -> None:
        self._stop.set()

    def run(self) -> None:
        """Tick until SIGTERM/SIGINT."""
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self.stop)
            signal.signal(signal.SIGINT, self.stop)
        logger.info("manager started (tick every %ss)", self.settings.manager_interval)
        while not self._stop.is_set():
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
            "released_due": len(self.lifecycle.release_due()),
            "released_waiting": len(self.lifecycle.release_waiting()),
            "cancelled_blocked": self._cancel_blocked(),
            "recovered": self.recover_dead_workers(),
            "republished": self._republish(),
            "expired": self._expire(),
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
        dead = self.storage.dead_workers(cutoff)
        removed = self.storage.remove_workers(dead, cutoff) if dead else []
        tasks = self.storage.running_of_workers(removed) if removed else []
        # running tasks of a worker that never registered or was already removed
        tasks += [t for t in self.storage.orphaned_running(cutoff) if t.id not in {x.id for x in tasks}]
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
        stale = self.storage.stale_queued(cutoff, 5000)
        if not stale:
            return 0
        return broker.republish_lost(stale)

    def _expire(self) -> int:
        now = time.monotonic()
        if now - self._last_expiry < 60:
            return 0
        self._last_expiry = now
        before = utcnow() - dt.timedelta(seconds=self.settings.result_ttl)
        return self.storage.delete_finished(before, 10_000)
