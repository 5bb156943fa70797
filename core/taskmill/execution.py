"""Running one attempt of a task: the code every pool ends up in.

:func:`run_handler` runs a handler and turns whatever happens into an :class:`Outcome` (it never
raises). It knows nothing of workers, brokers or the database: the worker (:mod:`taskmill.worker`)
starts the task, gives the handler its progress and cancel callables, and records the outcome.
"""

from __future__ import annotations

import json
import logging
import time
import traceback
from collections.abc import Callable
from typing import TYPE_CHECKING
from typing import Any

from taskmill.errors import Retry
from taskmill.handlers import HandlerContext
from taskmill.logs import task_context
from taskmill.models import Outcome
from taskmill.models import Task

if TYPE_CHECKING:  # pragma: no cover
    from taskmill.runtime import Runtime

__all__ = ["run_handler", "error_info", "TimeoutExpired"]

logger = logging.getLogger("taskmill.execution")

MAX_TRACEBACK_CHARS = 20_000


class TimeoutExpired(Exception):  # noqa: N818 - reported to clients as error.type "TimeoutError"
    """Raised inside a handler when its task's timeout expires (push brokers)."""


def error_info(exc: BaseException, *, with_traceback: bool = True) -> dict[str, Any]:
    """The ``error`` object of a failed attempt: type, message, traceback."""
    tb = "".join(traceback.format_exception(exc)) if with_traceback else None
    if tb and len(tb) > MAX_TRACEBACK_CHARS:
        tb = "…" + tb[-MAX_TRACEBACK_CHARS:]
    return {"type": type(exc).__name__, "message": str(exc), "traceback": tb}


def run_handler(
    runtime: Runtime,
    task: Task,
    *,
    report_progress: Callable[[float], None] | None = None,
    check_cancel: Callable[[], bool] | None = None,
) -> Outcome:
    """Run ``task``'s handler once and describe how it ended. Never raises (but lets
    ``KeyboardInterrupt``/``SystemExit`` of the worker itself through). Every log line written
    meanwhile, the handler's own included, carries the task's fields (:mod:`taskmill.logs`)."""
    with task_context(task, worker=getattr(runtime, "worker_id", None) or None):
        return _run_handler(runtime, task, report_progress=report_progress, check_cancel=check_cancel)


def _run_handler(
    runtime: Runtime,
    task: Task,
    *,
    report_progress: Callable[[float], None] | None,
    check_cancel: Callable[[], bool] | None,
) -> Outcome:
    started = time.monotonic()
    spec = runtime.registries.handler(task.type)
    if spec is None:
        return Outcome(
            task.id,
            "failed",
            error={
                "type": "UnknownHandler",
                "message": f"no handler {task.type!r} in this worker",
                "traceback": None,
            },
            duration=0.0,
        )
    ctx = HandlerContext(
        task.id, task.attempts, type_=task.type, report_progress=report_progress, check_cancel=check_cancel
    )
    try:
        payload = spec.load_payload(dict(task.payload or {}))
        result = spec(ctx, payload)
        json.dumps(result, allow_nan=False)  # the result must be storable as JSON
    except Retry as exc:
        return Outcome(
            task.id,
            "retry",
            error={"type": type(exc).__name__, "message": exc.message, "traceback": None},
            retry_delay=exc.delay,
            duration=time.monotonic() - started,
        )
    except TimeoutExpired as exc:
        return Outcome(
            task.id,
            "failed",
            error={
                "type": "TimeoutError",
                "message": str(exc) or f"timed out after {task.timeout}s",
                "traceback": None,
            },
            duration=time.monotonic() - started,
        )
    except Exception as exc:  # noqa: BLE001 - any handler failure is data
        return Outcome(
            task.id,
            "failed",
            error=error_info(exc),
            no_retry=bool(getattr(exc, "no_retry", False)),
            duration=time.monotonic() - started,
        )
    duration = time.monotonic() - started
    if check_cancel is not None and check_cancel():
        return Outcome(
            task.id,
            "cancelled",
            result=result,
            error={"type": "Cancelled", "message": "cancelled by request", "traceback": None},
            duration=duration,
        )
    return Outcome(task.id, "completed", result=result, duration=duration)
