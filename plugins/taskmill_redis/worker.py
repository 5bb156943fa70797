"""RQ workers for taskmill: RQ's own work loop, configured, with core's duty units plugged in.

``taskmill worker`` with a ``redis://`` broker runs :class:`TaskmillSimpleWorker` (RQ's
SimpleWorker: the task runs in the worker process; the measured default, see docs/redis.md) or
:class:`TaskmillForkWorker` (RQ's forking Worker: a work-horse per task, for isolation), chosen
by ``TASKMILL_REDIS_WORKER_CLASS``. ``--concurrency N`` > 1 runs RQ's ``WorkerPool`` of N such
workers. The loop (``work`` → ``dequeue_job_and_maintain_ttl`` → ``execute_job``) is RQ's; this
module configures it through RQ's documented surface only — ``queue_class`` (the reliable take of
:mod:`taskmill_redis.reliable`), the JSON serializer, ``death_penalty_class``, and overrides of
public worker methods (``execute_job`` and ``perform_job`` as rq's own ``worker_classes.py``
subclasses do, throttled ``heartbeat``/``set_state``/``check_for_suspension``, the
``handle_warm_shutdown_request`` hook, and for the forking worker ``setup_work_horse_signals``,
``wait_for_horse``, ``maintain_heartbeats``). No RQ private attribute is read or written.

Each take moves up to ``1 + prefetch`` ids into the worker's in-flight list (the prefetch adapts
to how long tasks take, as core's loop does); the first job of the take starts them all with one
``lifecycle.start`` (skipping duplicates, cancelled tasks and paused queues) and, in one pipeline,
their entries leave the in-flight list; :func:`taskmill_redis.jobs.execute` runs each handler;
the outcomes go to core's :class:`OutcomeBuffer`. Core's units (presence, cancel watch, progress
coalescer, outcome buffer) run in :class:`~taskmill_redis.duties.Duties`.

* **Timeouts**: RQ's death penalty raises :class:`TimeoutExpired` in the job; core records a
  failed attempt with ``error.type == "TimeoutError"``.
* **Cancel**: the handler sees the cooperative flag; after ``cancel_grace`` a SimpleWorker's job
  is interrupted by a signal, a forking worker's work-horse is killed.
* **Pause**: ``lifecycle.start`` skips paused queues in its statement; the delivery is dropped
  and comes back when the queue is resumed (``RedisBroker.queue_resumed``).
* **Warm shutdown**: SIGTERM lets the running task finish (up to ``shutdown_timeout``), then it
  is stopped and handed back; taken-but-unstarted ids go back to the front of their lists.
* **Reconnect**: when Redis goes away, RQ's loop ends; it is entered again once Redis answers.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
import uuid
from typing import TYPE_CHECKING
from typing import Any

from redis.exceptions import RedisError
from rq.job import Job
from rq.queue import Queue
from rq.worker import SimpleWorker
from rq.worker import Worker
from rq.worker import WorkerStatus
from rq.worker_pool import WorkerPool

from taskmill.plugin_api import Outcome
from taskmill.plugin_api import StorageUnavailable
from taskmill.plugin_api import Task
from taskmill.plugin_api import TimeoutExpired
from taskmill.plugin_api import WorkerInfo
from taskmill.plugin_api import WorkerOptions
from taskmill.plugin_api import beat
from taskmill.plugin_api import current_runtime
from taskmill.plugin_api import die_with_parent as set_parent_death_signal
from taskmill_redis import jobs
from taskmill_redis.duties import Duties
from taskmill_redis.factory import SERIALIZER
from taskmill_redis.factory import connect
from taskmill_redis.factory import listen_order
from taskmill_redis.factory import split_rq_queue_name
from taskmill_redis.reliable import give_back
from taskmill_redis.reliable import inflight_key
from taskmill_redis.reliable import reclaim
from taskmill_redis.reliable import reliable_queue_class
from taskmill_redis.reliable import settle

if TYPE_CHECKING:  # pragma: no cover
    from taskmill_redis.broker import RedisBroker

__all__ = ["TaskmillSimpleWorker", "TaskmillForkWorker", "worker_class", "run"]

logger = logging.getLogger("taskmill.redis.worker")

SOCKET_TIMEOUT = 15.0
"""Read timeout of a worker's Redis connection (its blocking calls wait at most a second)."""

RQ_HEARTBEAT_EVERY = 10.0
"""Seconds between two RQ worker-key heartbeats between jobs (RQ writes several per job)."""


class ForcedStop(BaseException):  # noqa: N818 - it is a signal, not an error of the handler
    """Raised in a SimpleWorker's job to stop a task: ``reason`` is ``cancel`` or ``shutdown``."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _error(kind: str, error_type: str, message: str, task: Task) -> Outcome:
    return Outcome(task.id, kind, error={"type": error_type, "message": message, "traceback": None})


class TaskmillWorkerMixin:
    """taskmill's duties on top of an RQ worker class (see the module docstring)."""

    job_class = Job
    max_connection_wait_time = 2.0
    forks = False
    #: set on pool members: a worker whose pool parent was SIGKILLed dies too (its task is then
    #: recovered through the lease) instead of running on unsupervised
    die_with_parent = False
    #: ``--prefetch``: ids taken beyond the one to run; -1 adapts to how long tasks take
    prefetch = -1

    def __init__(self, queues: Any, *args: Any, **kwargs: Any) -> None:
        """RQ's ``__init__`` with the JSON serializer and this worker's reliable queue class."""
        name = kwargs.get("name") or uuid.uuid4().hex
        kwargs["name"] = name
        kwargs["queue_class"] = reliable_queue_class(name)
        kwargs.setdefault("serializer", SERIALIZER)
        kwargs.setdefault("log_job_description", False)
        names = [
            q.name if isinstance(q, Queue) else q for q in ([queues] if isinstance(queues, str) else queues)
        ]
        self._tm_rt: Any = current_runtime()
        self._tm_duties: Duties | None = None
        self._tm_beat = 0.0
        self._tm_suspension_checked = 0.0
        self._tm_stop = False
        self._tm_task: Task | None = None
        self._tm_forced: tuple[uuid.UUID, str] | None = None
        self._tm_status: int | None = None
        self._tm_batch: dict[str, Task | None] = {}
        self._tm_avg: float | None = None
        super().__init__(names, *args, **kwargs)  # type: ignore[call-arg]

    # ---- RQ's loop, entered (again after a Redis outage) with the duties around it ------------
    def work(self, burst: bool = False, **kwargs: Any) -> bool:
        """RQ's work loop, registered in the database, re-entered after a Redis outage."""
        kwargs["with_scheduler"] = False  # delayed tasks are released by the manager
        rt = self._tm_rt
        if rt.settings.log_level.upper() != "DEBUG":
            kwargs.setdefault("logging_level", "WARNING")
        if self.die_with_parent:
            set_parent_death_signal()
            rt.after_fork()
        rt.worker_id = self.name
        duties = Duties(rt, self._tm_info(), force_stop=self._tm_force_stop, batch=not self.forks)
        self._tm_duties = duties
        jobs.set_current(duties, None)
        duties.start()
        self.queue_class.take_limit = self._tm_take_limit()  # type: ignore[attr-defined]  # the first take too
        if not self.forks:
            signal.signal(signal.SIGUSR1, self._tm_on_force_stop)
        worked = False
        try:
            restarts = 0
            while True:
                try:
                    if restarts:
                        self.connection.delete(self.key)
                    worked = super().work(burst=burst, **kwargs) or worked  # type: ignore[misc]
                except RedisError as exc:
                    logger.warning("worker %s cannot reach Redis: %s", self.name, exc)
                if burst or self._tm_stop:
                    return worked
                restarts += 1
                logger.warning("worker %s lost its Redis loop; entering it again in 1 s", self.name)
                time.sleep(1.0)
        finally:
            self._tm_hand_back_batch()
            try:
                n = reclaim(self.connection, inflight_key(self.name))
                if n:
                    logger.info("gave back %s taken but unstarted task id(s)", n)
            except RedisError as exc:
                logger.warning("cannot give back taken ids (the manager will): %s", exc)
            jobs.set_current(None, None)
            duties.close()
            logger.info(
                "worker %s stopped (%s completed, %s failed)", self.name, duties.processed, duties.failed
            )

    def _tm_info(self) -> WorkerInfo:
        queues = sorted({(split_rq_queue_name(q.name) or (q.name, 0))[0] for q in self.queues})  # type: ignore[attr-defined]
        return WorkerInfo(id=self.name, host=socket.gethostname(), pid=os.getpid(), queues=queues)  # type: ignore[attr-defined]

    def handle_warm_shutdown_request(self) -> None:
        """RQ's hook on the first SIGTERM/SIGINT: start the shutdown timeout."""
        self._tm_stop = True
        if self._tm_duties is not None and self._tm_duties.stop_requested_at is None:
            self._tm_duties.stop_requested_at = time.monotonic()
        super().handle_warm_shutdown_request()  # type: ignore[misc]

    # ---- fewer Redis writes per job (PostgreSQL keeps the records) -----------------------------
    def heartbeat(self, timeout: int | None = None, pipeline: Any = None) -> None:
        """RQ's worker-key heartbeat, at most every ``RQ_HEARTBEAT_EVERY`` seconds between jobs."""
        beat()  # liveness: RQ heartbeats on every pass of its loop (and a work-horse's wait)
        now = time.monotonic()
        if pipeline is None and timeout is None and now - self._tm_beat < RQ_HEARTBEAT_EVERY:
            return
        self._tm_beat = now
        super().heartbeat(timeout, pipeline)  # type: ignore[misc]

    def set_state(self, state: str, pipeline: Any = None) -> None:
        """Write the state to Redis only when it changes."""
        if pipeline is None and state == self.get_state():  # type: ignore[attr-defined]
            return
        if pipeline is None and state == WorkerStatus.IDLE and self.queue_class.taken:  # type: ignore[attr-defined]
            return  # the next job of this take is handed out at once: still busy
        super().set_state(state, pipeline)  # type: ignore[misc]

    def check_for_suspension(self, burst: bool) -> None:
        """``rq suspend`` is honoured, checked once a second instead of before every job."""
        now = time.monotonic()
        if now - self._tm_suspension_checked < 1.0:
            return
        self._tm_suspension_checked = now
        super().check_for_suspension(burst)  # type: ignore[misc]

    # ---- one job ------------------------------------------------------------------------------
    def _tm_take(self, job: Job) -> Task | None:
        """The started task of a job RQ's loop handed out, or None when it must not run.

        The first job of a take starts every id taken with it, in one ``lifecycle.start``
        statement (skipping duplicates, cancelled tasks and paused queues), and then, in one
        pipeline, their in-flight entries and job hashes go and the worker is marked busy; the
        jobs after it find their task started already. When the start cannot be recorded the
        whole take goes back to the front of its lists.
        """
        if job.id in self._tm_batch:
            task = self._tm_batch.pop(job.id)
        else:
            task = self._tm_start_take(job)
        if task is None:
            logger.info("task %s was not started (not queued, or its queue is paused); dropped", job.id)
            return None
        self._tm_task = task
        assert self._tm_duties is not None
        self._tm_duties.started(task.id)
        jobs.set_current(self._tm_duties, task)
        return task

    def _tm_start_take(self, job: Job) -> Task | None:
        qc: Any = self.queue_class  # type: ignore[attr-defined]
        rest = list(qc.taken)
        entries = [qc.last_entry, *(entry for entry, _, _ in rest)]
        ids = [job.id, *(j.id for _, j, _ in rest)]
        inflight = inflight_key(self.name)  # type: ignore[attr-defined]
        pipe = self.connection.pipeline(transaction=False)  # type: ignore[attr-defined]
        # busy before the start commits: a SIGTERM from here on is a warm shutdown (RQ raises
        # StopRequested in an idle worker, which would leave a started task unrun)
        self.set_state(WorkerStatus.BUSY, pipeline=pipe)
        try:
            started = self._tm_rt.lifecycle.start([uuid.UUID(i) for i in ids], self.name)  # type: ignore[attr-defined]
        except StorageUnavailable as exc:
            logger.warning("cannot start %s task(s), giving them back: %s", len(ids), exc)
            pipe.reset()
            self.set_state(WorkerStatus.IDLE)
            qc.taken.clear()
            give_back(self.connection, inflight, entries)  # type: ignore[attr-defined]
            time.sleep(0.5)
            return None
        by_id = {str(t.id): t for t in started}
        with pipe:
            settle(self.connection, inflight, entries, pipeline=pipe)  # type: ignore[attr-defined]
            if not started:
                self.set_state(WorkerStatus.IDLE, pipeline=pipe)
            pipe.execute()
        self._tm_batch = {i: by_id.get(i) for i in ids[1:]}
        return by_id.get(job.id)

    def _tm_hand_back_batch(self) -> None:
        """Tasks started with a take but not run (the loop stopped): back to the queue."""
        batch, self._tm_batch = self._tm_batch, {}
        self.queue_class.taken.clear()  # type: ignore[attr-defined]  # still in flight: reclaimed
        assert self._tm_duties is not None
        back = [task for task in batch.values() if task is not None]
        for task in back:
            self._tm_duties.outcome(task, Outcome(task.id, "requeue"))
        if back:
            logger.info("handed back %s started but unrun task(s) of the last take", len(back))

    def _tm_take_limit(self) -> int:
        """Ids one take may move: one per job, plus a prefetch while tasks are short (as core's
        loop sizes its own: sixteen under 10 ms on average, four under 0.1 s, one under 1 s),
        or ``--prefetch``. A forking worker takes one at a time."""
        if self.forks:
            return 1
        if self.prefetch >= 0:
            return 1 + self.prefetch
        avg = self._tm_avg
        if avg is None or avg < 0.01:
            return 17
        if avg < 0.1:
            return 5
        return 2 if avg < 1.0 else 1

    def _tm_done(self, task: Task, seconds: float) -> None:
        assert self._tm_duties is not None
        self._tm_duties.finished(task.id)
        self._tm_task = None
        jobs.set_current(self._tm_duties, None)
        self._tm_avg = seconds if self._tm_avg is None else 0.8 * self._tm_avg + 0.2 * seconds
        self.queue_class.take_limit = self._tm_take_limit()  # type: ignore[attr-defined]

    def perform_job(self, job: Job, queue: Queue) -> bool:
        """Run ``execute(task_id)`` under RQ's death penalty; record endings it could not."""
        task = jobs.current_task()
        duties = jobs.duties()
        timeout = int(task.timeout if task is not None else job.timeout or 300)
        try:
            with self.death_penalty_class(timeout, TimeoutExpired, job_id=job.id):  # type: ignore[attr-defined]
                job.func(*job.args, **job.kwargs)
            return True
        except TimeoutExpired:
            outcome = _error("failed", "TimeoutError", f"timed out after {timeout}s", task)
        except ForcedStop as stop:
            if stop.reason == "shutdown":
                outcome = Outcome(task.id, "requeue")
            else:
                msg = "stopped by force after the cancel grace period"
                outcome = _error("cancelled", "Cancelled", msg, task)
        except (SystemExit, KeyboardInterrupt):
            duties.outcome(task, Outcome(task.id, "requeue"))
            duties.outcomes.flush()
            raise
        except Exception as exc:  # noqa: BLE001 - the task must not stay running
            logger.exception("task %s failed outside its handler", job.id)
            outcome = _error("failed", type(exc).__name__, str(exc), task)
        duties.outcome(task, outcome)
        return True

    # ---- forced stops -------------------------------------------------------------------------
    def _tm_force_stop(self, task_id: uuid.UUID, reason: str) -> None:
        self._tm_forced = (task_id, reason)
        signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGUSR1)

    def _tm_on_force_stop(self, _signum: int, _frame: Any) -> None:
        forced = self._tm_forced
        task = self._tm_task
        if forced is not None and task is not None and forced[0] == task.id:
            self._tm_forced = None
            raise ForcedStop(forced[1])


class TaskmillSimpleWorker(TaskmillWorkerMixin, SimpleWorker):
    """RQ's SimpleWorker: the task runs in the worker process (the default; fastest)."""

    def execute_job(self, job: Job, queue: Queue) -> None:
        """Start the task, then run it in this process without RQ's execution records."""
        task = self._tm_take(job)
        if task is None:
            return
        beat(busy_for=task.timeout + self._tm_rt.settings.cancel_grace)  # the task runs in the loop
        t0 = time.monotonic()
        try:
            self.perform_job(job, queue)
        finally:
            self._tm_done(task, time.monotonic() - t0)


class TaskmillForkWorker(TaskmillWorkerMixin, Worker):
    """RQ's forking Worker: each task runs in a work-horse (isolation)."""

    forks = True

    def execute_job(self, job: Job, queue: Queue) -> None:
        """Start the task, fork a work-horse for it, record the task if the horse was killed."""
        task = self._tm_take(job)
        if task is None:
            return
        self._tm_status = None
        self._tm_forced = None
        duties = self._tm_duties
        assert duties is not None
        t0 = time.monotonic()
        try:
            self.fork_work_horse(job, queue)
            self.monitor_work_horse(job, queue)
        except (SystemExit, KeyboardInterrupt):
            duties.outcome(task, Outcome(task.id, "requeue"))
            raise
        finally:
            forced, self._tm_forced = self._tm_forced, None
            self._tm_done(task, time.monotonic() - t0)
        code = self._tm_status
        if not code:
            return  # the horse recorded the outcome
        if forced is not None and forced[1] == "shutdown":
            duties.outcome(task, Outcome(task.id, "requeue"))
        elif forced is not None or self._tm_rt.lifecycle.cancel_requested([task.id]):
            duties.outcome(task, _error("cancelled", "Cancelled", "stopped by force on request", task))
        else:
            reason = f"the work-horse running the task exited unexpectedly (wait status {code})"
            duties.outcome(task, _error("failed", "WorkerLost", reason, task))

    def wait_for_horse(self) -> tuple[int | None, int | None, Any]:
        pid, status, rusage = super().wait_for_horse()
        if pid:
            self._tm_status = status
        return pid, status, rusage

    def maintain_heartbeats(self, job: Job) -> None:
        """Only the worker key: there is no RQ execution record to refresh."""
        self.heartbeat(self.job_monitoring_interval + 60)

    def setup_work_horse_signals(self) -> None:
        """In the work-horse: die with the worker; cancel flag and progress of its own."""
        super().setup_work_horse_signals()
        set_parent_death_signal()  # a SIGKILLed worker must not leave its task running
        rt = self._tm_rt
        rt.after_fork()
        horse = Duties(rt, self._tm_info(), batch=False, presence=False)
        task = jobs.current_task()
        horse.started(task.id)
        horse.start_thread()
        jobs.set_current(horse, task)

    def _tm_force_stop(self, task_id: uuid.UUID, reason: str) -> None:
        if self._tm_task is not None and self._tm_task.id == task_id:
            self._tm_forced = (task_id, reason)
            self.kill_horse()


def worker_class(name: str) -> type[TaskmillWorkerMixin]:
    """The worker class for ``TASKMILL_REDIS_WORKER_CLASS`` (``simple`` or ``fork``)."""
    return TaskmillForkWorker if name == "fork" else TaskmillSimpleWorker


def run(broker: RedisBroker, options: WorkerOptions) -> None:
    """Run ``options.concurrency`` RQ workers on ``options.queues`` until SIGTERM/SIGINT.

    One worker runs in this process; more run under RQ's WorkerPool (which restarts a worker
    that dies; the dead one's task is recovered by the manager after the lease).
    """
    settings = broker.settings
    if options.pool != "prefork":
        logger.warning(
            "--pool %s does not apply to the Redis broker: RQ's worker loop runs the tasks "
            "(TASKMILL_REDIS_WORKER_CLASS chooses how)",
            options.pool,
        )
    cls = worker_class(broker.runtime.plugin_settings("redis").worker_class)
    names = listen_order(options.queues)
    level = "DEBUG" if settings.log_level.upper() == "DEBUG" else "WARNING"
    conn = connect(broker.url, socket_timeout=SOCKET_TIMEOUT)
    cls = type(cls.__name__, (cls,), {"prefetch": options.prefetch, "__doc__": cls.__doc__})
    if options.concurrency <= 1:
        worker = cls(names, name=options.worker_id, connection=conn)
        worker.work(burst=options.burst, logging_level=level)
        return
    logger.info(
        "starting a pool of %s %s workers on %s", options.concurrency, cls.__name__, ",".join(options.queues)
    )
    member = type(cls.__name__, (cls,), {"die_with_parent": True, "__doc__": cls.__doc__})
    pool = WorkerPool(
        names,
        connection=conn,
        num_workers=options.concurrency,
        worker_class=member,
        serializer=SERIALIZER,
        job_class=Job,
    )
    pool.start(burst=options.burst, logging_level=level)
