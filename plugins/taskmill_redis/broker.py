"""The Redis broker: RQ carries task ids, PostgreSQL stays the source of truth.

``publish`` writes each task's RQ job (id = task id, ``execute(task_id)``) and pushes its id on
the RQ queue of its priority, all in one pipeline round trip. If Redis is down it raises
:class:`~taskmill.errors.BrokerUnavailable`; the lifecycle logs it and the API still answers 201
(the task is committed and queued in the database), and the manager's ``republish_lost``
publishes it once Redis answers again. ``republish_lost`` publishes only the tasks whose job
Redis no longer holds (a restart without persistence, a crash between commit and publish); a
duplicate delivery is harmless because ``lifecycle.start`` is a conditional queued → running
write.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from redis.exceptions import RedisError
from rq.command import send_command
from rq.job import Job
from rq.queue import Queue

from taskmill.errors import BrokerUnavailable
from taskmill.interfaces import Broker
from taskmill.models import Task
from taskmill.worker import WorkerOptions
from taskmill_redis.factory import connect
from taskmill_redis.factory import make_job
from taskmill_redis.factory import rq_queue_name
from taskmill_redis.factory import split_rq_queue_name

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
        """Write the tasks' RQ jobs and push their ids, in one round trip.

        Raises:
            BrokerUnavailable: Redis cannot be reached; the tasks stay queued in the database.
        """
        if not tasks:
            return
        conn = self.connection
        try:
            with conn.pipeline(transaction=False) as pipe:
                keys: set[str] = set()
                for task in tasks:
                    job = make_job(task, conn)
                    job.save(pipeline=pipe)
                    key = _QUEUE_PREFIX + rq_queue_name(task.queue, task.priority)
                    pipe.rpush(key, job.id)
                    keys.add(key)
                pipe.sadd(_ALL_QUEUES, *sorted(keys))
                pipe.execute()
        except RedisError as exc:
            raise BrokerUnavailable(f"redis unavailable: {exc}") from None

    def republish_lost(self, tasks: Sequence[Task]) -> int:
        """Publish those queued tasks whose RQ job Redis no longer holds.

        A job's hash exists from publish until a worker takes it, so a missing hash means Redis
        lost it (or a worker took it moments ago; publishing again is then harmless, because
        only one delivery can move the task from queued to running).

        Raises:
            BrokerUnavailable: Redis cannot be reached.
        """
        if not tasks:
            return 0
        try:
            with self.connection.pipeline(transaction=False) as pipe:
                for task in tasks:
                    pipe.exists(_JOB_PREFIX + str(task.id))
                held = pipe.execute()
        except RedisError as exc:
            raise BrokerUnavailable(f"redis unavailable: {exc}") from None
        lost = [t for t, present in zip(tasks, held, strict=True) if not present]
        if lost:
            self.publish(lost)
            logger.warning("re-published %s task(s) that Redis no longer held", len(lost))
        return len(lost)

    # -- control -----------------------------------------------------------------------------------
    def request_cancel(self, task: Task) -> None:
        """Send RQ's stop-job command to the worker running the task.

        A forking worker kills the work-horse at once and records the task cancelled; a
        SimpleWorker ignores the command and relies on the cancel flag plus the forced stop
        after ``cancel_grace`` (see :mod:`taskmill_redis.worker`).
        """
        if not task.worker:
            return
        try:
            send_command(self.connection, task.worker, "stop-job", job_id=str(task.id))
        except RedisError as exc:
            logger.warning("cannot send stop-job for task %s: %s", task.id, exc)

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
