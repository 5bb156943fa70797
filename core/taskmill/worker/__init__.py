"""Core's worker: the loop, the pool and the small duty units every broker's worker uses.

* :mod:`~taskmill.worker.transport` — the contract a broker implements (``Delivery``, ``Consumer``).
* :mod:`~taskmill.worker.loop` — core's loop over a consumer (the default ``Broker.run_worker``).
* :mod:`~taskmill.worker.pool` / :mod:`~taskmill.worker.prefork` — how handlers run.
* Duty units, each testable alone and reused by RQ's loop: :class:`Presence`,
  :class:`CancelWatch`, :class:`OutcomeBuffer`, :class:`ProgressCoalescer`.
* :class:`WorkerOptions`, :func:`die_with_parent`, and the process's current runtime.

Importing this package does not import the loop or the pool (they import execution and
multiprocessing); ask for them by module.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from taskmill.worker.cancel import CancelWatch
from taskmill.worker.options import WorkerOptions
from taskmill.worker.options import die_with_parent
from taskmill.worker.options import make_worker_id
from taskmill.worker.outcomes import OutcomeBuffer
from taskmill.worker.presence import Presence
from taskmill.worker.progress import ProgressCoalescer
from taskmill.worker.transport import Consumer
from taskmill.worker.transport import Delivery

if TYPE_CHECKING:  # pragma: no cover
    from taskmill.runtime import Runtime

__all__ = [
    "CancelWatch",
    "Consumer",
    "Delivery",
    "OutcomeBuffer",
    "Presence",
    "ProgressCoalescer",
    "WorkerOptions",
    "current_runtime",
    "die_with_parent",
    "make_worker_id",
    "set_current_runtime",
]

_RUNTIME: Runtime | None = None


def set_current_runtime(runtime: Runtime) -> None:
    """Make ``runtime`` the one code running in this worker process finds (RQ jobs, handlers)."""
    global _RUNTIME
    _RUNTIME = runtime


def current_runtime() -> Runtime:
    """The runtime of this worker process (built on first use from the environment)."""
    global _RUNTIME
    if _RUNTIME is None:
        from taskmill.runtime import build_runtime

        _RUNTIME = build_runtime()
    return _RUNTIME
