"""The one factory for Redis connections, RQ queues and RQ jobs: JSON everywhere.

Every queue, job and worker of this plugin is built here, so the serializer can never differ
between the publisher and the worker (``Job.fetch`` without ``serializer=`` would fall back to
RQ's default, unsafe serializer). Only a task's id travels through Redis; the worker builds the
task's RQ job in memory (:func:`job_for`): id = task id, its only argument that id, calling
:func:`taskmill_redis.jobs.execute` by dotted path.

Priorities: each taskmill queue maps to ten RQ queues, ``<queue>:p9`` … ``<queue>:p0``. A
worker listens to them highest priority first (one ``BLPOP`` over all keys, which Redis serves
in key order), so priority is exact and each RQ queue is FIFO.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from redis import Redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry
from rq.job import Job
from rq.job import JobStatus
from rq.queue import Queue
from rq.serializers import JSONSerializer

__all__ = [
    "EXECUTE",
    "SERIALIZER",
    "PRIORITIES",
    "FAILURE_TTL",
    "rq_queue_name",
    "split_rq_queue_name",
    "listen_order",
    "connect",
    "make_queue",
    "job_for",
    "fetch_job",
]

EXECUTE = "taskmill_redis.jobs.execute"
"""Dotted path of the function every RQ job calls, with the task id as its only argument."""

SERIALIZER = JSONSerializer
"""RQ's JSON serializer, for every queue, job and worker of this plugin."""

PRIORITIES = tuple(range(9, -1, -1))
"""Task priorities, highest first: the order in which a worker listens."""

FAILURE_TTL = 60
"""Seconds RQ keeps a failed job's record; PostgreSQL keeps the real outcome."""

CONNECT_TIMEOUT = 2.0
"""Seconds to open a connection to Redis (redis-py 8 defaults to 5 s and 10 retries)."""

COMMAND_TIMEOUT = 5.0
"""Seconds a non-blocking command may take (publish, checks, backlog)."""


def rq_queue_name(queue: str, priority: int) -> str:
    """The RQ queue carrying ``queue``'s tasks of ``priority``."""
    return f"{queue}:p{int(priority)}"


def split_rq_queue_name(name: str) -> tuple[str, int] | None:
    """``("default", 5)`` for ``"default:p5"``; None for a queue this plugin did not name."""
    base, sep, prio = name.rpartition(":p")
    if not sep or not prio.isdigit():
        return None
    return base, int(prio)


def listen_order(queues: Sequence[str]) -> list[str]:
    """RQ queue names a worker listens to: every priority level of every queue, highest first."""
    return [rq_queue_name(q, p) for p in PRIORITIES for q in queues]


def connect(url: str, *, socket_timeout: float | None = COMMAND_TIMEOUT) -> Redis:
    """A Redis client with explicit timeouts and one quick retry.

    redis-py 8 defaults to 5 s timeouts with 10 jittered retries, so a call against a dead Redis
    hangs for about a minute; here a refused connection fails in milliseconds and an unreachable
    host within ``CONNECT_TIMEOUT`` twice.

    Args:
        url: ``redis://`` or ``rediss://`` URL.
        socket_timeout: read timeout in seconds (a worker passes more than its BLPOP timeout).
    """
    return Redis.from_url(
        url,
        socket_connect_timeout=CONNECT_TIMEOUT,
        socket_timeout=socket_timeout,
        socket_keepalive=True,
        retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), 1),
        health_check_interval=30,
    )


def make_queue(name: str, connection: Redis, **kwargs: Any) -> Queue:
    """An RQ queue with the JSON serializer."""
    return Queue(name, connection=connection, serializer=SERIALIZER, **kwargs)


def job_for(job_id: str, queue: Queue, connection: Redis) -> Job:
    """The in-memory RQ job of a taken task id (nothing is read from Redis): ``execute(task_id)``.

    The worker runs it with the timeout of the task's row (started in the database)."""
    return Job.create(
        EXECUTE,
        args=[job_id],
        connection=connection,
        id=job_id,
        result_ttl=0,
        failure_ttl=FAILURE_TTL,
        origin=queue.name,
        serializer=SERIALIZER,
        status=JobStatus.QUEUED,
    )


def fetch_job(job_id: str, connection: Redis) -> Job:
    """Fetch a job with the JSON serializer (``Job.fetch`` alone would use RQ's unsafe default)."""
    return Job.fetch(job_id, connection=connection, serializer=SERIALIZER)
