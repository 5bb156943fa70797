"""Benchmark: taskmill on Redis vs plain RQ vs Celery, in one run on one private redis-server.

For each system and worker configuration, with no-op tasks:
* enqueue rate: tasks submitted one at a time from one Python process (taskmill: the lifecycle,
  i.e. PostgreSQL insert + Redis publish, as the API does; RQ: ``Queue.enqueue``; Celery: ``delay``);
* drain rate: workers started on the full queue; from the first task taken to the last finished;
* submit-to-start latency p50/p99, one task at a time on idle workers;
* Redis commands per task (``INFO commandstats`` delta over enqueue + drain, minus our polling).

Usage: ``python scripts/bench_redis.py [--tasks 2000] [--latency 200]``. Needs PostgreSQL
(``TASKMILL_TEST_DATABASE_URL``), the ``redis-server`` binary, rq and celery.
"""

from __future__ import annotations

import argparse
import os
import platform
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from bench_peers import celery_drain  # noqa: E402

from tests.services import postgres_url  # noqa: E402
from tests.services import redis_server  # noqa: E402
from tests.services import scratch_database  # noqa: E402

POLL_COMMANDS = {"llen", "info", "config", "get", "mget", "keys", "scan"}


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return platform.processor() or "unknown"


def commands(conn: redis.Redis) -> int:
    stats = conn.info("commandstats")
    return sum(
        v["calls"] for k, v in stats.items() if k.removeprefix("cmdstat_").split("|")[0] not in POLL_COMMANDS
    )


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL) if p.pid else None
            p.wait()


def spawn(cmd: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    log = open(Path(os.environ.get("TMPDIR") or "/tmp") / "bench_redis_workers.log", "ab")  # noqa: SIM115
    proc = subprocess.Popen(
        cmd, env=env, stdout=log, stderr=log, start_new_session=True, cwd=ROOT / "scripts"
    )
    log.close()
    return proc


class Taskmill:
    """taskmill with the Redis broker; ``worker_class`` simple or fork, ``concurrency`` processes."""

    def __init__(self, db_url: str, redis_url: str, worker_class: str, concurrency: int) -> None:
        from taskmill.config import load_settings
        from taskmill.runtime import build_runtime

        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("TASKMILL_")},
            "TASKMILL_DATABASE_URL": db_url,
            "TASKMILL_BROKER_URL": redis_url,
            "TASKMILL_LOG_LEVEL": "WARNING",
            "TASKMILL_REDIS_WORKER_CLASS": worker_class,
            "PYTHONPATH": str(ROOT),
        }
        self.rt = build_runtime(load_settings(environ=self.env), upgrade=True)
        self.concurrency = concurrency
        self.queue = f"bench{uuid.uuid4().hex[:6]}"

    def enqueue(self, n: int) -> list[Any]:
        lc = self.rt.lifecycle
        return [lc.submit([lc.build({"type": "echo", "queue": self.queue}, "bench")])[0][0] for _ in range(n)]

    def start_workers(self) -> list[subprocess.Popen[bytes]]:
        cmd = [sys.executable, "-m", "taskmill.cli", "worker", "-q", self.queue, "-c", str(self.concurrency)]
        return [spawn(cmd, self.env)]

    def wait_ready(self) -> None:
        deadline = time.monotonic() + 60
        while not [w for w in self.rt.storage.workers.list() if self.queue in w.queues]:
            if time.monotonic() > deadline:
                raise RuntimeError("taskmill worker did not start")
            time.sleep(0.05)
        time.sleep(1.0)

    def drain_window(self, tasks: list[Any]) -> float:
        ids = [t.id for t in tasks]
        while True:
            done = self.rt.storage.tasks.get_many(ids)
            if all(t.status.value == "completed" for t in done):
                break
            time.sleep(0.2)
        first = min(t.started_at for t in done)
        last = max(t.finished_at for t in done)
        return (last - first).total_seconds()

    def latency(self, n: int) -> list[float]:
        out = []
        lc = self.rt.lifecycle
        for _ in range(n):
            t0 = time.time()
            task = lc.submit([lc.build({"type": "echo", "queue": self.queue}, "bench")])[0][0]
            while True:
                t = self.rt.storage.tasks.get(task.id)
                if t.started_at is not None and t.status.value == "completed":
                    break
                # started_at is the worker's clock: polling slowly does not change it, and a
                # 2 ms poll (a PostgreSQL query each) would take a core from the worker
                time.sleep(0.02)
            out.append(t.started_at.timestamp() - t0)
            time.sleep(0.01)
        return out


def list_drain_window(conn: redis.Redis, key: str, total: int) -> float:
    """Seconds from the first of ``total`` queued messages being taken to the list being empty."""
    while conn.llen(key) >= total:
        time.sleep(0.001)
    t0 = time.time()
    while conn.llen(key) > 0:
        time.sleep(0.005)
    return time.time() - t0


def stamp_latencies(conn: redis.Redis, n: int, enqueue: Callable[[str], Any]) -> list[float]:
    """Submit-to-start latencies of ``n`` stamp jobs (each writes its start time under its key)."""
    out = []
    for _ in range(n):
        key = f"bench:lat:{uuid.uuid4().hex}"
        t0 = time.time()
        enqueue(key)
        while (v := conn.get(key)) is None:
            time.sleep(0.001)
        out.append(float(v) - t0)
        time.sleep(0.01)
    return out


class PlainRQ:
    """RQ alone: SimpleWorker, forking Worker, or ``rq worker-pool``; JSON serializer."""

    def __init__(self, redis_url: str, kind: str, concurrency: int) -> None:
        from rq import Queue
        from rq.serializers import JSONSerializer

        self.url = redis_url
        self.kind = kind
        self.concurrency = concurrency
        self.conn = redis.Redis.from_url(redis_url, socket_timeout=10)
        self.name = f"bench{uuid.uuid4().hex[:6]}"
        self.queue = Queue(self.name, connection=self.conn, serializer=JSONSerializer)
        self.env = {**os.environ, "BENCH_REDIS_URL": redis_url, "PYTHONPATH": str(ROOT / "scripts")}

    def enqueue(self, n: int) -> list[Any]:
        for _ in range(n):
            self.queue.enqueue("bench_tasks.noop", result_ttl=0)
        return []

    def start_workers(self) -> list[subprocess.Popen[bytes]]:
        rq = [sys.executable, "-m", "rq.cli"]
        common = ["-u", self.url, "-S", "rq.serializers.JSONSerializer"]
        if self.kind == "pool":
            cmd = [*rq, "worker-pool", "-n", str(self.concurrency), "-w", "rq.worker.SimpleWorker", *common]
            cmd += ["--logging-level", "WARNING", self.name]
        else:
            wc = "rq.worker.SimpleWorker" if self.kind == "simple" else "rq.worker.Worker"
            cmd = [*rq, "worker", "-w", wc, *common, "--logging_level", "WARNING", self.name]
        return [spawn(cmd, self.env)]

    def wait_ready(self) -> None:
        time.sleep(2.0)

    def drain_window(self, tasks: list[Any], total: int) -> float:
        return list_drain_window(self.conn, self.queue.key, total)

    def latency(self, n: int) -> list[float]:
        return stamp_latencies(
            self.conn, n, lambda key: self.queue.enqueue("bench_tasks.stamp", key, result_ttl=0)
        )


class PlainCelery:
    """Celery, ``-c 2 --pool prefork``, Redis broker, no result backend, from the peers' virtualenv
    (``scripts/bench_peers.py``): drain only; its latency is not measured here."""

    def __init__(self, redis_url: str, concurrency: int) -> None:
        self.url = redis_url
        self.concurrency = concurrency

    def run(self, n: int) -> float | None:
        return celery_drain(self.url, n, self.concurrency)


def run_celery(label: str, system: PlainCelery, n: int) -> None:
    rate = system.run(n)
    if rate is None:
        print(f"{label:<36} (not installed in the peers' virtualenv: see scripts/bench_peers.py)")
        return
    print(f"{label:<36} {'':>10} {rate:>9.0f} {'-':>8} {'-':>8} {'-':>10}", flush=True)


def run_one(label: str, system: Any, n: int, n_lat: int, conn: redis.Redis) -> dict[str, Any]:
    conn.config_resetstat()
    t0 = time.perf_counter()
    tasks = system.enqueue(n)
    enqueue_rate = n / (time.perf_counter() - t0)
    procs = system.start_workers()
    try:
        if isinstance(system, Taskmill):
            window = system.drain_window(tasks)
        else:
            window = system.drain_window(tasks, n)
        cmds = commands(conn) / n
        system.wait_ready()
        lat = system.latency(n_lat)
    finally:
        stop(procs)
    row = {
        "system": label,
        "enqueue/s": enqueue_rate,
        "drain/s": n / window if window > 0 else float("inf"),
        "p50 ms": pct(lat, 0.5) * 1000,
        "p99 ms": pct(lat, 0.99) * 1000,
        "cmds/task": cmds,
    }
    print(
        f"{label:<36} {row['enqueue/s']:>10.0f} {row['drain/s']:>9.0f} {row['p50 ms']:>8.1f} "
        f"{row['p99 ms']:>8.1f} {row['cmds/task']:>10.1f}",
        flush=True,
    )
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=2000, help="tasks per drain run")
    parser.add_argument("--fork-tasks", type=int, default=500, help="tasks per drain run of forking workers")
    parser.add_argument("--latency", type=int, default=200, help="latency samples per system")
    parser.add_argument("--only", default="", help="comma-separated labels substrings to run")
    args = parser.parse_args()
    print(f"machine: {os.cpu_count()} CPUs, {cpu_model()}; Python {platform.python_version()}")
    with redis_server() as server, scratch_database(postgres_url()) as db:
        conn = redis.Redis.from_url(server.url)
        print(
            f"redis-server {conn.info('server')['redis_version']} (private, no persistence), "
            "PostgreSQL scratch database"
        )
        print(
            f"{'system':<36} {'enqueue/s':>10} {'drain/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'cmds/task':>10}"
        )
        runs = [
            ("taskmill SimpleWorker x1", lambda: Taskmill(db, server.url, "simple", 1), args.tasks),
            ("plain RQ SimpleWorker x1", lambda: PlainRQ(server.url, "simple", 1), args.tasks),
            ("taskmill pool of 2 SimpleWorkers", lambda: Taskmill(db, server.url, "simple", 2), args.tasks),
            ("plain RQ worker-pool of 2 Simple", lambda: PlainRQ(server.url, "pool", 2), args.tasks),
            ("taskmill forking Worker x1", lambda: Taskmill(db, server.url, "fork", 1), args.fork_tasks),
            ("plain RQ forking Worker x1", lambda: PlainRQ(server.url, "fork", 1), args.fork_tasks),
            ("Celery prefork -c 2", lambda: PlainCelery(server.url, 2), args.tasks),
        ]
        only = [s for s in args.only.split(",") if s]
        for label, make, n in runs:
            if only and not any(s in label for s in only):
                continue
            system = make()
            if isinstance(system, PlainCelery):
                run_celery(label, system, n)
                continue
            try:
                run_one(label, system, n, args.latency, conn)
            finally:
                if isinstance(system, Taskmill):
                    system.rt.close()
        conn.close()


if __name__ == "__main__":
    main()
