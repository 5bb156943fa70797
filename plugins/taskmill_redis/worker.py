"""RQ workers for taskmill: RQ's own work loop, configured, with taskmill's duties added.

``taskmill worker`` with a ``redis://`` broker runs :class:`TaskmillSimpleWorker` (RQ's
SimpleWorker: the job runs in the worker process; the measured default, see docs/redis.md) or
:class:`TaskmillForkWorker` (RQ's forking Worker: a work-horse per job, for isolation), chosen
by ``TASKMILL_REDIS_WORKER_CLASS``. ``--concurrency N`` > 1 runs RQ's ``WorkerPool`` of N such
workers. The loop (``work`` → ``dequeue_job_and_maintain_ttl`` → ``execute_job``) is RQ's; the
overrides below only trim RQ's per-job bookkeeping that PostgreSQL already does, and add:

* **Registration in the database**: each RQ worker process registers in the ``workers`` table
  under its RQ name and heartbeats there from a thread (current task, processed, failed), so
  ``GET /api/v1/workers`` lists it and the manager recovers its task if it dies (lease).
* **No RQ registries per job**: no execution record, no StartedJobRegistry entry, no result.
  RQ's abandoned-job cleanup therefore never moves or re-runs a task; the lease does.
* **Timeouts**: RQ's death penalty raises :class:`~taskmill.execution.TimeoutExpired` in the job,
  which core records as a failed attempt with ``error.type == "TimeoutError"``.
* **Cancel**: RQ's stop-job command kills a forking worker's work-horse; a SimpleWorker sees the
  cooperative flag and, after ``cancel_grace``, is stopped by a signal raised in the job.
* **Pause**: paused queues are left out of the queues a worker listens to (checked once a
  second); a job popped just as its queue was paused is pushed back to the front.
* **Warm shutdown**: SIGTERM lets the running task finish (up to ``shutdown_timeout``); a second
  signal, or the timeout, stops it and hands it back to the queue.
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

from taskmill.errors import StorageUnavailable
from taskmill.execution import TimeoutExpired
from taskmill.models import Outcome
from taskmill.models import TaskStatus
from taskmill.models import WorkerInfo
from taskmill.worker import WorkerOptions
from taskmill.worker import current_runtime
from taskmill.worker import die_with_parent as set_parent_death_signal
from taskmill_redis.factory import SERIALIZER
from taskmill_redis.factory import connect
from taskmill_redis.factory import listen_order
from taskmill_redis.factory import make_queue
from taskmill_redis.factory import split_rq_queue_name

if TYPE_CHECKING:  # pragma: no cover
    from taskmill.runtime import Runtime
    from taskmill_redis.broker import RedisBroker

__all__ = ["TaskmillSimpleWorker", "TaskmillForkWorker", "worker_class", "run"]

logger = logging.getLogger("taskmill.redis.worker")

IDLE_QUEUE = "taskmill-idle"
"""An RQ queue nobody publishes to: listened to when every queue of a worker is paused."""

DEQUEUE_TIMEOUT = 1
"""Seconds one BLPOP blocks; the loop re-reads the paused queues between two."""

PAUSED_REFRESH = 1.0
"""Seconds the set of paused queues is cached."""

RQ_HEARTBEAT_EVERY = 10.0
"""Seconds between two RQ worker-key heartbeats (RQ writes one several times per job)."""


class ForcedStop(BaseException):  # noqa: N818 - it is a signal, not an error of the handler
    """Raised in a SimpleWorker's job to stop a task that ignored its cancel request."""


class TaskmillWorkerMixin:
    """taskmill's duties on top of an RQ worker class (see the module docstring)."""

    # RQ class attributes: JSON jobs, quick reconnects
    job_class = Job
    queue_class = Queue
    max_connection_wait_time = 2.0

    forks = False
    #: set on pool members: a worker whose pool parent was SIGKILLed dies too (its task is
    #: then recovered through the lease) instead of running on unsupervised
    die_with_parent = False

    # ---- set-up ---------------------------------------------------------------------------------
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """taskmill's state, then the RQ worker class's own ``__init__`` with the JSON serializer."""
        self._tm_init()
        kwargs.setdefault("serializer", SERIALIZER)
        kwargs.setdefault("log_job_description", False)
        super().__init__(*args, **kwargs)

    def _tm_init(self) -> None:
        self._rt: Runtime = current_runtime()
        self._tm_settings = self._rt.settings
        self._current: str | None = None
        self._processed = 0
        self._failed = 0
        self._paused: set[str] = set()
        self._paused_at = 0.0
        self._idle_queue: Queue | None = None
        self._rq_beat = 0.0
        self._suspension_checked = 0.0
        self._force_task: str | None = None
        self._watch_stop = threading.Event()
        self._watcher: threading.Thread | None = None

    @property
    def _ordered_queues(self) -> list[Queue]:
        """The queues RQ pops from: this worker's, highest priority first, minus paused ones."""
        queues = [
            q for q in self.__dict__.get("_tm_queues", []) if self._queue_of(q) not in self._paused_now()
        ]
        if not queues:
            if self._idle_queue is None:
                self._idle_queue = make_queue(IDLE_QUEUE, self.connection)
            queues = [self._idle_queue]
        return queues

    @_ordered_queues.setter
    def _ordered_queues(self, value: list[Queue]) -> None:
        self.__dict__["_tm_queues"] = list(value)

    @staticmethod
    def _queue_of(queue: Queue) -> str:
        parsed = split_rq_queue_name(queue.name)
        return parsed[0] if parsed else queue.name

    def _paused_now(self, refresh: bool = False) -> set[str]:
        now = time.monotonic()
        if refresh or now - self._paused_at >= PAUSED_REFRESH:
            try:
                self._paused = self._rt.storage.paused_queues()
            except StorageUnavailable as exc:
                logger.warning("cannot read paused queues: %s", exc)
            self._paused_at = now
        return self._paused

    # ---- RQ's loop, kept, with its per-job Redis writes trimmed ---------------------------------
    def work(self, burst: bool = False, **kwargs: Any) -> bool:
        """RQ's work loop, registered in the database, and entered again after a Redis outage."""
        kwargs["with_scheduler"] = False  # delayed tasks are released by the manager
        if self._tm_settings.log_level.upper() != "DEBUG":
            kwargs.setdefault("logging_level", "WARNING")
        self._register()
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
                if burst or self._stop_requested or self._shutdown_requested_date is not None:
                    return worked
                restarts += 1
                logger.warning("worker %s lost its Redis loop; entering it again in 1 s", self.name)
                time.sleep(1.0)
        finally:
            self._unregister()

    @property
    def dequeue_timeout(self) -> int:
        return DEQUEUE_TIMEOUT

    @property
    def connection_timeout(self) -> int:
        return DEQUEUE_TIMEOUT + 10

    def heartbeat(self, timeout: int | None = None, pipeline: Any = None) -> None:
        """RQ's worker-key heartbeat, at most every ``RQ_HEARTBEAT_EVERY`` seconds between jobs."""
        now = time.monotonic()
        if pipeline is None and timeout is None and now - self._rq_beat < RQ_HEARTBEAT_EVERY:
            return
        self._rq_beat = now
        super().heartbeat(timeout, pipeline)  # type: ignore[misc]

    def set_state(self, state: str, pipeline: Any = None) -> None:
        """Write the state to Redis only when it changes."""
        if pipeline is None and state == self._state:
            return
        super().set_state(state, pipeline)  # type: ignore[misc]

    def check_for_suspension(self, burst: bool) -> None:
        """``rq suspend`` is honoured, checked once a second instead of before every job."""
        now = time.monotonic()
        if now - self._suspension_checked < 1.0:
            return
        self._suspension_checked = now
        super().check_for_suspension(burst)  # type: ignore[misc]

    def _take(self, job: Job, queue: Queue) -> bool:
        """Take a popped job: False (and pushed back) when its queue was paused meanwhile.

        The job's hash is deleted before the task runs (RQ keeps nothing of it: PostgreSQL holds
        the outcome), so a re-publish while the task runs is never deleted by this worker.
        """
        if self._queue_of(queue) in self._paused_now():
            queue.push_job_id(job.id, at_front=True)
            return False
        self.connection.delete(job.key)
        self._current = job.id
        self._state = WorkerStatus.BUSY  # in memory: a SIGTERM now is a warm shutdown
        return True

    def _done(self) -> None:
        self._current = None
        self._force_task = None
        self._state = WorkerStatus.IDLE

    def perform_job(self, job: Job, queue: Queue) -> bool:
        """Run ``execute(task_id)`` under RQ's death penalty; record endings it could not."""
        tid = job.id
        timeout = int(job.timeout or 300)
        try:
            with self.death_penalty_class(timeout, TimeoutExpired, job_id=tid):
                status = job.func(*job.args, **job.kwargs)
        except TimeoutExpired:
            status = self._record(tid, "failed", "TimeoutError", f"timed out after {timeout}s")
        except ForcedStop:
            status = self._record(
                tid, "cancelled", "Cancelled", "stopped by force after the cancel grace period"
            )
        except (SystemExit, KeyboardInterrupt):
            self._record(tid, "requeue", "", "")
            raise
        except Exception as exc:  # noqa: BLE001 - the task must not stay running
            logger.exception("task %s failed outside its handler", tid)
            status = self._record(tid, "failed", type(exc).__name__, str(exc))
        self._count(status)
        return True

    def _count(self, status: str | None) -> None:
        if status == "completed":
            self._processed += 1
        elif status in ("failed", "scheduled"):
            self._failed += 1

    def _record(self, task_id: str, kind: str, error_type: str, message: str) -> str | None:
        """Write an outcome for a task this worker still holds (a kill, a timeout outside the
        handler, a hand-back). Returns the status written, or None."""
        rt = self._rt
        try:
            task = rt.storage.get_task(uuid.UUID(task_id))
            if task is None or task.status is not TaskStatus.RUNNING or task.worker != self.name:
                return None
            error = {"type": error_type, "message": message, "traceback": None} if error_type else None
            written = rt.lifecycle.finish([(task, Outcome(task.id, kind, error=error))], self.name)
        except Exception:  # noqa: BLE001 - the lease recovers the task if this cannot be written
            logger.exception("cannot record the outcome of task %s", task_id)
            return None
        if kind == "requeue" and written:
            logger.warning("handed task %s back to its queue", task_id)
        return written[0].status.value if written else None

    # ---- database registration and the watcher thread ------------------------------------------
    def _info(self) -> WorkerInfo:
        return WorkerInfo(
            id=self.name,
            host=socket.gethostname(),
            pid=os.getpid(),
            queues=sorted({self._queue_of(q) for q in self.queues}),
            concurrency=1,
        )

    def _register(self) -> None:
        if self.die_with_parent:
            set_parent_death_signal()
        self._rt.worker_id = self.name
        self._rt.storage.register_worker(self._info())
        if not self.forks:
            signal.signal(signal.SIGUSR1, self._on_force_stop)
        self._watch_stop.clear()
        self._watcher = threading.Thread(target=self._watch, name="taskmill-watcher", daemon=True)
        self._watcher.start()

    def _unregister(self) -> None:
        self._watch_stop.set()
        if self._watcher is not None:
            self._watcher.join(timeout=5)
        try:
            self._rt.storage.unregister_worker(self.name)
        except StorageUnavailable as exc:
            logger.warning("cannot unregister worker %s: %s", self.name, exc)
        logger.info("worker %s stopped (%s completed, %s failed)", self.name, self._processed, self._failed)

    def _on_force_stop(self, _signum: int, _frame: Any) -> None:
        if self._force_task is not None and self._force_task == self._current:
            raise ForcedStop(self._force_task)

    def _watch(self) -> None:
        """Heartbeat in the database; force-stop cancelled tasks; bound the warm shutdown."""
        s = self._tm_settings
        next_beat = 0.0
        flagged: dict[str, float] = {}
        next_check = 0.0
        task_seen: tuple[str | None, float] = (None, 0.0)
        stop_seen = 0.0
        while not self._watch_stop.wait(0.1):
            now = time.monotonic()
            current = self._current
            if now >= next_beat:
                next_beat = now + s.heartbeat
                self._db_heartbeat(current)
            if current != task_seen[0]:
                task_seen = (current, now)
                flagged.clear()
            if current is not None and now >= next_check and now - task_seen[1] >= 0.5:
                next_check = now + 0.5
                try:
                    stop = bool(self._rt.lifecycle.cancel_requested([uuid.UUID(current)]))
                except Exception:  # noqa: BLE001 - checked again in half a second
                    stop = False
                if not stop:
                    flagged.pop(current, None)
                elif current not in flagged:
                    flagged[current] = now + s.cancel_grace
                elif now >= flagged[current] and self._current == current:
                    logger.info("task %s did not stop within the cancel grace period; stopping it", current)
                    self._force_stop(current)
                    flagged[current] = now + 1e9
            if self._stop_requested and current is not None:
                stop_seen = stop_seen or now
                if now - stop_seen >= s.shutdown_timeout:
                    logger.warning("task %s still runs after the shutdown timeout; handing it back", current)
                    stop_seen = now + 1e9
                    os.kill(os.getpid(), signal.SIGINT)

    def _force_stop(self, task_id: str) -> None:
        self._force_task = task_id
        signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGUSR1)

    def _db_heartbeat(self, current: str | None) -> None:
        try:
            alive = self._rt.storage.heartbeat(
                self.name, {"current_task": current, "processed": self._processed, "failed": self._failed}
            )
            if not alive:
                logger.warning("worker %s was declared dead by a manager; registering again", self.name)
                self._rt.storage.register_worker(self._info())
        except Exception as exc:  # noqa: BLE001 - the next heartbeat tries again
            logger.warning("heartbeat of worker %s failed: %s", self.name, exc)


class TaskmillSimpleWorker(TaskmillWorkerMixin, SimpleWorker):
    """RQ's SimpleWorker: the task runs in the worker process (the default; fastest)."""

    def execute_job(self, job: Job, queue: Queue) -> None:
        """Run the job in this process without RQ's execution records (PostgreSQL has them)."""
        if not self._take(job, queue):
            return
        try:
            self.perform_job(job, queue)
        finally:
            self._done()


class TaskmillForkWorker(TaskmillWorkerMixin, Worker):
    """RQ's forking Worker: each task runs in a work-horse (isolation; RQ's stop-job works)."""

    forks = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._horse_status: int | None = None
        super().__init__(*args, **kwargs)

    def execute_job(self, job: Job, queue: Queue) -> None:
        """Fork a work-horse for the job; record the task if the horse was killed."""
        if not self._take(job, queue):
            return
        tid = job.id
        self._horse_status = None
        try:
            self.set_current_job_id(tid)  # RQ's stop-job command checks it
            self.fork_work_horse(job, queue)
            self.monitor_work_horse(job, queue)
        except (SystemExit, KeyboardInterrupt):
            self._record(tid, "requeue", "", "")
            raise
        finally:
            try:
                self.set_current_job_id(None)
            except RedisError:
                pass
            stopped = self._stopped_job_id == tid or self._force_task == tid
            self._stopped_job_id = None
            self._done()
        code = self._horse_status
        if code is not None and code != 0:
            if stopped:
                self._count(self._record(tid, "cancelled", "Cancelled", "stopped on request"))
            else:
                reason = f"the work-horse running the task exited unexpectedly (wait status {code})"
                self._count(self._record(tid, "failed", "WorkerLost", reason))
        else:
            task = self._rt.storage.get_task(uuid.UUID(tid))
            self._count(task.status.value if task is not None else None)

    def wait_for_horse(self) -> tuple[int | None, int | None, Any]:
        pid, status, rusage = super().wait_for_horse()
        if pid:
            self._horse_status = status
        return pid, status, rusage

    def maintain_heartbeats(self, job: Job) -> None:
        """Only the worker key: there is no RQ execution record to refresh."""
        self.heartbeat(self.job_monitoring_interval + 60)

    def handle_job_failure(
        self, job: Job, queue: Queue, started_job_registry: Any = None, exc_string: str = ""
    ) -> None:
        """RQ's failed registry is not used: :meth:`execute_job` records the task in PostgreSQL."""
        logger.debug("work-horse of task %s ended abnormally: %s", job.id, exc_string)

    def setup_work_horse_signals(self) -> None:
        super().setup_work_horse_signals()
        set_parent_death_signal()  # a SIGKILLed worker must not leave its task running

    def _force_stop(self, task_id: str) -> None:
        self._force_task = task_id
        self._stopped_job_id = task_id
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
    cls = worker_class(broker.runtime.plugin_settings("redis").worker_class)
    names = listen_order(options.queues)
    level = "DEBUG" if settings.log_level.upper() == "DEBUG" else "WARNING"
    conn = connect(broker.url, socket_timeout=DEQUEUE_TIMEOUT + 10)
    if options.concurrency <= 1:
        queues = [make_queue(n, conn) for n in names]
        worker = cls(queues, name=options.worker_id, connection=conn)
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
