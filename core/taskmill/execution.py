"""Running one attempt of a task: the code every broker's worker ends up in.

:func:`run_handler` runs a handler and turns whatever happens into an :class:`Outcome` (it never
raises). :func:`execute` is the entry point for push brokers (RQ): start → run → record, for one
task id, in the calling process.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING
from typing import Any

from taskmill.errors import Retry
from taskmill.errors import StorageUnavailable
from taskmill.handlers import HandlerContext
from taskmill.models import Outcome
from taskmill.models import Task

if TYPE_CHECKING:  # pragma: no cover
    from taskmill.runtime import Runtime

__all__ = ["run_handler", "execute", "error_info", "TimeoutExpired", "OutcomeWriter"]

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
    ``KeyboardInterrupt``/``SystemExit`` of the worker itself through)."""
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


def execute(task_id: str, worker_id: str | None = None, runtime: Runtime | None = None) -> str:
    """Run one task by id in this process: the entry point of push brokers (e.g. RQ jobs).

    Marks the task running (only if it is still queued, so a duplicate delivery is a no-op),
    runs the handler, and records the outcome.

    Returns:
        The task's status afterwards (``skipped`` when it was not queued).
    """
    from taskmill.worker import current_runtime

    rt = runtime or current_runtime()
    wid = worker_id or rt.worker_id
    tid = uuid.UUID(str(task_id))
    started = rt.lifecycle.start([tid], wid)
    if not started:
        logger.info("task %s is not queued any more; skipping this delivery", task_id)
        return "skipped"
    task = started[0]

    def progress(value: float) -> None:
        rt.lifecycle.set_progress(task.id, value)

    # the first look at the cancel flag is after 0.5 s: a short task costs no extra query
    last_check = [time.monotonic(), False]

    def cancelled() -> bool:
        now = time.monotonic()
        if not last_check[1] and now - last_check[0] >= 0.5:
            last_check[0] = now
            last_check[1] = bool(rt.lifecycle.cancel_requested([task.id]))
        return bool(last_check[1])

    outcome = run_handler(rt, task, report_progress=progress, check_cancel=cancelled)
    writer: OutcomeWriter | None = getattr(rt, "outcome_writer", None)
    if writer is not None:
        writer.put(task, outcome)
        return {"retry": "failed"}.get(outcome.kind, outcome.kind)
    written = rt.lifecycle.finish([(task, outcome)], wid)
    return written[0].status.value if written else "lost"


class OutcomeWriter:
    """Records the outcomes of a push-broker worker in batches, from a background thread.

    A task's outcome waits at most ``max_delay`` seconds (or until ``max_batch`` are pending)
    and is then written with the others in one statement, as the SQL broker's pool does. If the
    process dies in between, the task is still ``running`` in the database and the manager runs
    it again after the lease: at-least-once, as for any worker that dies mid-task.
    """

    def __init__(
        self, runtime: Runtime, worker_id: str, max_delay: float = 0.02, max_batch: int = 100
    ) -> None:
        self.rt = runtime
        self.worker_id = worker_id
        self.max_delay = max_delay
        self.max_batch = max_batch
        self._pending: list[tuple[Task, Outcome]] = []
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="taskmill-outcomes", daemon=True)
        self._thread.start()

    def put(self, task: Task, outcome: Outcome) -> None:
        with self._cond:
            self._pending.append((task, outcome))
            self._cond.notify()

    def flush(self) -> None:
        """Write everything pending now, in the calling thread."""
        with self._cond:
            batch, self._pending = self._pending, []
        self._write(batch)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(timeout=30)
        self.flush()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
            # the first outcome arrived: give others max_delay to join it
            deadline = time.monotonic() + self.max_delay
            with self._cond:
                while len(self._pending) < self.max_batch and not self._closed:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
                batch, self._pending = self._pending, []
            self._write(batch)

    def _write(self, batch: list[tuple[Task, Outcome]]) -> None:
        for attempt in range(10):
            if not batch:
                return
            try:
                self.rt.lifecycle.finish(batch, self.worker_id)
                return
            except StorageUnavailable as exc:
                logger.warning("cannot record %s outcome(s), retrying: %s", len(batch), exc)
                time.sleep(min(5.0, 0.2 * 2**attempt))
        logger.error("gave up recording %s outcome(s); the manager will recover those tasks", len(batch))
