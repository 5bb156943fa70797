"""The Redis broker: RQ carries task ids, PostgreSQL stays the source of truth.

``publish`` writes each task's RQ job (id = task id, ``taskmill_redis.jobs.execute(task_id)``),
pushes its id on the RQ list of its priority and rings its queue's bell, in one pipeline round
trip. If Redis is down it raises :class:`~taskmill.errors.BrokerUnavailable`; the lifecycle logs
it and the API still answers 201 (the task is committed and queued in the database).

Nothing accepted is lost (see :mod:`taskmill_redis.reliable`): a task queued in the database is
in a list, in a worker's in-flight list, or in no Redis list at all. ``republish_lost`` (the
manager, for queued tasks older than the re-publish delay) returns the in-flight entries of
workers no longer registered to the front of their lists, then publishes again every given task
it finds in no list (a Redis restart or ``FLUSHALL``, a crash between commit and publish, a
delivery dropped because its queue was paused). Tasks of paused queues are left alone until
``queue_resumed``. A duplicate is harmless: ``lifecycle.start`` is a conditional queued → running
write, so only one delivery runs.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from redis.exceptions import RedisError
from rq.job import Job
from rq.queue import Queue

from taskmill.plugin_api import Broker
from taskmill.plugin_api import BrokerUnavailable
from taskmill.plugin_api import Task
from taskmill.plugin_api import WorkerOptions
from taskmill.plugin_api import utcnow
from taskmill_redis.factory import PRIORITIES
from taskmill_redis.factory import connect
from taskmill_redis.factory import rq_queue_name
from taskmill_redis.factory import split_rq_queue_name
from taskmill_redis.reliable import BELL_MAX
from taskmill_redis.reliable import INFLIGHT_PREFIX
from taskmill_redis.reliable import bell_key
from taskmill_redis.reliable import parse_entry
from taskmill_redis.reliable import reclaim

__all__ = ["RedisBroker"]

logger = logging.getLogger("taskmill.redis.broker")

_QUEUE_PREFIX = Queue.redis_queue_namespace_prefix
_JOB_PREFIX = Job.redis_job_namespace_prefix
_ALL_QUEUES = Queue.redis_queues_keys


class RedisBroker(Broker):
    """Publishes tasks to RQ queues (one per priority level) and runs RQ workers."""

    schemes = ("redis", "rediss")
    durable = False

    def __init__(self, url: str, settings: Any, runtime: Any) -> None:
        super().__init__(url, settings, runtime)
        self._conn: Any = None

    @property
    def connection(self) -> Any:
        """The publisher's Redis client (built on first use, with explicit timeouts)."""
        if self._conn is None:
            self._conn = connect(self.url)
        return self._conn

    # -- publishing ------------------------------------------------------------------------------
    def publish(self, tasks: Sequence[Task]) -> None:
        """Push the tasks' ids onto their lists and ring their queues' bells, in one round trip.

        Only ids travel: the worker builds each RQ job in memory from the id (every job calls
        ``execute(task_id)``) and the database row holds the rest, so no job hash is written.

        Raises:
            BrokerUnavailable: Redis cannot be reached; the tasks stay queued in the database.
        """
        if not tasks:
            return
        lists: dict[str, list[str]] = {}
        rings: dict[str, int] = {}
        for task in tasks:
            key = _QUEUE_PREFIX + rq_queue_name(task.queue, task.priority)
            lists.setdefault(key, []).append(str(task.id))
            rings[task.queue] = rings.get(task.queue, 0) + 1
        try:
            with self.connection.pipeline(transaction=False) as pipe:
                for key, ids in lists.items():
                    pipe.rpush(key, *ids)
                for queue, n in rings.items():
                    pipe.rpush(bell_key(queue), *(["1"] * min(n, BELL_MAX)))
                    pipe.ltrim(bell_key(queue), -BELL_MAX, -1)
                pipe.sadd(_ALL_QUEUES, *sorted(lists))
                pipe.execute()
        except RedisError as exc:
            raise BrokerUnavailable(f"redis unavailable: {exc}") from None

    def republish_lost(self, tasks: Sequence[Task]) -> int:
        """Publish those queued tasks that are in no Redis list.

        First the in-flight lists of workers that are no longer registered in the database
        (their lease ended) go back to the front of their lists; then the lists of the tasks'
        queues and every in-flight list are read (lists first: an id moving from a list to an
        in-flight list between the two reads is seen in the second), and the tasks found in
        none are published again. Tasks of paused queues are skipped (``queue_resumed``).

        Raises:
            BrokerUnavailable: Redis cannot be reached.
        """
        if not tasks:
            return 0
        paused = self._paused()
        tasks = [t for t in tasks if t.queue not in paused]
        if not tasks:
            return 0
        try:
            self.reclaim_dead()
            held = self._held({t.queue for t in tasks})
        except RedisError as exc:
            raise BrokerUnavailable(f"redis unavailable: {exc}") from None
        lost = sorted(
            (t for t in tasks if str(t.id) not in held), key=lambda t: (-t.priority, t.queued_at or utcnow())
        )
        if lost:
            self.publish(lost)
            logger.warning("re-published %s queued task(s) that were in no Redis list", len(lost))
        return len(lost)

    def queue_resumed(self, name: str) -> int:
        """Publish again the queued tasks of a resumed queue that are in no Redis list (workers
        dropped their deliveries while it was paused), highest priority first."""
        queued = self.runtime.storage.tasks.stale_queued(utcnow(), 100_000, queue=name)
        return self.republish_lost(queued)

    def reclaim_dead(self) -> int:
        """Return the in-flight entries of workers not registered in the database to their lists.

        Returns:
            How many ids went back.
        """
        live = {w.id for w in self._workers()}
        conn = self.connection
        moved = 0
        for key in conn.scan_iter(match=INFLIGHT_PREFIX + "*", count=500):
            name = (key.decode() if isinstance(key, bytes) else key)[len(INFLIGHT_PREFIX) :]
            if name not in live:
                moved += reclaim(conn, INFLIGHT_PREFIX + name)
        if moved:
            logger.warning("returned %s id(s) taken by workers that are gone to their queues", moved)
        return moved

    def _held(self, queues: set[str]) -> set[str]:
        """Ids in the priority lists of ``queues`` and in every in-flight list."""
        conn = self.connection
        with conn.pipeline(transaction=False) as pipe:
            for q in sorted(queues):
                for p in PRIORITIES:
                    pipe.lrange(_QUEUE_PREFIX + rq_queue_name(q, p), 0, -1)
            listed = pipe.execute()
        ids = {(x.decode() if isinstance(x, bytes) else x) for ids in listed for x in ids}
        inflight = list(conn.scan_iter(match=INFLIGHT_PREFIX + "*", count=500))
        if inflight:
            with conn.pipeline(transaction=False) as pipe:
                for key in inflight:
                    pipe.lrange(key, 0, -1)
                entries = pipe.execute()
            for group in entries:
                for e in group:
                    ids.add(parse_entry(e.decode() if isinstance(e, bytes) else e)[1])
        return ids

    def _paused(self) -> set[str]:
        storage = self.runtime.storage
        queues = getattr(storage, "queues", None)
        return set(queues.paused() if queues is not None else storage.queues.paused())

    def _workers(self) -> list[Any]:
        storage = self.runtime.storage
        workers = getattr(storage, "workers", None)
        return list(workers.list() if workers is not None else storage.workers.list())

    # -- control -----------------------------------------------------------------------------------
    def request_cancel(self, task: Task) -> None:
        """Nothing to send: the worker's cancel watch reads the database flag (within half a
        second), the handler stops cooperatively, and after ``cancel_grace`` the worker stops it
        by force (see :mod:`taskmill_redis.worker`)."""

    def check(self) -> None:
        """Raise BrokerUnavailable unless Redis answers PING."""
        try:
            self.connection.ping()
        except RedisError as exc:
            raise BrokerUnavailable(f"redis unavailable: {exc}") from None

    def backlog(self) -> dict[str, int]:
        """Job ids waiting in Redis per taskmill queue (all priority levels added up)."""
        try:
            conn = self.connection
            keys = sorted(k.decode() if isinstance(k, bytes) else k for k in conn.smembers(_ALL_QUEUES))
            ours = [(k, split_rq_queue_name(k[len(_QUEUE_PREFIX) :])) for k in keys]
            ours = [(k, parsed) for k, parsed in ours if parsed is not None]
            with conn.pipeline(transaction=False) as pipe:
                for key, _ in ours:
                    pipe.llen(key)
                lengths = pipe.execute()
        except RedisError as exc:
            raise BrokerUnavailable(f"redis unavailable: {exc}") from None
        out: dict[str, int] = {}
        for (_, parsed), n in zip(ours, lengths, strict=True):
            assert parsed is not None
            out[parsed[0]] = out.get(parsed[0], 0) + int(n)
        return out

    def timer(self) -> Any:
        """rq-scheduler times schedule ticks and delayed tasks on this broker (the manager drains its
        reminders; the database decides what fires): see :mod:`taskmill_redis.scheduler`."""
        from taskmill_redis.scheduler import RedisTimer

        return RedisTimer(self)

    def run_worker(self, options: WorkerOptions) -> None:
        """Run RQ workers (one in this process, or RQ's WorkerPool for ``concurrency`` > 1)."""
        from taskmill_redis.worker import run

        run(self, options)

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except RedisError:
                pass
            self._conn = None
