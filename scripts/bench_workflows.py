"""Benchmark: workflow overhead, the events stream's delivery rate, and what idle streams cost.

1. **Workflows** (in process, on a scratch PostgreSQL): a chain of 100 no-op tasks and a
   fan-out/fan-in of 1,000 (one root, 998 children, one sink: 1,000 tasks in one workflow). A
   worker thread claims up to 100 tasks at a time and records them completed at once (no handler
   runs: this measures taskmill's orchestration, not work); a manager thread ticks every
   ``--tick`` seconds. Reported: seconds from submit to the workflow's status ``completed``, and
   SQL statements per task (``before_cursor_execute`` on every engine: submit, claims, outcomes,
   manager ticks; the bench worker's empty polls are left out).
2. **Events stream** (real processes): ``taskmill api`` (gunicorn gthread, 2 processes) and
   ``taskmill worker`` on the SQL broker; 10 subscribers on ``GET /api/v1/events`` while
   ``--tasks`` echo tasks are submitted in batches and drained. Reported: events per second each
   subscriber received (3 events per task), from the first submit to the last event.
3. **Idle streams vs submit throughput**: single-task ``POST /api/v1/tasks`` from 4 client threads
   for ``--seconds`` seconds, with 0 and then with 200 idle streams open (side by side, one run).

Usage: ``python scripts/bench_workflows.py [--tasks 2000] [--seconds 8] [--tick 0.05]``. Needs
PostgreSQL (``TASKMILL_TEST_DATABASE_URL``). Figures on a shared 2-core machine are noisy: compare
the numbers of one run with each other.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import requests
from sqlalchemy import event

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from taskmill.config import Settings  # noqa: E402
from taskmill.manager import Manager  # noqa: E402
from taskmill.models import Outcome  # noqa: E402
from taskmill.runtime import build_runtime  # noqa: E402
from taskmill.workflows import WorkflowService  # noqa: E402
from tests.jobs import JobsPlugin  # noqa: E402
from tests.services import postgres_url  # noqa: E402
from tests.services import scratch_database  # noqa: E402

# ---- 1. workflows ------------------------------------------------------------------------------------


def _chain(n: int) -> list[dict[str, Any]]:
    return [{"key": "t0", "type": "j.echo"}] + [
        {"key": f"t{i}", "type": "j.echo", "depends_on": [f"t{i - 1}"]} for i in range(1, n)
    ]


def _fan(width: int) -> list[dict[str, Any]]:
    children = [{"key": f"c{i}", "type": "j.echo", "depends_on": ["root"]} for i in range(width)]
    sink = {"key": "sink", "type": "j.echo", "depends_on": [c["key"] for c in children]}
    return [{"key": "root", "type": "j.echo"}, *children, sink]


def run_workflow(url: str, items: list[dict[str, Any]], tick: float) -> tuple[float, int]:
    rt = build_runtime(
        Settings(database_url=url, load_plugins=("sql",), secret_key="bench"),
        plugins=[JobsPlugin()],
        upgrade=True,
    )
    count = 0
    idle_polls = 0
    lock = threading.Lock()

    def on_statement(*_: Any) -> None:
        nonlocal count
        with lock:
            count += 1

    stop = threading.Event()

    def worker() -> None:
        nonlocal idle_polls
        while not stop.is_set():
            claimed = rt.lifecycle.claim(["default"], 100, "bench-worker")
            if not claimed:
                idle_polls += 1  # one statement each: the bench worker's polling, not orchestration
                time.sleep(0.005)
                continue
            rt.lifecycle.finish([(t, Outcome(t.id, "completed")) for t in claimed], "bench-worker")

    def manager() -> None:
        m = Manager(rt)
        while not stop.is_set():
            m.tick()
            time.sleep(tick)

    try:
        rt.storage.tasks.count_pending("bench")  # build the engines before listening
        engines = rt.storage.db.engines()
        for e in engines:
            event.listen(e, "before_cursor_execute", on_statement)
        threads = [threading.Thread(target=worker), threading.Thread(target=manager)]
        started = time.perf_counter()
        wf = WorkflowService(rt).submit({"tasks": items}, "bench")
        for th in threads:
            th.start()
        service = WorkflowService(rt)
        while True:
            status = rt.storage.workflows.task_statuses(wf.id)
            if all(s.value == "completed" for s in status) and len(status) == len(items):
                break
            time.sleep(0.01)
        elapsed = time.perf_counter() - started
        stop.set()
        for th in threads:
            th.join()
        for e in engines:
            event.remove(e, "before_cursor_execute", on_statement)
        assert service.get(wf.id, "bench").status == "completed"
        return elapsed, count - idle_polls
    finally:
        stop.set()
        rt.close()


# ---- 2 and 3. a real API ---------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(url: str, metrics: str) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("TASKMILL_") or k.startswith("TASKMILL_TEST_")
    }
    env.update(
        TASKMILL_DATABASE_URL=url,
        TASKMILL_AUTH="none",
        TASKMILL_API_WORKERS="2",
        TASKMILL_LOG_LEVEL="WARNING",
        PROMETHEUS_MULTIPROC_DIR=metrics,
    )
    return env


@contextmanager
def processes(url: str, with_worker: bool) -> Iterator[str]:
    port = _free_port()
    metrics = tempfile.mkdtemp(prefix="bench-metrics-")
    env = _env(url, metrics)
    cmd = [sys.executable, "-m", "taskmill.cli"]
    procs = [subprocess.Popen([*cmd, "api", "--port", str(port)], env=env, stdout=subprocess.DEVNULL)]
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if requests.get(base + "/health/live", timeout=1).status_code == 200:
                    break
            except requests.RequestException:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        if with_worker:
            procs.append(subprocess.Popen([*cmd, "worker", "-c", "2"], env=env, stdout=subprocess.DEVNULL))
            procs.append(subprocess.Popen([*cmd, "manager"], env=env, stdout=subprocess.DEVNULL))
        yield base
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()


def sse_rate(url: str, tasks: int, subscribers: int = 10) -> list[float]:
    with processes(url, with_worker=True) as base:
        want = 3 * tasks  # submitted, started, completed
        counts = [0] * subscribers
        ends = [0.0] * subscribers
        ready = threading.Barrier(subscribers + 1)

        def subscribe(i: int) -> None:
            with requests.get(base + "/api/v1/events?type=echo", stream=True, timeout=(5, 120)) as r:
                ready.wait()
                for line in r.iter_lines():
                    if line.startswith(b"id:"):
                        counts[i] += 1
                        if counts[i] >= want:
                            ends[i] = time.perf_counter()
                            return

        threads = [threading.Thread(target=subscribe, args=(i,), daemon=True) for i in range(subscribers)]
        for th in threads:
            th.start()
        ready.wait()
        started = time.perf_counter()
        session = requests.Session()
        for offset in range(0, tasks, 500):
            batch = [{"type": "echo", "payload": {"i": i}} for i in range(offset, min(tasks, offset + 500))]
            assert (
                session.post(base + "/api/v1/tasks/batch", json={"tasks": batch}, timeout=60).status_code
                == 201
            )
        for th in threads:
            th.join(timeout=300)
        print(f"last event after {max(ends) - started:.1f} s", flush=True)
        return [c / (e - started) if e else 0.0 for c, e in zip(counts, ends, strict=True)]


def submit_throughput(base: str, seconds: float, threads: int = 4) -> float:
    done = [0] * threads
    end = time.perf_counter() + seconds

    def client(i: int) -> None:
        s = requests.Session()
        while time.perf_counter() < end:
            assert s.post(base + "/api/v1/tasks", json={"type": "echo"}, timeout=30).status_code == 201
            done[i] += 1

    ths = [threading.Thread(target=client, args=(i,)) for i in range(threads)]
    started = time.perf_counter()
    for th in ths:
        th.start()
    for th in ths:
        th.join()
    return sum(done) / (time.perf_counter() - started)


def idle_stream_cost(url: str, seconds: float) -> tuple[float, float]:
    with processes(url, with_worker=False) as base:
        submit_throughput(base, 1.0)  # warm up both processes
        without = submit_throughput(base, seconds)
        host, port = base.removeprefix("http://").split(":")
        socks = []
        for _ in range(200):
            s = socket.create_connection((host, int(port)), timeout=10)
            s.sendall(f"GET /api/v1/events?type=none HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
            assert b"200 OK" in s.recv(4096)
            socks.append(s)
        try:
            with_streams = submit_throughput(base, seconds)
        finally:
            for s in socks:
                s.close()
        return without, with_streams


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=2000, help="tasks drained while 10 streams listen")
    parser.add_argument("--seconds", type=float, default=8.0, help="length of each throughput run")
    parser.add_argument("--tick", type=float, default=0.05, help="manager tick of the workflow runs")
    args = parser.parse_args()
    server = postgres_url()
    out: dict[str, Any] = {
        "machine": f"{platform.platform()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "note": "a shared machine: other engineers' runs share the 2 cores; compare within this run",
    }
    for name, items in (("chain of 100", _chain(100)), ("fan-out/fan-in of 998 (1,000 tasks)", _fan(998))):
        with scratch_database(server) as url:
            elapsed, statements = run_workflow(url, items, args.tick)
        out[name] = {
            "submit_to_completed_s": round(elapsed, 2),
            "statements": statements,
            "statements_per_task": round(statements / len(items), 3),
            "manager_tick_s": args.tick,
        }
        print(name, out[name], flush=True)
    with scratch_database(server) as url:
        rates = sse_rate(url, args.tasks)
    out["sse events/s per subscriber (10 subscribers)"] = {
        "min": round(min(rates)),
        "median": round(sorted(rates)[len(rates) // 2]),
        "tasks": args.tasks,
    }
    print(out["sse events/s per subscriber (10 subscribers)"], flush=True)
    with scratch_database(server) as url:
        without, with_streams = idle_stream_cost(url, args.seconds)
    out["submits/s, 4 client threads"] = {
        "no streams": round(without),
        "200 idle streams": round(with_streams),
        "ratio": round(with_streams / without, 2),
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
