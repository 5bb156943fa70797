"""taskmill's RabbitMQ plugin: the broker on pika for ``amqp://`` and ``amqps://`` URLs.

The database stays the source of truth; RabbitMQ carries task ids to core's workers, and the
manager re-publishes from the database whatever RabbitMQ may have lost. See ``docs/rabbitmq.md``.
"""

from __future__ import annotations

from taskmill import hookimpl
from taskmill_rabbitmq.settings import RABBITMQ_SETTINGS

__all__ = ["taskmill_brokers", "taskmill_settings", "RABBITMQ_SETTINGS"]


@hookimpl
def taskmill_settings() -> list[object]:
    """Declare ``TASKMILL_RABBITMQ_*``."""
    return [RABBITMQ_SETTINGS]


@hookimpl
def taskmill_brokers() -> list[type]:
    """Declare the RabbitMQ broker.

    Returns:
        ``[RabbitBroker]``, serving the ``amqp`` and ``amqps`` schemes.
    """
    from taskmill_rabbitmq.broker import RabbitBroker

    return [RabbitBroker]
