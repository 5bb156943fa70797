"""Core's worker loop: deliveries from a broker's consumer, run in a pool, recorded in batches.

``receive`` → ``lifecycle.start(ids)`` for deliveries without a task (one statement for the
batch) → ``ack`` → run the started tasks in the pool → outcomes through the
:class:`~taskmill.worker.outcomes.OutcomeBuffer`. A delivery whose task was not started (a
duplicate, a cancelled or a paused task) is acked and dropped: the database still holds it, and
resume or the manager's re-publish brings it back.

The loop holds ``capacity`` tasks: one per pool slot plus a prefetch that adapts to how long
tasks take. It waits on the pool's pipes and the consumer's wake-up descriptor at once, so an
idle worker starts a new task within a few milliseconds of its publish. On SIGTERM/SIGINT it
stops receiving, hands back the tasks it holds but has not started, and waits for running ones
up to ``shutdown_timeout``; a second signal (or the timeout) stops them and hands them back too.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import socket
import sys
import threading
import time
import uuid
from collections import deque
from multiprocessing.connection import wait
from typing import TYPE_CHECKING
from typing import Any

from taskmill.errors import BrokerUnavailable
from taskmill.errors import StorageUnavailable
from taskmill.logs import task_context
from taskmill.models import Outcome
from taskmill.models import Task
from taskmill.models import WorkerInfo
from taskmill.probes import beat
from taskmill.worker.cancel import CancelWatch
from taskmill.worker.options import WorkerOptions
from taskmill.worker.outcomes import OutcomeBuffer
from taskmill.worker.pool import Pool
from taskmill.worker.pool import make_pool
from taskmill.worker.presence import Presence
from taskmill.worker.progress import ProgressCoalescer
from taskmill.worker.transport import Consumer
from taskmill.worker.transport import Delivery

if TYPE_CHECKING:  # pragma: no cover
    from taskmill.runtime import Runtime

__all__ = ["WorkerLoop", "run_worker", "worker_info", "FLUSH_AFTER"]

logger = logging.getLogger("taskmill.worker")

FLUSH_AFTER = 0.02
"""Longest time (s) a finished task's outcome waits to be written with others."""
BACKLOG_POLL = 0.005
"""How often (s) a loop whose outcome buffer is backlogged looks again (it takes no tasks)."""


def worker_info(options: WorkerOptions, concurrency: int | None = None) -> WorkerInfo:
    """The row a worker registers."""
    return WorkerInfo(
        id=options.worker_id,
        host=socket.gethostname(),
        pid=os.getpid(),
        queues=list(options.queues),
        concurrency=options.concurrency if concurrency is None else concurrency,
    )


@dataclasses.dataclass
class _Running:
    task: Task
    deadline: float
    taken_away: bool = False


class WorkerLoop:
    """One worker process: a consumer, a pool and the duty units.

    Outcomes are written by the :class:`OutcomeBuffer`'s own thread (``background_outcomes``), so
    the loop keeps receiving and dispatching while a finish statement is in flight: the
    database's work and the worker's overlap.

    Args:
        runtime: the process's runtime.
        options: queues, concurrency, prefetch, burst, pool.
        consumer: the broker's source of deliveries.
        pool: how handlers run (default: ``options.pool``).
    """

    def __init__(
        self, runtime: Runtime, options: WorkerOptions, consumer: Consumer, pool: Pool | None = None
    ) -> None:
        self.rt = runtime
        self.options = options
        self.consumer = consumer
        self.settings = runtime.settings
        self.lifecycle = runtime.lifecycle
        self.worker_id = options.worker_id
        self.pool = pool or make_pool(options.pool, runtime, options.concurrency)
        self.presence = Presence(
            runtime.storage, worker_info(options), self.settings.heartbeat, on_lost=self._lost
        )
        self.cancels = CancelWatch(self.lifecycle, self.settings.cancel_grace)
        self.progress = ProgressCoalescer(self.lifecycle)
        self.outcomes = OutcomeBuffer(self.lifecycle, self.worker_id, max_delay=FLUSH_AFTER, max_batch=500)
        self.background_outcomes = True
        self.held: deque[Task] = deque()
        self.running: dict[uuid.UUID, _Running] = {}
        self.stopping = False
        self.force = False
        self.processed = 0
        self.failed = 0
        self._stop_deadline = 0.0
        self._avg_duration: float | None = None

    # -- sizing ---------------------------------------------------------------------------------
    @property
    def capacity(self) -> int:
        """Tasks held at once: one per slot plus the prefetch.

        With ``prefetch=-1`` the prefetch adapts: very short tasks (under 10 ms on average) are
        held sixteen per slot and short ones (under 0.1 s) four, so one start and one finish
        statement cover many tasks; long ones (over 1 s) are not prefetched at all, so they do
        not wait in one worker while another is idle.
        """
        n = self.options.concurrency
        if self.options.prefetch >= 0:
            return n + self.options.prefetch
        avg = self._avg_duration
        if avg is None or avg < 0.01:
            return n + 16 * n
        if avg < 0.1:
            return n + 4 * n
        if avg < 1.0:
            return n + n
        return n

    # -- control --------------------------------------------------------------------------------
    def stop(self, force: bool = False) -> None:
        """Stop as a first (or, with ``force``, a second) SIGTERM would."""
        if force or self.stopping:
            self.force = True
        else:
            self.stopping = True
            self._stop_deadline = time.monotonic() + self.settings.shutdown_timeout

    def _on_signal(self, signum: int, _frame: Any) -> None:
        if self.stopping:
            logger.warning("second signal: stopping now and handing running tasks back")
        else:
            logger.info("signal %s: finishing running tasks, then stopping (again to stop now)", signum)
        self.stop()

    def _lost(self) -> None:
        """Declared dead: running and held tasks are being recovered elsewhere."""
        for r in self.running.values():
            r.taken_away = True
        self.held.clear()

    def run(self) -> None:
        """Run until stopped by a signal (or, in burst mode, until nothing is left)."""
        self.presence.register()
        old = {}
        if threading.current_thread() is threading.main_thread():
            old = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        logger.info(
            "worker %s listening on %s with %s %s slots",
            self.worker_id,
            ",".join(self.options.queues),
            self.options.concurrency,
            self.pool.name,
        )
        try:
            self.pool.start()
            if self.background_outcomes:
                self.outcomes.start()
            self._loop()
        finally:
            self._shutdown()
            for s, h in old.items():
                signal.signal(s, h)

    # -- the loop -------------------------------------------------------------------------------
    def _loop(self) -> None:
        fd = self.consumer.fileno()
        wake = True
        next_poll = 0.0
        idle_sleep = 0.01
        idle_cap = self.settings.poll_interval if fd is not None else min(0.1, self.settings.poll_interval)
        while True:
            beat()  # liveness: /health/live fails when this loop stops passing
            now = time.monotonic()
            if self.force or (self.stopping and now >= self._stop_deadline):
                return
            if self.stopping:
                self._hand_back_held()
                if not self.running:
                    return
            else:
                capacity = self.capacity
                want = capacity - len(self.running) - len(self.held)
                idle = not self.running and not self.held
                low_water = want >= max(1, capacity // 2) or idle
                if want > 0 and low_water and not self.outcomes.backlogged and (wake or now >= next_poll):
                    timeout = 0.0
                    if fd is None and idle and not len(self.outcomes):
                        timeout = max(0.0, min(idle_sleep, self._next_deadline() - now))
                    got = self._receive(want, timeout)
                    if got == want:
                        wake = True  # there may be more
                    else:
                        wake = False
                        idle_sleep = 0.01 if got else min(idle_cap, idle_sleep * 2)
                        next_poll = time.monotonic() + (0.0 if timeout else idle_sleep)
                    if self.options.burst and not got and not self.running and not self.held:
                        self.outcomes.flush()
                        return
            self._dispatch()
            self._duties()
            waitables: list[Any] = self.pool.waitables()
            if fd is not None and not self.stopping:
                waitables.append(fd)
            try:
                ready = wait(waitables, self._wait_timeout(next_poll, wake))
            except InterruptedError:  # pragma: no cover - PEP 475 retries, but be safe
                ready = []
            pool_ready = []
            for obj in ready:
                if obj is fd or (isinstance(obj, int) and obj == fd):
                    wake = True
                else:
                    pool_ready.append(obj)
            if pool_ready:
                self._events(pool_ready)
            if self._flush_due():
                if self.background_outcomes:
                    self.outcomes.kick()
                else:
                    self.outcomes.flush()

    def _next_deadline(self) -> float:
        deadlines = [
            self.presence.next_beat,
            self.cancels.due(),
            self.progress.deadline(),
        ]
        if not self.background_outcomes:
            deadlines.append(self.outcomes.deadline())
        deadlines += [r.deadline for r in self.running.values()]
        if self.stopping:
            deadlines.append(self._stop_deadline)
        return min(deadlines)

    def _wait_timeout(self, next_poll: float, wake: bool) -> float:
        """How long to wait for the pool or the broker: not at all when the next pass receives
        (a wake-up, or its poll is due); otherwise until the next duty or event. Below the low
        water mark the next poll time does not count, so a loop that holds enough tasks sleeps
        until a slot frees up instead of spinning."""
        now = time.monotonic()
        deadline = min(self._next_deadline(), now + 0.5)
        if self.outcomes.backlogged:
            return min(max(0.0, deadline - now), BACKLOG_POLL)  # until the writer catches up
        if not self.stopping:
            capacity = self.capacity
            free = capacity - len(self.held) - len(self.running)
            idle = not self.running and not self.held
            if free > 0 and (free >= max(1, capacity // 2) or idle):  # the next pass receives
                if wake:
                    return 0.0
                deadline = min(deadline, next_poll)
        return max(0.0, deadline - now)

    # -- steps ----------------------------------------------------------------------------------
    def _receive(self, limit: int, timeout: float) -> int:
        """Receive, start and ack up to ``limit`` deliveries; returns how many were received."""
        try:
            deliveries = self.consumer.receive(limit, timeout)
        except (BrokerUnavailable, StorageUnavailable) as exc:
            logger.warning("cannot receive tasks: %s", exc)
            time.sleep(0.5)
            return 0
        if not deliveries:
            return 0
        self.held.extend(self.start(deliveries))
        return len(deliveries)

    def start(self, deliveries: list[Delivery]) -> list[Task]:
        """Start deliveries through the lifecycle (one statement), ack them; the started tasks."""
        tasks = [d.task for d in deliveries if d.task is not None]
        pushed = [d for d in deliveries if d.task is None]
        if pushed:
            try:
                tasks += self.lifecycle.start([d.task_id for d in pushed], self.worker_id)
            except StorageUnavailable as exc:
                logger.warning("cannot start %s delivered task(s), giving them back: %s", len(pushed), exc)
                self._safely(self.consumer.requeue, pushed)
                self._safely(self.consumer.ack, [d for d in deliveries if d.task is not None])
                time.sleep(0.5)
                return tasks
        self._safely(self.consumer.ack, deliveries)
        return tasks

    @staticmethod
    def _safely(call: Any, deliveries: list[Delivery]) -> None:
        if not deliveries:
            return
        try:
            call(deliveries)
        except BrokerUnavailable as exc:
            logger.warning("broker unavailable while settling %s deliveries: %s", len(deliveries), exc)

    def _dispatch(self) -> None:
        while self.held and self.pool.free() > 0:
            task = self.held.popleft()
            self.pool.run(task)
            self.running[task.id] = _Running(task, time.monotonic() + task.timeout)
            self.cancels.started(task.id)

    def _events(self, ready: list[Any]) -> None:
        for ev in self.pool.events(ready):
            if ev.kind == "progress":
                r = self.running.get(ev.task_id)
                if r is not None and not r.taken_away:
                    self.progress.report(ev.task_id, ev.value)
            elif ev.kind == "done" and ev.outcome is not None:
                outcome = ev.outcome
                if self.cancels.is_cancelled(ev.task_id) and outcome.kind != "cancelled":
                    outcome = dataclasses.replace(
                        outcome,
                        kind="cancelled",
                        error={"type": "Cancelled", "message": "cancelled by request", "traceback": None},
                    )
                self._record(ev.task_id, outcome)

    def _record(self, task_id: uuid.UUID, outcome: Outcome) -> None:
        r = self.running.pop(task_id, None)
        self.cancels.finished(task_id)
        self.progress.forget(task_id)
        if r is None or r.taken_away:
            return  # recovered elsewhere; this attempt's outcome does not count
        self.outcomes.put(r.task, outcome)
        if outcome.duration is not None:
            prev = self._avg_duration
            self._avg_duration = outcome.duration if prev is None else 0.8 * prev + 0.2 * outcome.duration
        if outcome.kind == "completed":
            self.processed += 1
        elif outcome.kind in ("failed", "retry"):
            self.failed += 1

    def _duties(self) -> None:
        """Heartbeat, cancel flags and forced stops, timeouts, progress."""
        if self.pool.recycle_requested and not self.stopping:
            logger.warning("the %s pool asked for a new process: warm shutdown", self.pool.name)
            self.stop()
        if self.presence.due():
            current = ",".join(str(t) for t in self.running) or None
            self.presence.beat({"current_task": current, "processed": self.processed, "failed": self.failed})
        if self.running:
            newly, forced = self.cancels.poll()
            for task_id in newly:
                self.pool.cancel(task_id)
            for task_id in forced:
                held = self.running.get(task_id)
                with task_context(held.task if held else None, worker=self.worker_id):
                    logger.info("task %s did not stop within the cancel grace period; killing it", task_id)
                self._kill(
                    task_id, "cancelled", "Cancelled", "stopped by force after the cancel grace period"
                )
            now = time.monotonic()
            for r in list(self.running.values()):
                if now >= r.deadline:
                    with task_context(r.task, worker=self.worker_id):
                        logger.info(
                            "task %s ran past its timeout of %ss; killing it", r.task.id, r.task.timeout
                        )
                    self._kill(r.task.id, "failed", "TimeoutError", f"timed out after {r.task.timeout}s")
        if self.progress.due():
            self.progress.flush()

    def _kill(self, task_id: uuid.UUID, kind: str, error_type: str, message: str) -> None:
        r = self.running.get(task_id)
        if r is None or not self.pool.kill(task_id):
            return
        error = {"type": error_type, "message": message, "traceback": None}
        started = r.deadline - r.task.timeout
        self._record(task_id, Outcome(task_id, kind, error=error, duration=time.monotonic() - started))

    def _flush_due(self) -> bool:
        """Outcomes in batches: half the capacity at once, when nothing else is held, or after
        20 ms; a completion then costs a fraction of one statement."""
        if not len(self.outcomes):
            return False
        if self.stopping or not self.held or len(self.outcomes) >= max(1, self.capacity // 2):
            return True
        return self.outcomes.due()

    def _hand_back_held(self) -> None:
        if not self.held:
            return
        for t in self.held:
            self.outcomes.put(t, Outcome(t.id, "requeue"))
        self.held.clear()
        self.outcomes.flush()

    def _shutdown(self) -> None:
        """Hand back what is held, stop the pool, unregister."""
        for t in self.held:
            self.outcomes.put(t, Outcome(t.id, "requeue"))
        self.held.clear()
        try:
            for task in self.pool.close(force=True):
                r = self.running.pop(task.id, None)
                if r is not None and not r.taken_away:
                    with task_context(task, worker=self.worker_id):
                        logger.warning("handing back task %s, still running at shutdown", task.id)
                    self.outcomes.put(task, Outcome(task.id, "requeue"))
        finally:
            try:
                self.progress.flush()
                self.outcomes.close()  # stops the writer thread, writes what is left
            except Exception:  # noqa: BLE001 - shutting down; the manager recovers what is left
                logger.exception("could not hand back tasks at shutdown")
            try:
                self.consumer.close()
            except Exception:  # noqa: BLE001
                logger.debug("consumer close failed", exc_info=True)
            self.presence.unregister()
            logger.info(
                "worker %s stopped (%s completed, %s failed)", self.worker_id, self.processed, self.failed
            )
            sys.stdout.flush()


def run_worker(runtime: Runtime, options: WorkerOptions, consumer: Consumer | None = None) -> None:
    """Run core's loop over ``consumer`` (default: the runtime broker's) until stopped."""
    if consumer is None:
        consumer = runtime.broker.consumer(options.queues, options.worker_id, options.prefetch)
    WorkerLoop(runtime, options, consumer).run()
