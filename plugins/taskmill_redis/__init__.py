"""taskmill's Redis plugin: the broker on RQ for ``redis://`` and ``rediss://`` URLs.

PostgreSQL (the storage) stays the source of truth; Redis carries task ids to RQ workers, and
the manager re-publishes from the database whatever Redis loses. See ``docs/redis.md``.
"""

from __future__ import annotations

from taskmill import hookimpl
from taskmill.plugin_api import Setting
from taskmill.plugin_api import SettingsSpec

__all__ = ["taskmill_brokers", "taskmill_settings", "REDIS_SETTINGS"]

REDIS_SETTINGS = SettingsSpec(
    name="redis",
    prefix="redis",
    doc="The Redis broker on RQ.",
    settings=(
        Setting(
            "worker_class",
            str,
            "simple",
            "RQ worker class: `simple` (SimpleWorker, the task runs in the worker process; measured "
            "fastest) or `fork` (forking Worker, a work-horse process per task, for isolation).",
            choices=("simple", "fork"),
        ),
    ),
)


@hookimpl
def taskmill_settings() -> list[SettingsSpec]:
    """Declare ``TASKMILL_REDIS_*``."""
    return [REDIS_SETTINGS]


@hookimpl
def taskmill_brokers() -> list[type]:
    """Declare the Redis broker.

    Returns:
        ``[RedisBroker]``, serving the ``redis`` and ``rediss`` schemes.
    """
    from taskmill_redis.broker import RedisBroker

    return [RedisBroker]
