"""Prometheus metrics counted by every role.

When ``PROMETHEUS_MULTIPROC_DIR`` is set (``taskmill run`` and ``taskmill api`` set it), values
are shared through files so that the api's ``/metrics`` shows what every process counted.
Gauges computed from the database (queue depth, dead letters, workers) are collected at scrape
time by :class:`DatabaseCollector`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry
from prometheus_client import Counter
from prometheus_client import Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:  # pragma: no cover
    from taskmill.runtime import Runtime

__all__ = ["submitted", "finished", "waited", "scrape_registry", "DatabaseCollector"]

_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900)

TASKS_SUBMITTED = Counter("taskmill_tasks_submitted_total", "Tasks accepted by the API.", ["queue", "type"])
TASKS_FINISHED = Counter(
    "taskmill_tasks_finished_total", "Tasks that reached a final state.", ["queue", "type", "status"]
)
TASK_DURATION = Histogram(
    "taskmill_task_duration_seconds", "Run time of finished attempts.", ["queue", "type"], buckets=_BUCKETS
)
TASK_WAIT = Histogram(
    "taskmill_task_wait_seconds", "Time from queued to started.", ["queue"], buckets=_BUCKETS
)


def submitted(queue: str, type_: str) -> None:
    TASKS_SUBMITTED.labels(queue, type_).inc()


def finished(queue: str, type_: str, status: str, duration: float | None = None) -> None:
    TASKS_FINISHED.labels(queue, type_, status).inc()
    if duration is not None:
        TASK_DURATION.labels(queue, type_).observe(duration)


def waited(queue: str, seconds: float) -> None:
    TASK_WAIT.labels(queue).observe(max(0.0, seconds))


class DatabaseCollector(Collector):
    """Queue depth, dead letters and live workers, read from the database at scrape time."""

    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime

    def collect(self) -> Iterator[GaugeMetricFamily]:
        depth = GaugeMetricFamily(
            "taskmill_queue_depth", "Tasks per queue and state.", labels=["queue", "status"]
        )
        dead = GaugeMetricFamily("taskmill_dead_letters", "Failed tasks per queue.", labels=["queue"])
        workers = GaugeMetricFamily(
            "taskmill_workers", "Live workers listening to a queue.", labels=["queue"]
        )
        backlog = GaugeMetricFamily(
            "taskmill_broker_backlog", "Messages waiting in the broker.", labels=["queue"]
        )
        try:
            stats = self.rt.storage.queue_stats(None)
            live = self.rt.storage.list_workers()
        except Exception:  # noqa: BLE001 - a scrape must not fail because the database is down
            return
        for q in stats:
            for status, n in q.depth.items():
                depth.add_metric([q.name, status], n)
            dead.add_metric([q.name], q.depth.get("failed", 0))
        per_queue: dict[str, int] = {}
        for w in live:
            for name in w.queues:
                per_queue[name] = per_queue.get(name, 0) + 1
        for name, n in per_queue.items():
            workers.add_metric([name], n)
        try:
            for name, n in self.rt.broker.backlog().items():
                backlog.add_metric([name], n)
        except Exception:  # noqa: BLE001
            pass
        yield from (depth, dead, workers, backlog)


def scrape_registry(runtime: Runtime) -> CollectorRegistry:
    """The registry one scrape reads: every process's counters plus the database gauges."""
    from prometheus_client import REGISTRY

    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        registry = CollectorRegistry()
        for collector in list(REGISTRY._collector_to_names):  # noqa: SLF001
            registry.register(collector)
    registry.register(DatabaseCollector(runtime))
    return registry
