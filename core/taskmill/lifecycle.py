"""The one place where task state changes.

The state machine is data (:data:`TRANSITIONS`); every change is checked against it and written
through the storage's conditional, set-based writes, so two processes never both win. API, CLI,
workers, the manager and plugins all call :class:`Lifecycle`; nobody writes a task row by hand.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import random
import uuid
from collections.abc import Iterable
from collections.abc import Sequence
from typing import TYPE_CHECKING
from typing import Any

from marshmallow import ValidationError as SchemaError

from taskmill import metrics
from taskmill.errors import BrokerUnavailable
from taskmill.errors import InvalidTransition
from taskmill.errors import PayloadRejected
from taskmill.errors import RateLimited
from taskmill.errors import TaskNotFound
from taskmill.errors import ValidationError
from taskmill.models import FINAL_STATES
from taskmill.models import PENDING_STATES
from taskmill.models import NewTask
from taskmill.models import Outcome
from taskmill.models import SameAs
from taskmill.models import Task
from taskmill.models import TaskStatus
from taskmill.models import utcnow
from taskmill.schedules import timer_for

if TYPE_CHECKING:  # pragma: no cover
    from taskmill.runtime import Runtime

__all__ = ["Lifecycle", "TRANSITIONS", "check_transition", "door", "backoff_delay", "request_hash"]

logger = logging.getLogger("taskmill.lifecycle")

S = TaskStatus
TRANSITIONS: dict[TaskStatus, frozenset[TaskStatus]] = {
    S.SCHEDULED: frozenset({S.QUEUED, S.WAITING, S.CANCELLED}),
    S.WAITING: frozenset({S.QUEUED, S.SCHEDULED, S.CANCELLED}),
    S.QUEUED: frozenset({S.RUNNING, S.CANCELLED}),
    S.RUNNING: frozenset({S.COMPLETED, S.FAILED, S.SCHEDULED, S.QUEUED, S.CANCELLED}),
    S.COMPLETED: frozenset(),
    S.FAILED: frozenset({S.QUEUED}),  # manual retry / dead-letter requeue
    S.CANCELLED: frozenset({S.QUEUED}),  # manual retry
}
"""Allowed moves: from-state → the states it may go to."""


def check_transition(from_states: Iterable[TaskStatus], to_state: TaskStatus) -> list[TaskStatus]:
    """The subset of ``from_states`` that may move to ``to_state``.

    Raises:
        InvalidTransition: none of them may.
    """
    allowed = [s for s in from_states if to_state in TRANSITIONS[s]]
    if not allowed:
        raise InvalidTransition(f"no transition from {sorted(map(str, from_states))} to {to_state}")
    return allowed


def door(from_states: Iterable[TaskStatus], to_state: TaskStatus) -> tuple[list[TaskStatus], TaskStatus]:
    """A move the lifecycle makes, checked against :data:`TRANSITIONS` once, where it is named.

    Raises:
        InvalidTransition: ``TRANSITIONS`` does not allow every one of these moves.
    """
    from_states = list(from_states)
    allowed = check_transition(from_states, to_state)
    if allowed != from_states:
        raise InvalidTransition(
            f"{sorted(map(str, set(from_states) - set(allowed)))} may not move to {to_state}"
        )
    return from_states, to_state


# The moves of the worker and manager paths, each one conditional set-based statement in the store.
CLAIM = door([S.QUEUED], S.RUNNING)
START = door([S.QUEUED], S.RUNNING)
RELEASE_DUE = door([S.SCHEDULED], S.QUEUED)
RELEASE_WAITING = (door([S.WAITING], S.QUEUED), door([S.WAITING], S.SCHEDULED))
DEPENDENCY_CANCEL = door([S.WAITING], S.CANCELLED)
FINISH_TO = frozenset(TRANSITIONS[S.RUNNING])


def backoff_delay(task: Task, max_backoff: float, rng: random.Random | None = None) -> float:
    """Seconds before the next attempt: uniform in [b/2, b], b = min(max, base × 2^(attempts−1))."""
    exponent = max(0, task.attempts - 1)
    b = min(max_backoff, task.retry_backoff * (2.0 ** min(exponent, 64)))
    return (rng or random).uniform(b / 2, b)


def request_hash(body: dict[str, Any]) -> str:
    """A stable hash of a submission body without its idempotency key."""
    clean = {k: v for k, v in body.items() if k != "idempotency_key"}
    raw = json.dumps(clean, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(raw.encode()).hexdigest()


class Lifecycle:
    """Submission, cancellation, retries, claims and outcomes of tasks."""

    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime
        self.storage = runtime.storage
        self.tasks = runtime.storage.tasks
        self.settings = runtime.settings

    # Events are not sent from here: every change writes its journal rows in its own statement
    # (the store's triggers), and the manager's journal feed calls ``taskmill_task_event`` from
    # there, so an event survives the death of the process that made the change.

    def _publish(self, tasks: Sequence[Task]) -> None:
        """Hand queued tasks to the broker, and tell the timer when scheduled ones come due."""
        self._arm(tasks)
        queued = [t for t in tasks if t.status is TaskStatus.QUEUED]
        if not queued:
            return
        try:
            self.rt.broker.publish(queued)
        except BrokerUnavailable as exc:
            # The database holds them; the manager re-publishes once the broker is back.
            logger.warning("broker unavailable, %s task(s) left for re-publishing: %s", len(queued), exc)

    def _arm(self, tasks: Sequence[Task]) -> None:
        run_ats = [t.run_at for t in tasks if t.status is TaskStatus.SCHEDULED and t.run_at is not None]
        if not run_ats:
            return
        try:
            timer_for(self.rt).arm_releases(run_ats)  # rq-scheduler on Redis; a no-op elsewhere
        except Exception:  # noqa: BLE001 - the manager's sweep releases them all the same
            logger.warning("could not arm the release of %s delayed task(s)", len(run_ats), exc_info=True)

    # ---- submission ------------------------------------------------------------------------------
    def build(self, data: dict[str, Any], tenant: str) -> NewTask:
        """Turn a validated request body into a NewTask: handler defaults, payload schema, times.

        Raises:
            ValidationError: unknown type, ``delay`` with ``run_at``, payload rejected.
        """
        type_ = data["type"]
        spec = self.rt.registries.handler(type_)
        if spec is None:
            known = ", ".join(sorted(self.rt.registries.handlers)) or "none"
            raise ValidationError(
                f"unknown task type {type_!r}", {"type": [f"not a registered handler (known: {known})"]}
            )
        payload = data.get("payload")
        if payload is None:
            payload = {}
        try:
            spec.load_payload(payload)
        except SchemaError as exc:
            raise PayloadRejected(
                f"payload rejected by handler {type_!r}", {"payload": exc.messages}
            ) from None
        if data.get("delay") is not None and data.get("run_at") is not None:
            raise ValidationError(
                "give either delay or run_at, not both", {"delay": ["cannot be combined with run_at"]}
            )
        run_at = data.get("run_at")
        if data.get("delay") is not None:
            run_at = utcnow() + dt.timedelta(seconds=float(data["delay"]))
        if run_at is not None and run_at.tzinfo is None:
            run_at = run_at.replace(tzinfo=dt.UTC)
        max_retries = data.get("max_retries")
        if max_retries is None:
            max_retries = spec.max_retries if spec.max_retries is not None else 3
        timeout = data.get("timeout")
        if timeout is None:
            timeout = spec.timeout if spec.timeout is not None else 300
        return NewTask(
            type=type_,
            payload=payload,
            queue=data.get("queue") or spec.queue or "default",
            priority=data.get("priority", 5) if data.get("priority") is not None else 5,
            max_retries=int(max_retries),
            timeout=int(timeout),
            retry_backoff=float(1.0 if data.get("retry_backoff") is None else data["retry_backoff"]),
            tenant=tenant,
            run_at=run_at,
            depends_on=[uuid.UUID(str(d)) for d in data.get("depends_on") or []],
            idempotency_key=data.get("idempotency_key"),
            callback_url=data.get("callback_url"),
            tags=list(data.get("tags") or []),
            request_hash=request_hash(data) if data.get("idempotency_key") else None,
        )

    def submit(
        self, new_tasks: Sequence[NewTask], *, workflow: Any = None, audit: dict[str, Any] | None = None
    ) -> list[tuple[Task, bool]]:
        """Insert tasks (all or none) and hand the queued ones to the broker.

        With ``workflow`` (a :class:`taskmill.workflows.NewWorkflow`) the tasks carry their ids and
        may depend on each other; the workflow's rows are written in the same transaction.
        With ``audit`` (only where ``storage.audits_with_tasks``) an audit entry is too.

        Returns:
            ``(task, created)`` per input, in order; ``created`` is False for an idempotent repeat.

        Raises:
            ValidationError: a dependency that does not exist in the tenant.
            Conflict: an idempotency key reused with a different body.
            RateLimited: the tenant's quota of unfinished tasks would be exceeded.
            StorageUnavailable: nothing was written.
        """
        if not new_tasks:
            return []
        now = utcnow()
        self._check_quota(new_tasks)
        batch = {t.id for t in new_tasks if t.id is not None}
        dep_ids = {d for t in new_tasks for d in t.depends_on} - batch
        deps: dict[uuid.UUID, Task] = {}
        if dep_ids:
            tenant = new_tasks[0].tenant
            deps = {t.id: t for t in self.tasks.get_many(sorted(dep_ids), tenant=tenant)}
            missing = sorted(str(d) for d in dep_ids - deps.keys())
            if missing:
                raise ValidationError(
                    "depends_on names unknown tasks", {"depends_on": [f"no such task: {m}" for m in missing]}
                )
        statuses = [self._initial_status(t, deps, now, batch) for t in new_tasks]
        if workflow is not None:
            results = self.tasks.insert(new_tasks, statuses, self.storage.workflows.writer(workflow))
        elif audit is not None:
            results = self.tasks.insert(new_tasks, statuses, audit=audit)
        else:
            results = self.tasks.insert(new_tasks, statuses)
        created = [task for task, is_new in results if is_new]
        for task in created:
            metrics.submitted(task.queue, task.type)
        self._publish(created)
        return results

    def _initial_status(
        self, t: NewTask, deps: dict[uuid.UUID, Task], now: dt.datetime, batch: frozenset | set = frozenset()
    ) -> TaskStatus:
        if t.depends_on and any(
            d in batch or deps[d].status is not TaskStatus.COMPLETED for d in t.depends_on
        ):
            return TaskStatus.WAITING
        if t.run_at is not None and t.run_at > now:
            return TaskStatus.SCHEDULED
        return TaskStatus.QUEUED

    def _check_quota(self, new_tasks: Sequence[NewTask]) -> None:
        limit = self.settings.tenant_max_pending
        if not limit:
            return
        tenant = new_tasks[0].tenant
        pending = self.tasks.count_pending(tenant)
        if pending + len(new_tasks) > limit:
            raise RateLimited(
                f"tenant {tenant!r} has {pending} unfinished tasks; the quota is {limit}", retry_after=5
            )

    # ---- client actions --------------------------------------------------------------------------
    def get(self, task_id: uuid.UUID, tenant: str | None) -> Task:
        task = self.tasks.get(task_id, tenant=tenant)
        if task is None:
            raise TaskNotFound(f"task {task_id} not found")
        return task

    def cancel(self, task_id: uuid.UUID, tenant: str | None) -> tuple[Task, bool]:
        """Cancel a task. Returns ``(task, done)``: done is True when it is cancelled now, False
        when it is running and was asked to stop.

        Raises:
            TaskNotFound: no such task in the tenant.
            InvalidTransition: the task already ended.
        """
        for _ in range(5):
            task = self.get(task_id, tenant)
            if task.status in PENDING_STATES:
                now = utcnow()
                rows = self.tasks.transition(
                    [task.id],
                    check_transition(PENDING_STATES, TaskStatus.CANCELLED),
                    TaskStatus.CANCELLED,
                    {"finished_at": now, "error": {"type": "Cancelled", "message": "cancelled by request"}},
                )
                if rows:
                    metrics.finished(rows[0].queue, rows[0].type, "cancelled")
                    return rows[0], True
            elif task.status is TaskStatus.RUNNING:
                # not a move: the flag asks the worker to stop; its outcome is the move
                rows = self.tasks.transition(
                    [task.id], [TaskStatus.RUNNING], None, {"cancel_requested": True}
                )
                if rows:
                    try:
                        self.rt.broker.request_cancel(rows[0])
                    except Exception:  # noqa: BLE001 - the database flag still stops it
                        logger.warning("broker could not signal task %s; relying on the cancel flag", task.id)
                    return rows[0], False
            else:
                raise InvalidTransition(f"task {task.id} is {task.status}; it cannot be cancelled")
        raise InvalidTransition(f"task {task_id} kept changing state; try again")

    def cancel_many(self, task_ids: Sequence[uuid.UUID], tenant: str | None) -> list[Task]:
        """Cancel many tasks at once (a workflow's): those not started are cancelled in one
        statement, the running ones asked to stop in another (as :meth:`cancel` does); final ones
        are left alone. Returns the rows written."""
        if not task_ids:
            return []
        rows = self.tasks.transition(
            task_ids,
            check_transition(PENDING_STATES, TaskStatus.CANCELLED),
            TaskStatus.CANCELLED,
            {"finished_at": utcnow(), "error": {"type": "Cancelled", "message": "cancelled by request"}},
            tenant=tenant,
        )
        for t in rows:
            metrics.finished(t.queue, t.type, "cancelled")
        done = {t.id for t in rows}
        rest = [i for i in task_ids if i not in done]
        running = self.tasks.transition(
            rest, [TaskStatus.RUNNING], None, {"cancel_requested": True}, tenant=tenant
        )
        for t in running:
            try:
                self.rt.broker.request_cancel(t)
            except Exception:  # noqa: BLE001 - the database flag still stops it
                logger.warning("broker could not signal task %s; relying on the cancel flag", t.id)
        return rows + running

    def retry(self, task_id: uuid.UUID, tenant: str | None) -> Task:
        """Run a failed or cancelled task again with a fresh retry budget.

        Raises:
            TaskNotFound, InvalidTransition
        """
        task = self.get(task_id, tenant)
        rows = self._requeue_final([task.id], [TaskStatus.FAILED, TaskStatus.CANCELLED], tenant)
        if not rows:
            raise InvalidTransition(
                f"task {task.id} is {task.status}; only failed or cancelled tasks can be retried"
            )
        return rows[0]

    def requeue_dead_letters(self, ids: Sequence[uuid.UUID], tenant: str | None) -> list[Task]:
        """Requeue failed tasks (others are ignored); returns those requeued."""
        return self._requeue_final(ids, [TaskStatus.FAILED], tenant)

    def _requeue_final(
        self, ids: Sequence[uuid.UUID], states: list[TaskStatus], tenant: str | None
    ) -> list[Task]:
        if not ids:
            return []
        now = utcnow()
        rows = self.tasks.transition(
            ids,
            check_transition(states, TaskStatus.QUEUED),
            TaskStatus.QUEUED,
            {
                "budget_start": SameAs("attempts"),
                "run_at": None,
                "result": None,
                "error": None,
                "progress": None,
                "cancel_requested": False,
                "finished_at": None,
                "started_at": None,
                "worker": None,
                "queued_at": now,
            },
            tenant=tenant,
        )
        self._publish(rows)
        return rows

    def set_progress(
        self,
        values: dict[uuid.UUID, float] | uuid.UUID,
        value: float | None = None,
        worker_id: str | None = None,
    ) -> int:
        """Write the progress of running tasks, ``{id: value}``, in one statement (callers
        coalesce: at most one write per task every half second or so). Not a move: the status
        stays running. Returns how many rows changed (each journals one ``task.progress``).

        ``set_progress(task_id, value)`` is the older one-task form.
        """
        if not isinstance(values, dict):
            values = {values: float(value if value is not None else 0.0)}
        return self.tasks.set_progress(values)

    # ---- workers ---------------------------------------------------------------------------------
    def claim(self, queues: Sequence[str], limit: int, worker_id: str) -> list[Task]:
        """Take up to ``limit`` queued tasks for a worker (pull brokers): queued → running, one
        statement that also skips tasks of paused queues."""
        tasks = self.tasks.claim(queues, limit, worker_id, utcnow())
        self._started(tasks)
        return tasks

    def start(self, task_ids: Sequence[uuid.UUID], worker_id: str) -> list[Task]:
        """Mark delivered tasks running for a worker (push brokers). Those no longer queued (a
        duplicate delivery, a cancel, a paused queue) are left out of the result and must not run:
        queued → running, one statement that also skips tasks of paused queues."""
        if not task_ids:
            return []
        tasks = self.tasks.start(task_ids, worker_id, utcnow())
        self._started(tasks)
        return tasks

    def _started(self, tasks: Sequence[Task]) -> None:
        for t in tasks:
            if t.queued_at and t.started_at:
                metrics.waited(t.queue, (t.started_at - t.queued_at).total_seconds())

    def finish(self, results: Sequence[tuple[Task, Outcome]], worker_id: str | None) -> list[Task]:
        """Record how attempts ended, in one set-based write.

        A failed attempt with retries left goes to ``scheduled`` after the back-off; without,
        to ``failed`` (the dead-letter queue). Only tasks still running (and, when ``worker_id``
        is given, still held by that worker) are written, so a worker declared dead cannot
        overwrite the attempt that replaced it.
        """
        if not results:
            return []
        now = utcnow()
        rows: list[dict[str, Any]] = []
        for task, out in results:
            row: dict[str, Any] = {"id": task.id}
            if worker_id is not None:
                row["worker"] = worker_id
            if out.kind == "completed":
                row.update(
                    status=TaskStatus.COMPLETED, result=out.result, error=None, finished_at=now, progress=1.0
                )
            elif out.kind == "cancelled":
                row.update(
                    status=TaskStatus.CANCELLED,
                    result=out.result,  # what a handler returned when it stopped early, if anything
                    finished_at=now,
                    error=out.error or {"type": "Cancelled", "message": "cancelled by request"},
                )
            elif out.kind == "requeue":
                row.update(
                    status=TaskStatus.QUEUED,
                    attempts=max(0, task.attempts - 1),
                    started_at=None,
                    queued_at=task.queued_at or now,
                    progress=None,
                )
            elif out.kind in ("failed", "retry"):
                if out.no_retry or task.retries_left <= 0:
                    row.update(status=TaskStatus.FAILED, error=out.error, finished_at=now)
                else:
                    delay = (
                        out.retry_delay
                        if out.retry_delay is not None
                        else backoff_delay(task, self.settings.retry_backoff_max)
                    )
                    row.update(
                        status=TaskStatus.SCHEDULED,
                        error=out.error,
                        run_at=now + dt.timedelta(seconds=delay),
                        progress=None,
                    )
            else:  # pragma: no cover - a programming error in a worker
                raise ValueError(f"unknown outcome {out.kind!r}")
            if row["status"] not in FINISH_TO:  # pragma: no cover - TRANSITIONS and this table agree
                raise InvalidTransition(f"running may not move to {row['status']}")
            rows.append(row)
        written = self.tasks.finish_many(rows, TaskStatus.RUNNING)
        by_id = {t.id: t for t in written}
        durations = {task.id: out.duration for task, out in results}
        for t in written:
            if t.status in FINAL_STATES:
                metrics.finished(t.queue, t.type, t.status.value, durations.get(t.id))
        self._publish(written)  # queued ones go to the broker, retry-scheduled ones to the timer
        if any(t.status is TaskStatus.COMPLETED and t.workflow_id is not None for t in written):
            # a workflow's next tasks start now rather than at the manager's next tick (one
            # set-based statement; plain tasks with depends_on wait for the manager as before)
            self.release_waiting()
        lost = [task.id for task, _ in results if task.id not in by_id]
        if lost:
            logger.info("outcome of %s task(s) not recorded: no longer held by this worker", len(lost))
        return written

    def cancel_requested(self, task_ids: Sequence[uuid.UUID]) -> set[uuid.UUID]:
        """Which of these running tasks should stop (cancel requested, or taken away)."""
        if not task_ids:
            return set()
        return self.tasks.cancel_flags(task_ids)

    # ---- queues and purges ----------------------------------------------------------------------
    def pause_queue(self, name: str) -> None:
        """Pause a queue. From the moment this returns no task of it starts: claim and start skip
        paused queues in their own statement, on every broker. It still accepts tasks."""
        self.storage.queues.set_paused(name, True)

    def resume_queue(self, name: str) -> int:
        """Resume a queue, and publish again its queued tasks a broker dropped while it was paused
        (the manager's re-publish would bring them back later anyway). Returns how many."""
        self.storage.queues.set_paused(name, False)
        try:
            return self.rt.broker.queue_resumed(name)
        except BrokerUnavailable as exc:
            logger.warning("broker unavailable; the manager re-publishes queue %s later: %s", name, exc)
            return 0

    def purge(self, task_ids: Sequence[uuid.UUID], tenant: str | None) -> int:
        """Delete final tasks (dead letters, cancelled ones) for good; others are left alone.
        Their journal rows stay until the retention prunes them. Returns how many."""
        return self.storage.tasks.delete(task_ids, sorted(FINAL_STATES), tenant=tenant)

    # ---- manager ---------------------------------------------------------------------------------
    def release_due(self, limit: int = 1000) -> list[Task]:
        """Scheduled tasks whose ``run_at`` has come: scheduled → queued, one statement."""
        tasks = self.tasks.release_due(utcnow(), limit)
        self._publish(tasks)
        return tasks

    def release_waiting(self, limit: int = 1000) -> list[Task]:
        """Waiting tasks whose dependencies all completed: waiting → queued (or scheduled while
        their ``run_at`` is ahead), one statement for a fan-out or fan-in of up to ``limit``."""
        tasks = self.tasks.release_waiting(utcnow(), limit)
        self._publish(tasks)
        return tasks

    def cancel_blocked(self, limit: int = 1000) -> list[Task]:
        """Cancel waiting tasks whose dependency failed or was cancelled (repeats down the chain)."""
        blocked = self.tasks.blocked_waiting(limit)
        if not blocked:
            return []
        from_states, to_state = DEPENDENCY_CANCEL
        rows = self.tasks.transition(
            [t.id for t in blocked],
            from_states,
            to_state,
            {
                "finished_at": utcnow(),
                "error": {
                    "type": "DependencyFailed",
                    "message": "a task it depends on failed or was cancelled",
                },
            },
        )
        for t in rows:
            metrics.finished(t.queue, t.type, "cancelled")
        return rows

    def recover(self, tasks: Sequence[Task], reason: str) -> list[Task]:
        """Tasks whose worker died: the attempt counts as failed; they run again if retries are
        left (at once, not after a back-off), else they are dead-lettered."""
        results = []
        for t in tasks:
            out = Outcome(
                t.id,
                "failed",
                error={"type": "WorkerLost", "message": reason},
                retry_delay=0.0,
            )
            results.append((t, out))
        written = self.finish(results, worker_id=None)
        # released at once: a zero back-off puts them in scheduled with run_at = now
        self.release_due()
        return written
