"""Running one attempt of a task: the code every pool ends up in.

:func:`run_handler` runs a handler and turns whatever happens into an :class:`Outcome` (it never
raises). It knows nothing of workers, brokers or the database: the worker (:mod:`taskmill.worker`)
starts the task, gives the handler its progress and cancel callables, and records the outcome.
"""

from __future__ import annotations

import asyncio
import inspect
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

__all__ = ["run_handler", "run_handler_async", "error_info", "TimeoutExpired"]

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


async def run_handler_async(
    runtime: Runtime,
    task: Task,
    *,
    report_progress: Callable[[float], None] | None = None,
    check_cancel: Callable[[], bool] | None = None,
) -> Outcome:
    """:func:`run_handler` for an event loop: an ``async def`` handler is awaited on the running
    loop (a forced stop cancels it at its next ``await``: ``asyncio.CancelledError`` propagates).
    A sync handler is not expected here (the asyncio pool runs those in its threads)."""
    with task_context(task, worker=getattr(runtime, "worker_id", None) or None):
        started = time.monotonic()
        prepared = _prepare(runtime, task, report_progress, check_cancel)
        if isinstance(prepared, Outcome):
            return prepared
        spec, ctx = prepared
        try:
            payload = spec.load_payload(dict(task.payload or {}))
            result = spec(ctx, payload)
            if inspect.isawaitable(result):
                result = await result
            json.dumps(result, allow_nan=False)
        except Exception as exc:  # noqa: BLE001 - any handler failure is data
            return _failed(task, exc, started)
        return _succeeded(task, result, started, check_cancel)


def _prepare(
    runtime: Runtime,
    task: Task,
    report_progress: Callable[[float], None] | None,
    check_cancel: Callable[[], bool] | None,
) -> Outcome | tuple[Any, HandlerContext]:
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
    return spec, ctx


def _failed(task: Task, exc: Exception, started: float) -> Outcome:
    if isinstance(exc, Retry):
        return Outcome(
            task.id,
            "retry",
            error={"type": type(exc).__name__, "message": exc.message, "traceback": None},
            retry_delay=exc.delay,
            duration=time.monotonic() - started,
        )
    if isinstance(exc, TimeoutExpired):
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
    return Outcome(
        task.id,
        "failed",
        error=error_info(exc),
        no_retry=bool(getattr(exc, "no_retry", False)),
        duration=time.monotonic() - started,
    )


def _succeeded(task: Task, result: Any, started: float, check_cancel: Callable[[], bool] | None) -> Outcome:
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


def _run_handler(
    runtime: Runtime,
    task: Task,
    *,
    report_progress: Callable[[float], None] | None,
    check_cancel: Callable[[], bool] | None,
) -> Outcome:
    started = time.monotonic()
    prepared = _prepare(runtime, task, report_progress, check_cancel)
    if isinstance(prepared, Outcome):
        return prepared
    spec, ctx = prepared
    try:
        payload = spec.load_payload(dict(task.payload or {}))
        result = spec(ctx, payload)
        if inspect.isawaitable(result):  # an ``async def`` handler outside an event loop
            result = asyncio.run(_awaited(result))
        json.dumps(result, allow_nan=False)  # the result must be storable as JSON
    except Exception as exc:  # noqa: BLE001 - any handler failure is data
        return _failed(task, exc, started)
    return _succeeded(task, result, started, check_cancel)


async def _awaited(awaitable: Any) -> Any:
    return await awaitable
