"""Prometheus metrics counted by every role, and the cluster gauges every role exports.

Counters and histograms (submitted, finished, run time, wait time) and the per-worker resource
gauges are counted in the process where things happen. When ``PROMETHEUS_MULTIPROC_DIR`` is set
(``taskmill api``, ``taskmill run`` and the container image set it) values are shared through
files, so one ``/metrics`` shows what every process of the machine (or pod) counted.

Gauges about the whole installation (queue depth, oldest queued age, dead letters, workers,
broker backlog) come from one :class:`Snapshot` that :class:`ClusterStats` computes at most
every :data:`REFRESH_SECONDS` (longer when it is costly, see :data:`COST_FACTOR`): the manager
refreshes it on a timer and publishes it (to a file in the multiprocess directory, and to the
settings store when the storage has one), and a scrape reads the published snapshot. A scrape
computes it itself only when nobody published a fresh one (no manager running), and then only one
thread of one process of the machine does, at most once per period. A scrape therefore never
counts rows per queue.

Every role exports the same cluster gauges: aggregate them with ``max by (queue, …)``, never
``sum`` (docs/operations.md).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import logging
import os
import threading
import time
import weakref
from collections.abc import Iterator
from typing import TYPE_CHECKING
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client import Counter
from prometheus_client import Gauge
from prometheus_client import Histogram
from prometheus_client import ProcessCollector
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from taskmill.procfs import process_tree_usage

if TYPE_CHECKING:  # pragma: no cover
    from taskmill.runtime import Runtime

__all__ = [
    "REFRESH_SECONDS",
    "ClusterStats",
    "ResourceSampler",
    "Snapshot",
    "cluster_stats",
    "finished",
    "scrape_registry",
    "submitted",
    "waited",
]

logger = logging.getLogger("taskmill.metrics")

REFRESH_SECONDS = 5.0
"""Age of the cluster snapshot after which it is computed again (at the earliest)."""

COST_FACTOR = 10.0
"""A snapshot that took ``d`` seconds to compute is kept ``COST_FACTOR × d`` seconds at least, so
its computation never takes more than a tenth of one database connection's time (at 1,000,000
tasks, ~1.5 s: refreshed every ~15 s instead of 5)."""

SNAPSHOT_FILE = "taskmill-cluster.json"
"""File in ``PROMETHEUS_MULTIPROC_DIR`` through which the processes of a machine share it."""

SNAPSHOT_SETTING = "metrics.cluster_snapshot"
"""Key under which the snapshot is published to the settings store (every machine reads it)."""

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
WORKER_CPU = Counter(
    "taskmill_worker_cpu_seconds_total",
    "CPU time (user + system) of a worker and its pool processes.",
    ["worker"],
)
WORKER_RSS = Gauge(
    "taskmill_worker_resident_memory_bytes",
    "Resident memory of a worker and its pool processes (shared pages counted once).",
    ["worker"],
    multiprocess_mode="livemax",
)
WORKER_CONCURRENCY = Gauge(
    "taskmill_worker_concurrency",
    "Tasks a worker runs at once (its pool size).",
    ["worker"],
    multiprocess_mode="livemax",
)
WORKER_PROCESSES = Gauge(
    "taskmill_worker_processes",
    "Processes of a worker (itself and its pool).",
    ["worker"],
    multiprocess_mode="livemax",
)


_children: dict[tuple[int, tuple[str, ...]], Any] = {}

_WRITES = threading.Lock()
"""Held around every metric write of this module, and taken by :func:`os.fork` before it forks.

prometheus_client guards each value with a lock (in multiprocess mode one lock for every value of
the process, "as we presume there is no threading going on"). A fork while another thread held it
— the resource sampler's first sample as RQ's WorkerPool forked its workers, seen once in the
end-to-end suite — left the child's copy locked forever: the child hung at its first metric write,
right after starting its first task. With this lock no thread is inside a write when a process
forks."""
os.register_at_fork(before=_WRITES.acquire, after_in_parent=_WRITES.release, after_in_child=_WRITES.release)


def _child(metric: Any, *labels: str) -> Any:
    """``metric.labels(*labels)``, looked up once: ``labels()`` costs as much as the increment
    (scripts/bench_overhead.py). A child survives a fork: prometheus_client moves its value to
    the new process's file on the child's first write."""
    key = (id(metric), labels)
    child = _children.get(key)
    if child is None:
        child = _children[key] = metric.labels(*labels)
    return child


def submitted(queue: str, type_: str) -> None:
    with _WRITES:
        _child(TASKS_SUBMITTED, queue, type_).inc()


def finished(queue: str, type_: str, status: str, duration: float | None = None) -> None:
    with _WRITES:
        _child(TASKS_FINISHED, queue, type_, status).inc()
        if duration is not None:
            _child(TASK_DURATION, queue, type_).observe(duration)


def waited(queue: str, seconds: float) -> None:
    with _WRITES:
        _child(TASK_WAIT, queue).observe(max(0.0, seconds))


# ---- the cluster snapshot -----------------------------------------------------------------------


@dataclasses.dataclass
class Snapshot:
    """What the cluster gauges show, as one JSON-serialisable value."""

    computed_at: float
    """Unix time of the computation."""
    duration: float
    """Seconds the computation took (database and broker time)."""
    depth: dict[str, dict[str, int]]
    """Tasks per queue and state."""
    oldest_queued_age: dict[str, float]
    """Seconds the oldest queued task of each queue has waited, at ``computed_at``."""
    paused: dict[str, bool]
    workers: dict[str, int]
    """Live workers listening to each queue."""
    backlog: dict[str, int]
    """Messages waiting in the broker per queue (empty for the SQL broker)."""

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> Snapshot | None:
        try:
            data = json.loads(text)
            return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls)})
        except (ValueError, KeyError, TypeError):
            return None

    @property
    def age(self) -> float:
        return max(0.0, time.time() - self.computed_at)


def _queue_stats(storage: Any) -> list[Any]:
    queues = getattr(storage, "queues", None)
    if queues is not None and hasattr(queues, "stats"):
        return list(queues.stats(None))
    return list(storage.queues.stats(None))


def _live_workers(storage: Any) -> list[Any]:
    workers = getattr(storage, "workers", None)
    if workers is not None and hasattr(workers, "list"):
        return list(workers.list())
    return list(storage.workers.list())


def compute_snapshot(runtime: Runtime) -> Snapshot:
    """Read the queue statistics, the live workers and the broker backlog (one aggregate each).

    Raises:
        StorageUnavailable: the database does not answer.
    """
    started = time.perf_counter()
    stats = _queue_stats(runtime.storage)
    live = _live_workers(runtime.storage)
    try:
        backlog = dict(runtime.broker.backlog())
    except Exception as exc:  # noqa: BLE001 - the backlog is optional; the broker may be down
        logger.debug("broker backlog unavailable: %s", exc)
        backlog = {}
    per_queue: dict[str, int] = {}
    for w in live:
        for name in w.queues:
            per_queue[name] = per_queue.get(name, 0) + 1
    return Snapshot(
        computed_at=time.time(),
        duration=time.perf_counter() - started,
        depth={q.name: {str(k): int(v) for k, v in q.depth.items()} for q in stats},
        oldest_queued_age={
            q.name: float(q.oldest_queued_age) for q in stats if q.oldest_queued_age is not None
        },
        paused={q.name: bool(q.paused) for q in stats},
        workers=per_queue,
        backlog={str(k): int(v) for k, v in backlog.items()},
    )


class ClusterStats:
    """The cluster snapshot of one process: in memory, in the machine's file, in the settings store.

    Args:
        runtime: the process's runtime.
        max_age: a snapshot younger than this is served as it is.
        directory: where the machine's processes share it (default ``PROMETHEUS_MULTIPROC_DIR``).
    """

    def __init__(
        self, runtime: Runtime, max_age: float = REFRESH_SECONDS, directory: str | None = None
    ) -> None:
        self._rt = weakref.ref(runtime)
        self.max_age = max_age
        directory = directory if directory is not None else os.environ.get("PROMETHEUS_MULTIPROC_DIR", "")
        self.path = os.path.join(directory, SNAPSHOT_FILE) if directory else ""
        self._last: Snapshot | None = None
        self._lock = threading.Lock()
        self.computed = 0
        """How many times this process computed the snapshot (tests read it)."""

    # -- reading ---------------------------------------------------------------------------------
    def get(self) -> Snapshot | None:
        """The freshest snapshot available; computed here only when none is fresh enough.

        Never raises: when the database is down the last snapshot (or None) is returned, and its
        age tells how old it is.
        """
        if self._fresh(self._last):
            return self._last
        for candidate in (self._read_file(), self._read_store()):
            if self._newer(candidate):
                self._last = candidate
        if self._fresh(self._last):
            return self._last
        if not self._lock.acquire(blocking=False):
            return self._last  # another thread of this process is computing it
        try:
            with self._machine_lock() as mine:
                if not mine:
                    return self._last  # another process of this machine is computing it
                current = self._read_file()  # it may have finished while we waited for the lock
                if self._newer(current):
                    self._last = current
                if not self._fresh(self._last):
                    self.refresh()
        finally:
            self._lock.release()
        return self._last

    def period(self, snap: Snapshot | None) -> float:
        """How long ``snap`` is served before it is computed again."""
        return max(self.max_age, COST_FACTOR * snap.duration) if snap is not None else self.max_age

    def _fresh(self, snap: Snapshot | None) -> bool:
        return snap is not None and snap.age < self.period(snap)

    def _newer(self, snap: Snapshot | None) -> bool:
        return snap is not None and (self._last is None or snap.computed_at > self._last.computed_at)

    def _read_file(self) -> Snapshot | None:
        if not self.path:
            return None
        try:
            with open(self.path, encoding="utf-8") as fh:
                return Snapshot.from_json(fh.read())
        except OSError:
            return None

    @property
    def rt(self) -> Runtime:
        rt = self._rt()
        if rt is None:  # pragma: no cover - the runtime is gone with its last user
            raise RuntimeError("the runtime of these statistics is gone")
        return rt

    def _settings_store(self) -> Any:
        store = getattr(self.rt.storage, "settings", None)
        if store is None or not (hasattr(store, "get") and hasattr(store, "set")):
            return None
        return store

    def _read_store(self) -> Snapshot | None:
        store = self._settings_store()
        if store is None:
            return None
        try:
            value = store.get(SNAPSHOT_SETTING)
        except Exception as exc:  # noqa: BLE001 - a scrape must not fail because the database is down
            logger.debug("cannot read the published snapshot: %s", exc)
            return None
        return Snapshot.from_json(value) if isinstance(value, str) else None

    @contextlib.contextmanager
    def _machine_lock(self) -> Iterator[bool]:
        if not self.path:
            yield True
            return
        try:
            fh = open(self.path + ".lock", "a")  # noqa: SIM115 - held for the block below
        except OSError:
            yield True
            return
        try:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)
        finally:
            fh.close()

    # -- computing -------------------------------------------------------------------------------
    def refresh(self) -> Snapshot | None:
        """Compute the snapshot now and publish it (the manager calls this on a timer)."""
        try:
            snap = compute_snapshot(self.rt)
        except Exception as exc:  # noqa: BLE001 - reported as a stale snapshot and storage_up 0
            logger.warning("cannot compute the queue statistics: %s", exc)
            return None
        self.computed += 1
        self._last = snap
        self._publish(snap)
        return snap

    def _publish(self, snap: Snapshot) -> None:
        text = snap.to_json()
        if self.path:
            tmp = f"{self.path}.{os.getpid()}.tmp"
            try:
                with open(tmp, "w", encoding="utf-8") as fh:
                    fh.write(text)
                os.replace(tmp, self.path)
            except OSError as exc:
                logger.warning("cannot write %s: %s", self.path, exc)
        store = self._settings_store()
        if store is not None:
            try:
                store.set(SNAPSHOT_SETTING, text)
            except Exception as exc:  # noqa: BLE001 - the next refresh tries again
                logger.warning("cannot publish the queue statistics: %s", exc)

    def run_refresher(self, stop: threading.Event) -> threading.Thread:
        """Refresh every :meth:`period` seconds in a daemon thread until ``stop`` is set."""

        def loop() -> None:
            while not stop.is_set():
                # computes only when no fresh snapshot is published (another manager's counts)
                snap = self.get()
                left = self.period(snap) - snap.age if snap is not None else self.max_age
                stop.wait(max(0.5, left))

        thread = threading.Thread(target=loop, name="taskmill-cluster-stats", daemon=True)
        thread.start()
        return thread


_STATS: weakref.WeakKeyDictionary[Any, ClusterStats] = weakref.WeakKeyDictionary()
_STATS_LOCK = threading.Lock()


def cluster_stats(runtime: Runtime) -> ClusterStats:
    """The one :class:`ClusterStats` of ``runtime`` in this process."""
    with _STATS_LOCK:
        stats = _STATS.get(runtime)
        if stats is None:
            stats = _STATS[runtime] = ClusterStats(runtime)
        return stats


class ClusterCollector(Collector):
    """Yields the cluster gauges from the snapshot, and whether storage and broker answer."""

    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime

    def collect(self) -> Iterator[GaugeMetricFamily]:
        from taskmill.probes import component_status

        snap = cluster_stats(self.rt).get()
        families = {
            "depth": GaugeMetricFamily(
                "taskmill_queue_depth", "Tasks per queue and state.", labels=["queue", "status"]
            ),
            "oldest": GaugeMetricFamily(
                "taskmill_queue_oldest_age_seconds",
                "Seconds the oldest queued task of a queue has waited.",
                labels=["queue"],
            ),
            "dead": GaugeMetricFamily("taskmill_dead_letters", "Failed tasks per queue.", labels=["queue"]),
            "paused": GaugeMetricFamily(
                "taskmill_queue_paused", "1 when a queue is paused.", labels=["queue"]
            ),
            "workers": GaugeMetricFamily(
                "taskmill_workers", "Live workers listening to a queue.", labels=["queue"]
            ),
            "backlog": GaugeMetricFamily(
                "taskmill_broker_backlog", "Messages waiting in the broker.", labels=["queue"]
            ),
        }
        if snap is not None:
            for queue, by_status in sorted(snap.depth.items()):
                for status, n in sorted(by_status.items()):
                    families["depth"].add_metric([queue, status], n)
                families["dead"].add_metric([queue], by_status.get("failed", 0))
                families["oldest"].add_metric(
                    [queue],
                    snap.oldest_queued_age[queue] + snap.age if queue in snap.oldest_queued_age else 0,
                )
                families["paused"].add_metric([queue], 1 if snap.paused.get(queue) else 0)
            for queue, n in sorted(snap.workers.items()):
                families["workers"].add_metric([queue], n)
            for queue, n in sorted(snap.backlog.items()):
                families["backlog"].add_metric([queue], n)
        yield from families.values()
        age = GaugeMetricFamily(
            "taskmill_stats_age_seconds", "Age of the queue statistics these gauges show."
        )
        age.add_metric([], snap.age if snap is not None else float("inf"))
        yield age
        took = GaugeMetricFamily(
            "taskmill_stats_compute_seconds", "Seconds the last computation of the queue statistics took."
        )
        if snap is not None:
            took.add_metric([], snap.duration)
        yield took
        status = component_status(self.rt)
        for name in ("storage", "broker"):
            up = GaugeMetricFamily(f"taskmill_{name}_up", f"1 when this process reaches the {name}.")
            up.add_metric([], 1 if status[name] == "ok" else 0)
            yield up


# ---- worker resources ---------------------------------------------------------------------------


class ResourceSampler:
    """Samples the CPU time and memory of this worker process and its pool every ``interval`` s.

    The worker id is read from ``runtime.worker_id`` at each sample (the worker role sets it).
    """

    def __init__(self, runtime: Runtime, interval: float = REFRESH_SECONDS) -> None:
        self.rt = runtime
        self.interval = interval
        self._cpu_seen = 0.0
        self._worker = ""

    def sample(self) -> None:
        worker = self.rt.worker_id
        if not worker:
            return
        usage = process_tree_usage(os.getpid())
        if usage is None:
            return
        cpu, rss, count = usage
        with _WRITES:
            if worker != self._worker:  # a new id after re-registering: its counter starts here
                self._worker, self._cpu_seen = worker, 0.0
            if cpu > self._cpu_seen:  # a dying child's time moves to the parent a moment later
                WORKER_CPU.labels(worker).inc(cpu - self._cpu_seen)
                self._cpu_seen = cpu
            WORKER_RSS.labels(worker).set(rss)
            WORKER_PROCESSES.labels(worker).set(count)
            WORKER_CONCURRENCY.labels(worker).set(self.rt.settings.concurrency)

    def run(self, stop: threading.Event) -> threading.Thread:
        def loop() -> None:
            while not stop.is_set():
                try:
                    self.sample()
                except Exception:  # noqa: BLE001 - sampling must never stop the worker
                    logger.exception("resource sampling failed")
                stop.wait(self.interval)

        thread = threading.Thread(target=loop, name="taskmill-resources", daemon=True)
        thread.start()
        return thread


# ---- the registry of one scrape -----------------------------------------------------------------

_LOCAL = CollectorRegistry(auto_describe=True)
"""This process's own counters when no multiprocess directory is set."""
for _metric in (
    TASKS_SUBMITTED,
    TASKS_FINISHED,
    TASK_DURATION,
    TASK_WAIT,
    WORKER_CPU,
    WORKER_RSS,
    WORKER_CONCURRENCY,
    WORKER_PROCESSES,
):
    _LOCAL.register(_metric)
_LOCAL.register(ProcessCollector(registry=None))


def scrape_registry(runtime: Runtime) -> CollectorRegistry:
    """The registry one scrape reads: every process's counters plus the cluster gauges."""
    registry = CollectorRegistry()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.MultiProcessCollector(registry)
    else:
        registry.register(_LocalCollector())
    registry.register(ClusterCollector(runtime))
    return registry


class _LocalCollector(Collector):
    def collect(self) -> Iterator[Any]:
        yield from _LOCAL.collect()
