"""Helpers for testing taskmill plugins and handlers: a stub broker and a throw-away storage.

For plugin authors (documented in ``docs/plugins.md``)::

    from taskmill.testing import make_runtime, run_worker_until_idle

    def test_thumbnail(tmp_path):
        rt = make_runtime(tmp_path, plugins=[my_plugin])   # SQLite in tmp_path, the stub broker
        [(task, _)] = rt.lifecycle.submit([rt.lifecycle.build({"type": "images.thumbnail"}, "t")])
        run_worker_until_idle(rt)                           # core's worker loop, prefork pool
        assert rt.storage.tasks.get(task.id).status == "completed"
        rt.close()

* :class:`StubBroker` (URL ``stub://<name>``) is an in-memory transport implementing core's
  :class:`~taskmill.worker.transport.Consumer` contract: priority order (FIFO within one),
  ``ack``/``requeue``, a wake-up descriptor, and ``join(queue)`` to wait until the broker holds
  nothing of a queue. Runtimes of one process built on the same URL share its queues (an API
  runtime and a worker runtime in one test). It is not durable: like Redis, the manager's
  re-publish brings back what it does not hold.
* The **test storage** is the SQL plugin on a SQLite file (:func:`test_database_url`): real
  statements, migrations and the events journal, no server; pass ``database_url`` to
  :func:`make_runtime` to use PostgreSQL instead.
* :func:`run_worker_until_idle` runs core's worker loop in burst mode, releasing due retries in
  between, until no task is queued.
"""

from __future__ import annotations

import heapq
import itertools
import os
import select
import tempfile
import threading
import time
import uuid
from collections.abc import Iterable
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from typing import ClassVar

from taskmill.hookspecs import hookimpl
from taskmill.interfaces import Broker
from taskmill.models import Task
from taskmill.models import TaskStatus
from taskmill.models import utcnow
from taskmill.worker.options import WorkerOptions
from taskmill.worker.transport import Delivery

__all__ = [
    "StubBroker",
    "StubConsumer",
    "StubBrokerPlugin",
    "HandlersPlugin",
    "test_database_url",
    "make_runtime",
    "run_worker_until_idle",
]


class _Hub:
    """The queues behind one ``stub://`` URL: a heap per taskmill queue, shared in the process."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.heaps: dict[str, list[tuple[int, int, uuid.UUID]]] = {}
        self.inflight: dict[int, tuple[str, int, uuid.UUID]] = {}  # seq → (queue, priority, id)
        self.seq = itertools.count()
        self.bells: set[int] = set()  # write ends of consumers' wake-up pipes

    def push(self, queue: str, priority: int, task_id: uuid.UUID, seq: int | None = None) -> None:
        with self.cond:
            item = (-int(priority), next(self.seq) if seq is None else seq, task_id)
            heapq.heappush(self.heaps.setdefault(queue, []), item)
            self.cond.notify_all()
            for fd in list(self.bells):
                try:
                    os.write(fd, b"x")
                except (BlockingIOError, OSError):
                    pass

    def pop(self, queues: Sequence[str], limit: int) -> list[Delivery]:
        out: list[Delivery] = []
        with self.cond:
            while len(out) < limit:
                heads = [(h[0], q) for q in queues if (h := self.heaps.get(q))]
                if not heads:
                    break
                (neg, seq, task_id), queue = min(heads)
                heapq.heappop(self.heaps[queue])
                self.inflight[seq] = (queue, -neg, task_id)
                out.append(Delivery(task_id=task_id, queue=queue, token=seq))
        return out

    def held(self) -> set[uuid.UUID]:
        with self.cond:
            ids = {x[2] for h in self.heaps.values() for x in h}
            return ids | {v[2] for v in self.inflight.values()}

    def pending(self, queue: str) -> int:
        with self.cond:
            return len(self.heaps.get(queue, [])) + sum(1 for v in self.inflight.values() if v[0] == queue)


_HUBS: dict[str, _Hub] = {}
_HUBS_LOCK = threading.Lock()


def _hub(url: str) -> _Hub:
    with _HUBS_LOCK:
        return _HUBS.setdefault(url, _Hub())


class StubBroker(Broker):
    """An in-memory broker for tests (``stub://<name>``); see the module docstring."""

    schemes: ClassVar[tuple[str, ...]] = ("stub",)
    durable: ClassVar[bool] = False

    def __init__(self, url: str, settings: Any, runtime: Any) -> None:
        super().__init__(url, settings, runtime)
        self.hub = _hub(url)

    def publish(self, tasks: Sequence[Task]) -> None:
        for t in tasks:
            self.hub.push(t.queue, t.priority, t.id)

    def consumer(self, queues: Sequence[str], worker_id: str, prefetch: int) -> StubConsumer:
        return StubConsumer(self.hub, queues)

    def republish_lost(self, tasks: Sequence[Task]) -> int:
        held = self.hub.held()
        lost = [t for t in tasks if t.id not in held]
        self.publish(sorted(lost, key=lambda t: (-t.priority, t.queued_at or utcnow())))
        return len(lost)

    def queue_resumed(self, name: str) -> int:
        return self.republish_lost([t for t in _queued(self.runtime) if t.queue == name])

    def backlog(self) -> dict[str, int]:
        with self.hub.cond:
            return {q: len(h) for q, h in self.hub.heaps.items() if h}

    def join(self, queue: str, timeout: float = 30.0) -> None:
        """Wait until the broker holds nothing of ``queue`` (every delivery taken and acked).

        Raises:
            TimeoutError: it still holds some after ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        with self.hub.cond:
            while self.hub.pending(queue):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"stub queue {queue!r} still holds {self.hub.pending(queue)} task(s)")
                self.hub.cond.wait(min(left, 0.05))

    def forget(self) -> None:
        """Drop everything this broker's URL holds (a broker restart that loses everything)."""
        with self.hub.cond:
            self.hub.heaps.clear()
            self.hub.inflight.clear()


class StubConsumer:
    """One worker's view of a :class:`StubBroker` (the Consumer contract)."""

    def __init__(self, hub: _Hub, queues: Sequence[str]) -> None:
        self.hub = hub
        self.queues = list(queues)
        self._r, self._w = os.pipe()
        os.set_blocking(self._r, False)
        os.set_blocking(self._w, False)
        self.hub.bells.add(self._w)
        self.mine: set[int] = set()
        self.closed = False

    def receive(self, limit: int, timeout: float) -> list[Delivery]:
        self._drain()
        got = self.hub.pop(self.queues, limit)
        if not got and timeout > 0:
            select.select([self._r], [], [], timeout)
            self._drain()
            got = self.hub.pop(self.queues, limit)
        self.mine.update(d.token for d in got)
        return got

    def _drain(self) -> None:
        try:
            while os.read(self._r, 4096):
                pass
        except (BlockingIOError, OSError):
            pass

    def ack(self, deliveries: Sequence[Delivery]) -> None:
        with self.hub.cond:
            for d in deliveries:
                self.hub.inflight.pop(d.token, None)
                self.mine.discard(d.token)
            self.hub.cond.notify_all()

    def requeue(self, deliveries: Sequence[Delivery]) -> None:
        for d in deliveries:
            with self.hub.cond:
                entry = self.hub.inflight.pop(d.token, None)
                self.mine.discard(d.token)
            if entry is not None:
                self.hub.push(entry[0], entry[1], entry[2], seq=d.token)

    def fileno(self) -> int | None:
        return None if self.closed else self._r

    def close(self) -> None:
        """Deliveries not acked go back to the broker (a closed connection)."""
        if self.closed:
            return
        with self.hub.cond:
            tokens = list(self.mine)
        self.requeue([Delivery(task_id=uuid.uuid4(), queue="", token=t) for t in tokens])
        self.hub.bells.discard(self._w)
        os.close(self._r)
        os.close(self._w)
        self.closed = True


def _queued(runtime: Any) -> list[Task]:
    tasks = getattr(runtime.storage, "tasks", None)
    if tasks is not None:
        return list(tasks.stale_queued(utcnow(), 100_000))
    return list(runtime.storage.tasks.stale_queued(utcnow(), 100_000))


class StubBrokerPlugin:
    """Declares :class:`StubBroker` for ``stub://`` URLs (pass it in ``plugins=``)."""

    @hookimpl
    def taskmill_brokers(self) -> list[type]:
        return [StubBroker]


class HandlersPlugin:
    """Declares the given handlers (``@handler`` functions) as a plugin would."""

    def __init__(self, handlers: Iterable[Any]) -> None:
        self.handlers = list(handlers)

    @hookimpl
    def taskmill_handlers(self) -> list[Any]:
        return self.handlers


def test_database_url(directory: str | Path | None = None) -> str:
    """A SQLite URL in ``directory`` (a new temporary directory when None)."""
    path = Path(directory) if directory is not None else Path(tempfile.mkdtemp(prefix="taskmill-test-"))
    return f"sqlite:///{path / 'taskmill.db'}"


test_database_url.__test__ = False  # type: ignore[attr-defined] - not a pytest test


def make_runtime(
    directory: str | Path | None = None,
    *,
    handlers: Iterable[Any] = (),
    plugins: Iterable[Any] = (),
    broker: str = "stub",
    database_url: str | None = None,
    load_plugins: Sequence[str] = ("sql",),
    **settings: Any,
) -> Any:
    """A migrated runtime for tests: SQLite storage in ``directory`` and the stub broker.

    Args:
        directory: where the SQLite file goes (a new temporary directory when None).
        handlers: ``@handler`` functions to register.
        plugins: more plugin objects (hook implementations).
        broker: ``stub`` (a stub broker of the runtime's own), a ``stub://name`` URL to share one,
            ``sql`` (the database is the queue), or any broker URL.
        database_url: another database (e.g. a scratch PostgreSQL database).
        load_plugins: installed plugins to load (the SQL storage at least).
        **settings: any other :class:`~taskmill.config.Settings` field.

    Returns:
        A :class:`~taskmill.runtime.Runtime`; ``close()`` it at the end.
    """
    from taskmill.config import Settings
    from taskmill.runtime import build_runtime

    url = database_url or test_database_url(directory)
    if broker == "stub":
        broker_url = f"stub://{uuid.uuid4().hex}"
    elif broker == "sql":
        broker_url = ""
    else:
        broker_url = broker
    values: dict[str, Any] = {
        "database_url": url,
        "broker_url": broker_url,
        "load_plugins": tuple(load_plugins),
        "secret_key": "test",
        **settings,
    }
    extra = [StubBrokerPlugin(), *plugins]
    if handlers:
        extra.append(HandlersPlugin(handlers))
    return build_runtime(Settings(**values), plugins=extra, upgrade=True)


def run_worker_until_idle(
    runtime: Any,
    queues: Sequence[str] = ("default",),
    *,
    concurrency: int = 1,
    pool: str = "prefork",
    timeout: float = 60.0,
) -> None:
    """Run core's worker loop (burst mode) until no task of ``queues`` is queued.

    Retries that are due (and tasks whose dependencies completed) are released between rounds;
    tasks scheduled further ahead than the rounds take are left scheduled.

    Raises:
        TimeoutError: tasks are still queued after ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        options = WorkerOptions(queues=list(queues), concurrency=concurrency, burst=True, pool=pool)
        runtime.broker.run_worker(options)
        runtime.lifecycle.release_due()
        runtime.lifecycle.release_waiting()
        left = [t for t in _queued(runtime) if t.queue in queues and t.status is TaskStatus.QUEUED]
        if not left:
            return
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{len(left)} task(s) still queued after {timeout}s")
        if not runtime.broker.durable:
            runtime.broker.republish_lost(left)
