"""The overview's numbers: one cached aggregate per API process, refreshed at most once a second.

However many browsers poll the overview, each process asks the database at most once per
:data:`REFRESH_INTERVAL` (concurrent requests wait for the one refresh in flight). A refresh costs:

- the exact depth of the unfinished states and the dead letters, per tenant and queue (bounded by
  what is unfinished, through the states' partial indexes), with each queue's oldest queued time;
- the per-minute counts of tasks *created* and *finished* since the start of the minute before the
  last refresh (an index range on ``created_at`` / ``finished_at``); older minutes are kept in memory
  for :data:`HISTORY_MINUTES` and never asked again. The first refresh of a process loads the whole
  history window once;
- the worker list (one row per live worker) and the tenants of their running tasks.

The aggregate covers every tenant; :meth:`Overview.view` cuts out what one principal may see.
"""

from __future__ import annotations

import collections
import datetime as dt
import logging
import threading
import time
import uuid
from typing import Any

from taskmill.plugin_api import utcnow

__all__ = ["Overview", "REFRESH_INTERVAL", "HISTORY_MINUTES", "CHART_MINUTES", "running_ids"]

logger = logging.getLogger("taskmill.web.overview")

REFRESH_INTERVAL = 1.0
"""Seconds between two refreshes of the aggregate in one process, at most."""

HISTORY_MINUTES = 24 * 60
"""Minutes of per-minute history kept (throughput over the last 24 hours)."""

CHART_MINUTES = 60
"""Minutes the chart shows."""

WINDOWS = {"5m": 5, "1h": 60, "24h": HISTORY_MINUTES}
"""The windows of the throughput and failure-rate columns."""

SLACK = dt.timedelta(seconds=2)
"""How far before the last refresh the next one looks again (commits that landed late)."""

FIRST_MINUTES = 60
"""Minutes of history the first refresh reads; a background thread reads the rest of the day."""

DB_SHARE = 0.05
"""Largest share of the time a process spends refreshing: a refresh that took 0.4 s is not
repeated for 8 s (at most once a second however cheap)."""


def running_ids(current_task: str | None) -> list[str]:
    """The task ids a worker reports running (``current_task`` is comma-separated)."""
    return [part.strip() for part in (current_task or "").split(",") if part.strip()]


class Overview:
    """The cached aggregate of one process."""

    def __init__(self, reads: Any, storage: Any) -> None:
        self.reads = reads
        self.storage = storage
        self._lock = threading.Lock()
        self._at = 0.0  # monotonic time of the last refresh
        self._last_wall: dt.datetime | None = None
        # (tenant, queue, kind, minute) → count; kind is "submitted", "completed", "failed", "cancelled"
        self._buckets: dict[tuple[str, str, str, int], int] = {}
        self._live: list[tuple[str, str, str, int, dt.datetime | None]] = []
        self._paused: dict[str, bool] = {}
        self._workers: list[Any] = []
        self._running_tenant: dict[str, str] = {}
        self.interval = REFRESH_INTERVAL
        self.history_ready = False
        self._backfill: threading.Thread | None = None
        self.refreshes = 0
        self.last_refresh_seconds = 0.0
        self.generated_at: dt.datetime | None = None

    # ---- refreshing ------------------------------------------------------------------------------
    def refresh_if_stale(self) -> None:
        """Refresh when the aggregate is older than :data:`REFRESH_INTERVAL` (one thread at a time;
        the others wait and use its result)."""
        if time.monotonic() - self._at < self.interval:
            return
        with self._lock:
            if time.monotonic() - self._at < self.interval:
                return
            started = time.perf_counter()
            self._refresh()
            self.last_refresh_seconds = time.perf_counter() - started
            self.interval = max(REFRESH_INTERVAL, self.last_refresh_seconds / DB_SHARE)
            self.refreshes += 1
            self._at = time.monotonic()

    def _fill_history(self, until: dt.datetime) -> None:
        """Read the day's per-minute counts before ``until`` (the first refresh read after it)."""
        since = until - dt.timedelta(minutes=HISTORY_MINUTES - FIRST_MINUTES)
        try:
            submitted = self.reads.submitted_per_minute(since, until)
            finished = self.reads.finished_per_minute(since, until)
        except Exception:  # noqa: BLE001 - the overview works without the older history
            logger.warning("overview: the 24-hour history could not be read", exc_info=True)
            return
        older: collections.Counter[tuple[str, str, str, int]] = collections.Counter()
        for tenant, queue, minute, n in submitted:
            older[(tenant, queue, "submitted", minute)] += n
        for tenant, queue, status, minute, n in finished:
            older[(tenant, queue, status, minute)] += n
        with self._lock:  # minutes before ``until`` are never rewritten by a refresh
            for key, n in older.items():
                self._buckets.setdefault(key, n)
            self.history_ready = True

    def invalidate(self) -> None:
        """Refresh on the next view (after an action of this process changed what it shows)."""
        self._at = 0.0

    def _refresh(self) -> None:
        now = utcnow()
        if self._last_wall is None:
            since = (now - dt.timedelta(minutes=FIRST_MINUTES)).replace(second=0, microsecond=0)
            self._backfill = threading.Thread(
                target=self._fill_history, args=(since,), name="taskmill-web-history", daemon=True
            )
        else:
            since = (self._last_wall - SLACK).replace(second=0, microsecond=0)
        first_minute = int(since.timestamp()) // 60
        submitted = self.reads.submitted_per_minute(since)
        finished = self.reads.finished_per_minute(since)
        live = self.reads.live_counts()
        paused = self.reads.known_queues()
        workers = self.storage.workers.list()
        ids = []
        for w in workers:
            for value in running_ids(w.current_task):
                try:
                    ids.append(uuid.UUID(value))
                except ValueError:
                    continue
        running = self.storage.tasks.get_many(ids, tenant=None) if ids else []
        # replace the minutes asked again; drop those older than the history
        horizon = int(now.timestamp()) // 60 - HISTORY_MINUTES
        buckets = {k: v for k, v in self._buckets.items() if first_minute > k[3] >= horizon}
        fresh: collections.Counter[tuple[str, str, str, int]] = collections.Counter()
        for tenant, queue, minute, n in submitted:
            fresh[(tenant, queue, "submitted", minute)] += n
        for tenant, queue, status, minute, n in finished:
            fresh[(tenant, queue, status, minute)] += n
        buckets.update(fresh)
        self._buckets = buckets
        self._live = live
        self._paused = paused
        self._workers = workers
        self._running_tenant = {str(t.id): t.tenant for t in running}
        self._last_wall = now
        self.generated_at = now
        if self._backfill is not None and not self._backfill.is_alive() and not self.history_ready:
            self._backfill.start()

    # ---- one principal's view --------------------------------------------------------------------
    def view(self, tenant: str | None) -> dict[str, Any]:
        """What the overview shows to a principal of ``tenant`` (None: an admin, every tenant).

        Returns a JSON-ready dict: ``queues`` (depth, oldest queued age, paused, throughput and
        failure rate per window), ``series`` (per minute, for the chart), ``workers``.
        """
        self.refresh_if_stale()
        now = utcnow()
        now_minute = int(now.timestamp()) // 60
        mine = (lambda t: True) if tenant is None else (lambda t: t == tenant)  # noqa: E731
        queues: dict[str, dict[str, Any]] = {}

        def queue(name: str) -> dict[str, Any]:
            if name not in queues:
                queues[name] = {
                    "name": name,
                    "paused": self._paused.get(name, False),
                    "depth": {s: 0 for s in ("scheduled", "waiting", "queued", "running", "failed")},
                    "oldest_queued_age": None,
                    "windows": {
                        w: {"submitted": 0, "completed": 0, "failed": 0, "cancelled": 0} for w in WINDOWS
                    },
                }
            return queues[name]

        for name in self._paused:
            queue(name)
        for t, q, status, n, oldest in self._live:
            if not mine(t):
                continue
            info = queue(q)
            info["depth"][status] += n
            if oldest is not None:
                age = max(0.0, (now - oldest).total_seconds())
                if info["oldest_queued_age"] is None or age > info["oldest_queued_age"]:
                    info["oldest_queued_age"] = age
        series: dict[str, collections.Counter[int]] = {
            k: collections.Counter() for k in ("submitted", "completed", "failed", "cancelled")
        }
        for (t, q, kind, minute), n in self._buckets.items():
            if not mine(t):
                continue
            age_minutes = now_minute - minute
            info = queue(q)
            for window, minutes in WINDOWS.items():
                if age_minutes < minutes:
                    info["windows"][window][kind] += n
            if age_minutes < CHART_MINUTES:
                series[kind][minute] += n
        for info in queues.values():
            for window, minutes in WINDOWS.items():
                w = info["windows"][window]
                ended = w["completed"] + w["failed"]
                w["throughput_per_min"] = round(w["completed"] / minutes, 2)
                w["failure_rate"] = round(w["failed"] / ended, 4) if ended else None
        minutes = list(range(now_minute - CHART_MINUTES + 1, now_minute + 1))
        workers = []
        for w in self._workers:
            ids = [i for i in running_ids(w.current_task) if i in self._running_tenant]
            ids = [i for i in ids if mine(self._running_tenant[i])]
            beat = w.last_heartbeat
            workers.append(
                {
                    "id": w.id,
                    "host": w.host,
                    "pid": w.pid,
                    "queues": list(w.queues),
                    "concurrency": w.concurrency,
                    "current_tasks": ids,
                    "heartbeat_age": None if beat is None else max(0.0, (now - beat).total_seconds()),
                    "processed": w.processed,
                    "failed": w.failed,
                }
            )
        return {
            "generated_at": self.generated_at.isoformat() if self.generated_at else None,
            "refresh_seconds": round(self.last_refresh_seconds, 4),
            "refresh_interval": round(self.interval, 1),
            "history_ready": self.history_ready,
            "queues": [queues[k] for k in sorted(queues)],
            "series": {
                "minutes": [m * 60 for m in minutes],
                **{k: [series[k].get(m, 0) for m in minutes] for k in ("submitted", "completed", "failed")},
            },
            "workers": workers,
        }
