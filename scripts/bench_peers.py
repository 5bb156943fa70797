"""Peers for the benchmarks, run from their own virtualenv (never taskmill dependencies).

Install them once::

    python -m venv /work/venvs/peers
    /work/venvs/peers/bin/pip install pgqueuer asyncpg 'celery[redis]'

(or set ``TASKMILL_BENCH_PEERS`` to another virtualenv). Each function returns ``None`` when its
peer is not installed. Drains are measured the same way for every system (:func:`watch_drain`):
a backlog of N no-op jobs is inserted first, the workers start, and the steady rate is the jobs
finished between the first and the last sample that saw progress, over that time.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

PEERS = Path(os.environ.get("TASKMILL_BENCH_PEERS", "/work/venvs/peers"))

__all__ = ["PEERS", "peer_python", "pgqueuer_drain", "celery_drain", "watch_drain"]


def peer_python(module: str) -> str | None:
    """The peers' python when it can import ``module``."""
    py = PEERS / "bin" / "python"
    if not py.exists():
        return None
    ok = subprocess.run([str(py), "-c", f"import {module}"], capture_output=True, check=False)
    return str(py) if ok.returncode == 0 else None


def watch_drain(
    remaining: Callable[[], int],
    total: int,
    timeout: float = 600,
    every: float = 0.02,
    procs: list[subprocess.Popen[bytes]] | None = None,
) -> float:
    """Steady drain rate (jobs/s): sample ``remaining()`` until it reaches 0.

    Raises:
        RuntimeError: the drain did not finish in ``timeout``, or every process in ``procs`` exited.
    """
    deadline = time.monotonic() + timeout
    first_t = first_left = None
    while True:
        left = remaining()
        now = time.monotonic()
        if first_t is None and left < total:
            first_t, first_left = now, left
        if left == 0:
            break
        if now > deadline:
            raise RuntimeError(f"drain did not finish ({left} of {total} left)")
        if procs and all(p.poll() is not None for p in procs):
            raise RuntimeError(f"the workers exited with {left} of {total} jobs left")
        time.sleep(every)
    if first_t is None or now <= first_t:
        return float("nan")
    return (first_left or 0) / (now - first_t)


def _spawn(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        return subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        try:
            os.killpg(p.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    for p in procs:
        try:
            p.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


PGQ_APP = """
import os
from contextlib import asynccontextmanager

import asyncpg
from pgqueuer import PgQueuer
from pgqueuer.db import AsyncpgDriver


@asynccontextmanager
async def main():
    conn = await asyncpg.connect(os.environ["PGDSN"])
    pgq = PgQueuer(AsyncpgDriver(conn))

    @pgq.entrypoint("noop")
    async def noop(job) -> None:
        pass

    yield pgq
    await conn.close()
"""

PGQ_ENQUEUE = """
import asyncio, os, sys
import asyncpg
from pgqueuer import Queries
from pgqueuer.db import AsyncpgDriver


async def go(n: int) -> None:
    conn = await asyncpg.connect(os.environ["PGDSN"])
    q = Queries(AsyncpgDriver(conn))
    for i in range(0, n, 1000):
        k = min(1000, n - i)
        await q.enqueue(["noop"] * k, [None] * k, [0] * k)
    await conn.close()

asyncio.run(go(int(sys.argv[1])))
"""


def pgqueuer_drain(db_url: str, n: int, processes: int = 2, batch_size: int | None = None) -> float | None:
    """PgQueuer's ``pgq run`` with ``processes`` processes (its defaults unless ``batch_size``)
    draining ``n`` no-op jobs on the database ``db_url`` (a scratch one)."""
    py = peer_python("pgqueuer")
    if py is None:
        return None
    import psycopg2

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "pgq_bench_app.py").write_text(textwrap.dedent(PGQ_APP))
        (work / "pgq_bench_enqueue.py").write_text(textwrap.dedent(PGQ_ENQUEUE))
        (work / "pgq_bench_run.py").write_text(textwrap.dedent(PGQ_RUN))
        env = {**os.environ, "PGDSN": db_url, "PYTHONPATH": str(work)}
        pgq = [py, "-m", "pgqueuer"]
        subprocess.run([*pgq, "install"], env=env, check=True, capture_output=True)
        subprocess.run([py, str(work / "pgq_bench_enqueue.py"), str(n)], env=env, check=True)
        conn = psycopg2.connect(db_url)
        conn.autocommit = True
        cur = conn.cursor()

        def remaining() -> int:
            cur.execute("SELECT count(*) FROM pgqueuer")
            return int(cur.fetchone()[0])

        extra = [str(batch_size)] if batch_size else []
        cmd = [py, str(work / "pgq_bench_run.py"), *extra]
        procs = [_spawn(cmd, env, work / f"{i}.log") for i in range(processes)]
        try:
            return watch_drain(remaining, n, procs=procs)
        finally:
            _stop(procs)
            conn.close()


PGQ_RUN = """
import asyncio, sys
from pgqueuer import run

# what ``pgq run pgq_bench_app:main`` does, with its defaults (batch 10) unless argv[1]; the CLI
# of some pgqueuer/typer combinations fails on its --log-level option before it starts
kw = {"batch_size": int(sys.argv[1])} if len(sys.argv) > 1 else {}
asyncio.run(run("pgq_bench_app:main", **kw))
"""

CELERY_APP = """
import os
from celery import Celery

app = Celery("bench", broker=os.environ["CELERY_BROKER"])
app.conf.update(task_ignore_result=True, broker_connection_retry_on_startup=True)


@app.task(name="noop")
def noop():
    return None
"""

CELERY_ENQUEUE = """
import sys
from celery_bench_app import app, noop

n = int(sys.argv[1])
with app.producer_or_acquire() as producer:
    for _ in range(n):
        noop.apply_async(producer=producer)
"""


def celery_drain(redis_url: str, n: int, concurrency: int = 2) -> float | None:
    """Celery prefork ``-c concurrency`` on ``redis_url`` (a private server), no result backend."""
    py = peer_python("celery")
    if py is None:
        return None
    import redis

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "celery_bench_app.py").write_text(textwrap.dedent(CELERY_APP))
        (work / "celery_bench_enqueue.py").write_text(textwrap.dedent(CELERY_ENQUEUE))
        env = {**os.environ, "CELERY_BROKER": redis_url, "PYTHONPATH": str(work)}
        subprocess.run([py, str(work / "celery_bench_enqueue.py"), str(n)], env=env, check=True)
        r = redis.Redis.from_url(redis_url)

        def remaining() -> int:
            return int(r.llen("celery")) + _unacked(r)

        proc = _spawn(
            [py, "-m", "celery", "-A", "celery_bench_app", "worker", "-c", str(concurrency), "-P", "prefork",
             "--loglevel", "WARNING", "--without-gossip", "--without-mingle", "--without-heartbeat"],
            env,
            work / "celery.log",
        )  # fmt: skip
        try:
            return watch_drain(remaining, n, procs=[proc])
        finally:
            _stop([proc])


def _unacked(r: Any) -> int:
    return int(r.hlen("unacked") or 0)


if __name__ == "__main__":  # pragma: no cover - a quick check: python scripts/bench_peers.py URL N
    print(pgqueuer_drain(sys.argv[1], int(sys.argv[2])))
