"""Per-credential request rate limiting (``TASKMILL_RATE_LIMIT``, e.g. ``100/second``).

One :class:`RateLimiter` per app, built from the settings. It uses the ``limits`` library's
sliding-window counter (a cheap approximation of a token bucket: two counters per key, one
round trip). The counters live in Redis when ``TASKMILL_BROKER_URL`` is ``redis://`` or
``rediss://`` (so the limit holds across every api process of the installation), otherwise in
the process's memory.

The limit is per credential: an API key's id, or a JWT's subject, within its tenant. When the
counter store is unreachable the request is let through (fail open) and a warning is logged at
most once a minute: an outage of the rate limiter must not become an outage of the API.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from typing import Any

from taskmill.errors import RateLimited
from taskmill.models import Principal
from taskmill.registry import scheme_of

__all__ = ["RateLimiter", "build_rate_limiter"]

logger = logging.getLogger("taskmill.api.ratelimit")

REDIS_TIMEOUT = 0.5
"""Seconds a Redis counter operation may take before the request is let through."""

WARN_EVERY = 60.0
"""Seconds between two warnings about an unreachable counter store."""


class RateLimiter:
    """Counts requests per credential and refuses those over the limit with :class:`RateLimited`."""

    def __init__(self, rate: str, storage_uri: str, **storage_options: Any) -> None:
        from limits import parse
        from limits.storage import storage_from_string
        from limits.strategies import SlidingWindowCounterRateLimiter

        self.rate = rate
        self.item = parse(rate)
        self.storage_uri = storage_uri
        self.storage = storage_from_string(storage_uri, **storage_options)
        self.strategy = SlidingWindowCounterRateLimiter(self.storage)
        self._warned_at = 0.0
        self._lock = threading.Lock()

    @staticmethod
    def key_of(principal: Principal) -> str:
        """The counter of a principal: its API key, else its subject, within its tenant."""
        return f"{principal.tenant}/{principal.key_id or principal.subject}"

    def check(self, principal: Principal) -> None:
        """Count one request of ``principal``.

        Raises:
            RateLimited: over the limit; ``retry_after`` is the seconds until it may try again.
        """
        key = self.key_of(principal)
        try:
            if self.strategy.hit(self.item, "taskmill", key):
                return
            stats = self.strategy.get_window_stats(self.item, "taskmill", key)
        except Exception as exc:  # noqa: BLE001 - fail open: the limiter must not take the API down
            self._warn(exc)
            return
        retry_after = max(1, math.ceil(stats.reset_time - time.time()))
        raise RateLimited(f"rate limit of {self.rate} exceeded; retry in {retry_after} s", retry_after)

    def _warn(self, exc: Exception) -> None:
        now = time.monotonic()
        with self._lock:
            if now - self._warned_at < WARN_EVERY:
                return
            self._warned_at = now
        logger.warning("rate limit counters are unreachable, letting requests through: %s", exc)


def _redis_options() -> dict[str, Any]:
    """Short timeouts and no retries: redis-py 8 would otherwise retry for about a minute."""
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    return {
        "socket_timeout": REDIS_TIMEOUT,
        "socket_connect_timeout": REDIS_TIMEOUT,
        "retry": Retry(NoBackoff(), 0),
    }


def build_rate_limiter(settings: Any) -> RateLimiter | None:
    """The app's limiter from ``settings.rate_limit`` (None when it is empty).

    Counters go to the Redis server of ``settings.broker_url`` when it is a Redis URL, else to
    the process's memory.
    """
    if not settings.rate_limit:
        return None
    broker = settings.broker_url
    if broker and scheme_of(broker) in ("redis", "rediss"):
        return RateLimiter(settings.rate_limit, broker, **_redis_options())
    return RateLimiter(settings.rate_limit, "memory://")
