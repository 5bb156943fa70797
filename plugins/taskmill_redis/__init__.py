"""taskmill's Redis plugin: the broker on RQ for ``redis://`` and ``rediss://`` URLs.

PostgreSQL (the storage) stays the source of truth; Redis carries task ids to RQ workers, and
the manager re-publishes from the database whatever Redis loses. See ``docs/redis.md``.
"""

from __future__ import annotations

from taskmill import hookimpl

__all__ = ["taskmill_brokers"]


@hookimpl
def taskmill_brokers() -> list[type]:
    """Declare the Redis broker.

    Returns:
        ``[RedisBroker]``, serving the ``redis`` and ``rediss`` schemes.
    """
    from taskmill_redis.broker import RedisBroker

    return [RedisBroker]
