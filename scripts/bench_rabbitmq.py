"""Benchmark: taskmill on RabbitMQ, Redis and the SQL broker, and Celery on the same RabbitMQ.

One run, side by side, no-op tasks, two worker processes each (``--concurrency 2``):

* enqueue rate: tasks submitted one at a time from one Python process (taskmill: the lifecycle,
  i.e. PostgreSQL insert + publish, as the API does; Celery: ``delay``);
* drain rate: workers started on the full queue; from the first task started to the last one
  finished (taskmill: timestamps in PostgreSQL, so every result is stored; Celery: the queue
  depth, no result backend);
* submit-to-start latency p50/p99, one task at a time on idle workers.

taskmill uses a scratch PostgreSQL database; RabbitMQ runs in a vhost of its own (deleted after);
Redis is a private ``redis-server``. Celery runs from its own virtualenv (never a taskmill
dependency): ``python -m venv /work/venvs/peers && /work/venvs/peers/bin/pip install celery redis``.

Usage: ``python scripts/bench_rabbitmq.py [--tasks 2000] [--latency 200] [--rounds 1]
[--peers /work/venvs/peers]``.
This file is also the Celery app of the Celery run (``celery -A bench_rabbitmq``, with
``BENCH_CELERY=1``).
"""

from __future__ import annotations

import json
import os
import sys
import time

if os.environ.get("BENCH_CELERY") == "1":  # imported by the Celery worker or client (peers venv)
    import redis as _redis
    from celery import Celery

    _stamps = _redis.Redis.from_url(os.environ["BENCH_REDIS_URL"], socket_timeout=5)
    app = Celery("bench_rabbitmq", broker=os.environ["BENCH_AMQP_URL"])
    app.conf.update(
        task_ignore_result=True,
        worker_hijack_root_logger=False,
        broker_connection_retry_on_startup=True,
        worker_prefetch_multiplier=4,
    )

    @app.task(name="bench.noop")
    def celery_noop() -> None:
        """Do nothing (drain rate)."""

    @app.task(name="bench.stamp")
    def celery_stamp(key: str) -> None:
        """Record when the task started (latency)."""
        _stamps.set(key, repr(time.time()), ex=600)

    def _client(mode: str, n: int) -> None:
        """Run in the peers venv: enqueue ``n`` no-ops, or measure ``n`` latencies; print JSON."""
        import uuid

        if mode == "enqueue":
            t0 = time.perf_counter()
            for _ in range(n):
                celery_noop.delay()
            print(json.dumps({"seconds": time.perf_counter() - t0}))
            return
        out = []
        for _ in range(n):
            key = f"bench:rmq:{uuid.uuid4().hex}"
            t0 = time.time()
            celery_stamp.delay(key)
            while (v := _stamps.get(key)) is None:
                time.sleep(0.001)
            out.append(float(v) - t0)
            time.sleep(0.01)
        print(json.dumps({"latencies": out}))

    if __name__ == "__main__":
        _client(sys.argv[1], int(sys.argv[2]))
        sys.exit(0)

import argparse  # noqa: E402
import platform  # noqa: E402
import signal  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import uuid  # noqa: E402
from contextlib import ExitStack  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return platform.processor() or "unknown"


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


def spawn(cmd: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    log = open(Path(os.environ.get("TMPDIR") or "/tmp") / "bench_rabbitmq_workers.log", "ab")  # noqa: SIM115
    proc = subprocess.Popen(
        cmd, env=env, stdout=log, stderr=log, start_new_session=True, cwd=ROOT / "scripts"
    )
    log.close()
    return proc


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


class Taskmill:
    """taskmill with one broker URL (empty: the SQL broker on the database)."""

    def __init__(self, db_url: str, broker_url: str, concurrency: int) -> None:
        from taskmill.config import load_settings
        from taskmill.runtime import build_runtime

        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("TASKMILL_")},
            "TASKMILL_DATABASE_URL": db_url,
            "TASKMILL_LOG_LEVEL": "WARNING",
            "PYTHONPATH": str(ROOT),
        }
        if broker_url:
            self.env["TASKMILL_BROKER_URL"] = broker_url
        self.rt = build_runtime(load_settings(environ=self.env), upgrade=True)
        self.concurrency = concurrency
        self.queue = f"bench{uuid.uuid4().hex[:6]}"

    def _submit(self) -> Any:
        lc = self.rt.lifecycle
        return lc.submit([lc.build({"type": "echo", "queue": self.queue}, "bench")])[0][0]

    def enqueue(self, n: int) -> float:
        t0 = time.perf_counter()
        self.tasks = [self._submit() for _ in range(n)]
        return time.perf_counter() - t0

    def start_workers(self) -> list[subprocess.Popen[bytes]]:
        cmd = [sys.executable, "-m", "taskmill.cli", "worker", "-q", self.queue, "-c", str(self.concurrency)]
        return [spawn(cmd, self.env)]

    def drain_window(self, timeout: float = 600) -> float:
        ids = [t.id for t in self.tasks]
        deadline = time.monotonic() + timeout
        while True:
            done = self.rt.storage.tasks.get_many(ids)
            if all(t.status.value == "completed" for t in done):
                break
            if time.monotonic() > deadline:
                raise RuntimeError("taskmill did not drain the queue")
            time.sleep(0.2)
        first = min(t.started_at for t in done)
        last = max(t.finished_at for t in done)
        return (last - first).total_seconds()

    def wait_idle(self) -> None:
        time.sleep(1.0)

    def latency(self, n: int) -> list[float]:
        out = []
        for _ in range(n):
            t0 = time.time()
            task = self._submit()
            while True:
                t = self.rt.storage.tasks.get(task.id)
                if t.started_at is not None and t.status.value == "completed":
                    break
                time.sleep(0.002)
            out.append(t.started_at.timestamp() - t0)
            time.sleep(0.01)
        return out

    def close(self) -> None:
        self.rt.close()


class PlainCelery:
    """Celery ``-c 2 --pool prefork`` on the same RabbitMQ vhost, no result backend."""

    def __init__(self, amqp_url: str, redis_url: str, peers: Path, concurrency: int) -> None:
        self.python = str(peers / "bin" / "python")
        self.env = {
            **os.environ,
            "BENCH_CELERY": "1",
            "BENCH_AMQP_URL": amqp_url,
            "BENCH_REDIS_URL": redis_url,
            "PYTHONPATH": str(ROOT / "scripts"),
        }
        self.amqp_url = amqp_url
        self.concurrency = concurrency

    def _client(self, mode: str, n: int) -> dict[str, Any]:
        out = subprocess.run(
            [self.python, str(ROOT / "scripts" / "bench_rabbitmq.py"), mode, str(n)],
            env=self.env,
            capture_output=True,
            text=True,
            check=True,
            timeout=900,
        ).stdout
        return json.loads(out.strip().splitlines()[-1])

    def enqueue(self, n: int) -> float:
        self.total = n
        return float(self._client("enqueue", n)["seconds"])

    def start_workers(self) -> list[subprocess.Popen[bytes]]:
        cmd = [self.python, "-m", "celery", "-A", "bench_rabbitmq", "worker", "-c", str(self.concurrency)]
        cmd += ["--pool", "prefork", "--loglevel", "WARNING", "--without-gossip", "--without-mingle"]
        cmd += ["--without-heartbeat"]
        return [spawn(cmd, self.env)]

    def _depth(self) -> int:
        import pika

        conn = pika.BlockingConnection(pika.URLParameters(self.amqp_url))
        try:
            return conn.channel().queue_declare("celery", passive=True).method.message_count
        finally:
            conn.close()

    def drain_window(self, timeout: float = 600) -> float:
        """From the first message taken to the queue being empty (what is prefetched but not
        yet run is counted as drained: Celery's window is, if anything, flattered)."""
        deadline = time.monotonic() + timeout
        while self._depth() >= self.total:
            if time.monotonic() > deadline:
                raise RuntimeError("celery did not start")
            time.sleep(0.002)
        t0 = time.time()
        while self._depth() > 0:
            time.sleep(0.005)
        return time.time() - t0

    def wait_idle(self) -> None:
        time.sleep(2.0)

    def latency(self, n: int) -> list[float]:
        return list(self._client("latency", n)["latencies"])

    def close(self) -> None:
        pass


def run_one(label: str, system: Any, n: int, n_lat: int) -> dict[str, Any]:
    seconds = system.enqueue(n)
    procs = system.start_workers()
    try:
        window = system.drain_window()
        system.wait_idle()
        lat = system.latency(n_lat)
    finally:
        stop(procs)
    row = {
        "system": label,
        "enqueue/s": n / seconds,
        "drain/s": n / window if window > 0 else float("inf"),
        "p50 ms": pct(lat, 0.5) * 1000,
        "p99 ms": pct(lat, 0.99) * 1000,
    }
    print(
        f"{label:<34} {row['enqueue/s']:>10.0f} {row['drain/s']:>9.0f} "
        f"{row['p50 ms']:>8.1f} {row['p99 ms']:>8.1f}",
        flush=True,
    )
    return row


def main() -> None:
    from tests.services import amqp_url
    from tests.services import postgres_url
    from tests.services import rabbitmq_vhost
    from tests.services import redis_server
    from tests.services import scratch_database

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=2000, help="tasks per drain run")
    parser.add_argument("--latency", type=int, default=200, help="latency samples per system")
    parser.add_argument("--concurrency", type=int, default=2, help="worker processes of every system")
    parser.add_argument("--peers", default="/work/venvs/peers", help="virtualenv with celery and redis")
    parser.add_argument("--rounds", type=int, default=1, help="rounds over all systems (medians printed)")
    parser.add_argument("--only", default="", help="comma-separated label substrings to run")
    args = parser.parse_args()
    peers = Path(args.peers)
    c = args.concurrency
    with ExitStack() as stack:
        db = stack.enter_context(scratch_database(postgres_url()))
        vhost = stack.enter_context(rabbitmq_vhost(amqp_url()))
        server = stack.enter_context(redis_server())
        rabbit = subprocess.run(
            ["rabbitmqctl", "-q", "version"], capture_output=True, text=True, check=False
        ).stdout.strip()
        print(f"machine: {os.cpu_count()} CPUs, {cpu_model()}; Python {platform.python_version()}")
        print(
            f"RabbitMQ {rabbit or '?'} (a vhost of this run), redis-server (private), "
            "PostgreSQL (scratch database)"
        )
        print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        print(f"{'system':<34} {'enqueue/s':>10} {'drain/s':>9} {'p50 ms':>8} {'p99 ms':>8}")
        runs = [
            (f"taskmill RabbitMQ -c {c}", lambda: Taskmill(db, vhost, c)),
            (f"Celery RabbitMQ prefork -c {c}", lambda: PlainCelery(vhost, server.url, peers, c)),
            (f"taskmill Redis -c {c}", lambda: Taskmill(db, server.url, c)),
            (f"taskmill SQL (PostgreSQL) -c {c}", lambda: Taskmill(db, "", c)),
        ]
        only = [s for s in args.only.split(",") if s]
        rows: dict[str, list[dict[str, Any]]] = {}
        for _ in range(args.rounds):  # rounds interleave the systems, so noise spreads over all
            for label, make in runs:
                if only and not any(s in label for s in only):
                    continue
                if "Celery" in label and not (peers / "bin" / "celery").exists():
                    print(f"{label:<34} skipped: no celery in {peers}")
                    continue
                system = make()
                try:
                    rows.setdefault(label, []).append(run_one(label, system, args.tasks, args.latency))
                finally:
                    system.close()
        if args.rounds > 1:
            print(f"median of {args.rounds} rounds:")
            for label, runs_of in rows.items():
                med = {
                    k: statistics.median(r[k] for r in runs_of)
                    for k in ("enqueue/s", "drain/s", "p50 ms", "p99 ms")
                }
                print(
                    f"{label:<34} {med['enqueue/s']:>10.0f} {med['drain/s']:>9.0f} "
                    f"{med['p50 ms']:>8.1f} {med['p99 ms']:>8.1f}"
                )
        print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
