"""The pool interface: how a worker runs handlers, whatever the broker.

Core's loop (:mod:`taskmill.worker.loop`) owns the tasks, deadlines and the database; a pool
only runs what it is given and reports back. One module per pool and one line in
:data:`POOL_FACTORIES`: ``prefork`` (forked processes: isolation, forced stops, recycling),
``threads`` (handlers on threads of the worker process: no process hop, no forced stop) and
``asyncio`` (``async def`` handlers on an event loop, sync ones on threads beside it).
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING
from typing import Any

from taskmill.models import Outcome
from taskmill.models import Task

if TYPE_CHECKING:  # pragma: no cover
    from taskmill.runtime import Runtime

__all__ = ["Pool", "PoolEvent", "make_pool", "POOL_FACTORIES"]


@dataclasses.dataclass(frozen=True)
class PoolEvent:
    """Something a pool reports: ``progress`` (``value``) or ``done`` (``outcome``)."""

    kind: str
    task_id: uuid.UUID
    value: float = 0.0
    outcome: Outcome | None = None


class Pool:
    """Runs handlers; ``concurrency`` at once.

    The loop calls :meth:`run` only while :meth:`free` is above zero, waits on
    :meth:`waitables` (objects :func:`multiprocessing.connection.wait` accepts) and hands what
    became ready to :meth:`events`. Every task given to :meth:`run` ends in exactly one ``done``
    event, or is returned by :meth:`kill` / :meth:`close`.
    """

    name = ""
    #: False when a running handler cannot be stopped by force (threads): ``kill`` then only
    #: forgets the task, and the documented limit applies.
    can_force = True
    #: set by a pool that wants its worker process replaced (warm shutdown; the supervisor starts
    #: a new one), e.g. the threads pool with too many abandoned threads.
    recycle_requested = False

    def __init__(self, runtime: Runtime, concurrency: int) -> None:
        self.runtime = runtime
        self.concurrency = concurrency

    def start(self) -> None:
        """Start the pool's processes/threads."""

    def free(self) -> int:
        """Slots free for :meth:`run` now."""
        raise NotImplementedError

    def running(self) -> list[Task]:
        """Tasks running now."""
        raise NotImplementedError

    def run(self, task: Task) -> None:
        """Start ``task`` in a free slot."""
        raise NotImplementedError

    def waitables(self) -> list[Any]:
        """Objects that become readable when :meth:`events` has something."""
        raise NotImplementedError

    def events(self, ready: list[Any]) -> list[PoolEvent]:
        """Read what ``ready`` (a subset of :meth:`waitables`) holds. A slot that died while
        running a task yields a ``done`` event with a ``WorkerLost`` outcome."""
        raise NotImplementedError

    def cancel(self, task_id: uuid.UUID) -> None:
        """Tell a running handler its task was cancelled (``ctx.cancel_requested``)."""
        raise NotImplementedError

    def kill(self, task_id: uuid.UUID) -> bool:
        """Stop a running task by force; no ``done`` event follows. False if it was not running."""
        raise NotImplementedError

    def close(self, force: bool = False) -> list[Task]:
        """Stop the pool. Running tasks are stopped first (returned, to be handed back)."""
        raise NotImplementedError


def _prefork(runtime: Runtime, concurrency: int) -> Pool:
    from taskmill.worker.prefork import PreforkPool

    return PreforkPool(runtime, concurrency)


def _threads(runtime: Runtime, concurrency: int) -> Pool:
    from taskmill.worker.threads import ThreadPool

    return ThreadPool(runtime, concurrency)


def _asyncio(runtime: Runtime, concurrency: int) -> Pool:
    from taskmill.worker.aio import AsyncioPool

    return AsyncioPool(runtime, concurrency)


POOL_FACTORIES: dict[str, Callable[[Runtime, int], Pool]] = {
    "prefork": _prefork,
    "threads": _threads,
    "asyncio": _asyncio,
}
"""Pool name → factory. A new pool is one module and one entry here."""


def make_pool(name: str, runtime: Runtime, concurrency: int) -> Pool:
    """The pool called ``name``.

    Raises:
        ValueError: no such pool.
    """
    try:
        factory = POOL_FACTORIES[name]
    except KeyError:
        raise ValueError(f"unknown pool {name!r} (known: {', '.join(sorted(POOL_FACTORIES))})") from None
    return factory(runtime, concurrency)
