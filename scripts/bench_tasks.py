"""No-op jobs for ``scripts/bench_redis.py``: plain RQ and Celery run these (taskmill runs ``echo``)."""

from __future__ import annotations

import os
import time

import redis
from celery import Celery

__all__ = ["noop", "stamp", "app", "celery_noop", "celery_stamp"]

_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
_conn = redis.Redis.from_url(_URL, socket_timeout=5, socket_connect_timeout=2)


def noop() -> None:
    """Do nothing (drain rate)."""


def stamp(key: str) -> None:
    """Record when the job started (latency)."""
    _conn.set(key, repr(time.time()), ex=600)


app = Celery("bench_tasks", broker=_URL)
app.conf.update(
    task_ignore_result=True, worker_hijack_root_logger=False, broker_connection_retry_on_startup=True
)


@app.task(name="bench.noop")
def celery_noop() -> None:
    """Do nothing (drain rate)."""


@app.task(name="bench.stamp")
def celery_stamp(key: str) -> None:
    """Record when the task started (latency)."""
    _conn.set(key, repr(time.time()), ex=600)
