"""The transport contract: what a broker hands core's worker loop.

A broker is a transport. It publishes task ids (``Broker.publish``) and gives each worker a
:class:`Consumer`, a source of :class:`Delivery` records with ``receive``, ``ack``, ``requeue``
and a wake-up descriptor. Core's loop (:mod:`taskmill.worker.loop`) starts each delivered task
through ``runtime.lifecycle.start`` (unless the broker already moved it to running, as the SQL
broker's claim does, and set :attr:`Delivery.task`), runs the started ones in its pool, and acks
each delivery once its start is committed. A delivery whose task was not started (a duplicate, a
cancelled or paused task) is acked and dropped: the database still holds the task, and resume or
the manager's re-publish brings it back. At warm shutdown the loop hands back what it holds but
has not started (``lifecycle.finish(..., requeue)`` for started ones, ``requeue`` for the rest).

This module is the contract exactly as the team plan states it; it imports no role module, so
``taskmill.interfaces`` and plugins may import it freely.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING
from typing import Any
from typing import Protocol
from typing import runtime_checkable

if TYPE_CHECKING:  # pragma: no cover
    from taskmill.models import Task

__all__ = ["Delivery", "Consumer"]


@dataclasses.dataclass(frozen=True)
class Delivery:
    """One task id handed to a worker by a broker.

    Attributes:
        task_id: the task's id (the database row).
        queue: the taskmill queue name it was published on.
        token: the broker's own handle for ack/requeue (an AMQP delivery tag, a Redis in-flight
            entry, …); core never looks inside it.
        task: set when the broker already moved the task to running (the SQL broker's claim);
            core then does not call ``lifecycle.start`` for it.
    """

    task_id: uuid.UUID
    queue: str
    token: Any = None
    task: Task | None = None


@runtime_checkable
class Consumer(Protocol):
    """A worker's source of deliveries (one per worker process, used from one thread)."""

    def receive(self, limit: int, timeout: float) -> list[Delivery]:
        """Up to ``limit`` deliveries, waiting at most ``timeout`` seconds (0: do not wait).

        Raises:
            BrokerUnavailable: the broker cannot be reached (the loop backs off and retries).
        """
        ...

    def ack(self, deliveries: Sequence[Delivery]) -> None:
        """The broker may forget these deliveries (their start is committed, or they were dropped)."""
        ...

    def requeue(self, deliveries: Sequence[Delivery]) -> None:
        """Give these deliveries back to the broker for another worker (never started here)."""
        ...

    def fileno(self) -> int | None:
        """A descriptor that is readable when ``receive`` may have something; None: poll."""
        ...

    def close(self) -> None:
        """Release the consumer's connections; deliveries not acked are the broker's again."""
        ...
