"""What every RQ job of this plugin calls: start the task, run its handler, record the outcome.

A job's only argument is the task id (job id = task id). ``execute`` marks the task running
through the lifecycle (only if it is still queued and its queue is not paused, so a duplicate or
a paused delivery is a no-op), runs the handler with core's cancel flag and progress coalescer,
and hands the outcome to the worker's :class:`OutcomeBuffer` (one statement for many tasks).
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

from taskmill.plugin_api import Outcome
from taskmill.plugin_api import current_runtime
from taskmill.plugin_api import run_handler

__all__ = ["execute", "EXECUTE", "set_duties", "duties"]

logger = logging.getLogger("taskmill.redis.jobs")

EXECUTE = "taskmill_redis.jobs.execute"
"""Dotted path of the function every RQ job calls, with the task id as its only argument."""


_DUTIES: Any = None


def set_duties(units: Any) -> None:
    """Make ``units`` the duty units of the RQ worker running in this process (or None)."""
    global _DUTIES
    _DUTIES = units


def duties() -> Any:
    """The duty units of the RQ worker running in this process (None outside one)."""
    return _DUTIES


def execute(task_id: str) -> str:
    """Run one task by id in this process.

    Returns:
        The task's status as this worker recorded it (``skipped`` when it was not started).
    """
    rt = current_runtime()
    units = duties()
    wid = rt.worker_id
    tid = uuid.UUID(str(task_id))
    started = rt.lifecycle.start([tid], wid)
    if units is not None:
        units.started(tid, bool(started))
    if not started:
        logger.info("task %s was not started (not queued, or its queue is paused); dropped", task_id)
        return "skipped"
    task = started[0]
    if units is None:  # a job run outside taskmill's worker: record at once
        last = [time.monotonic(), False]

        def cancelled() -> bool:
            if not last[1] and time.monotonic() - last[0] >= 0.5:
                last[0] = time.monotonic()
                last[1] = bool(rt.lifecycle.cancel_requested([task.id]))
            return bool(last[1])

        outcome = run_handler(rt, task, check_cancel=cancelled)
        written = rt.lifecycle.finish([(task, outcome)], wid)
        return written[0].status.value if written else "lost"
    try:
        outcome = run_handler(
            rt,
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
