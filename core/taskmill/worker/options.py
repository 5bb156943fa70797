"""What ``taskmill worker`` was asked to do, and the process-level helpers every worker uses."""

from __future__ import annotations

import ctypes
import dataclasses
import os
import signal
import socket
import uuid

__all__ = ["WorkerOptions", "make_worker_id", "die_with_parent", "POOLS"]

POOLS = ("prefork", "threads", "asyncio")
"""Pool names core knows (:data:`taskmill.worker.pool.POOL_FACTORIES`)."""

_PR_SET_PDEATHSIG = 1


def make_worker_id() -> str:
    """A worker id unique across hosts and restarts: ``host:pid:random``."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def die_with_parent() -> None:
    """Have the kernel SIGKILL this process when its parent dies (Linux), so a killed worker
    never leaves a task running unsupervised. A no-op elsewhere."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:  # pragma: no cover - not Linux
        pass


@dataclasses.dataclass
class WorkerOptions:
    """What ``taskmill worker`` was asked to do.

    Attributes:
        queues: taskmill queues to take tasks from.
        concurrency: tasks run at once (processes of the prefork pool).
        prefetch: tasks held beyond the free slots; -1 adapts to how long tasks take.
        worker_id: this worker's id in the database (generated when empty).
        burst: exit when no task is left (tests and batch jobs).
        pool: how handlers run: ``prefork`` (forked processes; the default), ``threads`` or
            ``asyncio`` (see :mod:`taskmill.worker.pool`).
    """

    queues: list[str]
    concurrency: int
    prefetch: int = -1
    worker_id: str = ""
    burst: bool = False
    pool: str = "prefork"

    def __post_init__(self) -> None:
        if not self.worker_id:
            self.worker_id = make_worker_id()
        if self.concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if self.pool not in POOLS:
            raise ValueError(f"unknown pool {self.pool!r} (known: {', '.join(POOLS)})")
