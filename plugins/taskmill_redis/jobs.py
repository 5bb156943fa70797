"""What every RQ job of this plugin calls: run the task the worker has just started.

A job's only argument is the task id (job id = task id). The worker
(:mod:`taskmill_redis.worker`) has already started the task through the lifecycle and settled
its delivery; :func:`execute` runs the handler with core's cancel flag and progress coalescer
and hands the outcome to the worker's :class:`OutcomeBuffer` (one statement for many tasks).
Outside a taskmill worker (a plain ``rq worker``), it starts and records the task itself.
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

from taskmill.plugin_api import Outcome
from taskmill.plugin_api import Task
from taskmill.plugin_api import current_runtime
from taskmill.plugin_api import run_handler

__all__ = ["execute", "EXECUTE", "set_current", "duties", "current_task"]

logger = logging.getLogger("taskmill.redis.jobs")

EXECUTE = "taskmill_redis.jobs.execute"
"""Dotted path of the function every RQ job calls, with the task id as its only argument."""

_DUTIES: Any = None
_TASK: Task | None = None


def set_current(units: Any, task: Task | None) -> None:
    """The duty units of the RQ worker in this process and the task it started (or None)."""
    global _DUTIES, _TASK
    _DUTIES, _TASK = units, task


def duties() -> Any:
    return _DUTIES


def current_task() -> Task | None:
    return _TASK


def execute(task_id: str) -> str:
    """Run one task by id in this process.

    Returns:
        How the attempt ended (``completed``, ``failed``, ``cancelled``), or ``skipped`` when
        the task was not started.
    """
    units, task = _DUTIES, _TASK
    if units is None or task is None or str(task.id) != str(task_id):
        return _execute_alone(task_id)
    try:
        outcome = run_handler(
            current_runtime(),
            task,
            report_progress=lambda v: units.progress.report(task.id, v),
            check_cancel=lambda: units.cancels.is_cancelled(task.id),
        )
    finally:
        units.finished(task.id)
    if units.cancels.is_cancelled(task.id) and outcome.kind != "cancelled":
        outcome = Outcome(
            task.id,
            "cancelled",
            result=outcome.result,
            error={"type": "Cancelled", "message": "cancelled by request", "traceback": None},
            duration=outcome.duration,
        )
    units.outcome(task, outcome)
    return {"retry": "failed"}.get(outcome.kind, outcome.kind)


def _execute_alone(task_id: str) -> str:
    """Start, run and record a task in a process that is not a taskmill worker."""
    rt = current_runtime()
    wid = rt.worker_id or "rq"
    started = rt.lifecycle.start([uuid.UUID(str(task_id))], wid)
    if not started:
        logger.info("task %s was not started (not queued, or its queue is paused); dropped", task_id)
        return "skipped"
    task = started[0]
    last = [time.monotonic(), False]

    def cancelled() -> bool:
        if not last[1] and time.monotonic() - last[0] >= 0.5:
            last[0] = time.monotonic()
            last[1] = bool(rt.lifecycle.cancel_requested([task.id]))
        return bool(last[1])

    outcome = run_handler(rt, task, check_cancel=cancelled)
    written = rt.lifecycle.finish([(task, outcome)], wid)
    return written[0].status.value if written else "lost"
