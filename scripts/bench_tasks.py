"""No-op jobs for ``scripts/bench_redis.py``: plain RQ runs these (taskmill runs ``echo``; Celery runs
from the peers' virtualenv, ``scripts/bench_peers.py``)."""

from __future__ import annotations

import os
import time

import redis

__all__ = ["noop", "stamp"]

_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
_conn = redis.Redis.from_url(_URL, socket_timeout=5, socket_connect_timeout=2)


def noop() -> None:
    """Do nothing (drain rate)."""


def stamp(key: str) -> None:
    """Record when the job started (latency)."""
    _conn.set(key, repr(time.time()), ex=600)
