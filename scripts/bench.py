#!/usr/bin/env python
"""Benchmark taskmill with the SQL broker: API submit rates, drain rate, idle latency, round trips.

Usage:
    python scripts/bench.py [--backend sqlite|postgresql|both] [--tasks 20000] [--seconds 10]
    python scripts/bench.py --drain [--tasks 20000] [--repeat 2]   # pools against PgQueuer
    python scripts/bench.py --memory --tasks 1000000               # RSS and bytes per task, per pool

``--drain`` prints, side by side in one run on PostgreSQL, the steady drain of a backlog of no-op
tasks by one ``taskmill worker`` per pool (results, events and state changes durable) and by
PgQueuer's ``pgq run`` (2 processes, its defaults) when it is installed in the peers' virtualenv
(scripts/bench_peers.py says how).

Runs real processes: `taskmill api` (gunicorn) driven by wrk (apt-get install wrk), and
`taskmill worker --concurrency 2`. PostgreSQL runs use a scratch database on the server of
TASKMILL_BENCH_DATABASE_URL (default postgresql://postgres@127.0.0.1:5432/postgres).
It prints figures; it asserts nothing. Numbers on a shared machine are noisy: compare ratios
measured in one run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests

ROOT = Path(__file__).resolve().parents[1]
PG_SERVER = os.environ.get("TASKMILL_BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def base_env(db_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKMILL_")}
    env.update({"TASKMILL_DATABASE_URL": db_url, "TASKMILL_LOG_LEVEL": "WARNING", "PYTHONPATH": str(ROOT)})
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    env.update(extra)
    return env


def taskmill(*args: str, env: dict[str, str], **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "taskmill.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        **kw,
    )


@contextmanager
def database(backend: str, workdir: Path) -> Iterator[str]:
    if backend == "sqlite":
        yield f"sqlite:///{workdir}/bench.db"
        return
    import psycopg2

    name = f"taskmill_bench_{uuid.uuid4().hex[:8]}"
    admin = psycopg2.connect(PG_SERVER)
    admin.autocommit = True
    admin.cursor().execute(f'CREATE DATABASE "{name}"')
    try:
        yield urlsplit(PG_SERVER)._replace(path=f"/{name}").geturl()
    finally:
        admin.cursor().execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


@contextmanager
def process(args: list[str], env: dict[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "taskmill.cli", *args],
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        if proc.stderr:
            proc.stderr.close()


def credential(env: dict[str, str]) -> dict[str, str]:
    """An admin API key when the auth plugin is installed, else run with TASKMILL_AUTH=none."""
    out = taskmill("api-keys", "create", "--tenant", "bench", "--role", "admin", "--json", env=env)
    if out.returncode == 0:
        return {"Authorization": f"Bearer {json.loads(out.stdout)['key']}"}
    env["TASKMILL_AUTH"] = "none"
    return {}


def wait_http(url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if requests.get(url, timeout=1).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer")


def wrk(url: str, body: str, headers: dict[str, str], seconds: int, connections: int) -> dict[str, float]:
    lua = tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False)
    hdrs = "".join(f'wrk.headers["{k}"] = "{v}"\n' for k, v in headers.items())
    lua.write(
        f'wrk.method = "POST"\nwrk.body = {json.dumps(body)}\nwrk.headers["Content-Type"] = '
        f'"application/json"\n{hdrs}'
    )
    lua.close()
    try:
        out = subprocess.run(
            ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", lua.name, url],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    finally:
        os.unlink(lua.name)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    p50 = re.search(r"50%\s+([\d.]+)(\w+)", out)
    return {"rps": rps, "errors": int(bad.group(1)) if bad else 0, "p50": _ms(p50.group(1), p50.group(2))}


def _ms(value: str, unit: str) -> float:
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


class Db:
    """Read-only probes of the benchmark database."""

    def __init__(self, url: str) -> None:
        from sqlalchemy import create_engine

        self.url = url
        self.engine = create_engine(
            url.replace("postgresql://", "postgresql+psycopg2://"), isolation_level="AUTOCOMMIT"
        )

    def scalar(self, sql: str) -> Any:
        from sqlalchemy import text

        with self.engine.connect() as conn:
            return conn.execute(text(sql)).scalar()

    def xacts(self) -> int | None:
        if self.url.startswith("sqlite"):
            return None
        return self.scalar(
            "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = current_database()"
        )


def submit_direct(db_url: str, n: int) -> None:
    """Queue n echo tasks quickly, through the lifecycle (batches of 1,000)."""
    code = (
        "from taskmill.runtime import build_runtime\n"
        "rt = build_runtime(upgrade=True); lc = rt.lifecycle\n"
        f"for i in range(0, {n}, 1000):\n"
        f"    batch = range(i, min({n}, i + 1000))\n"
        "    lc.submit([lc.build({'type': 'echo', 'payload': {'i': j}}, 'bench') for j in batch])\n"
    )
    subprocess.run([sys.executable, "-c", code], env=base_env(db_url), check=True)


def run_backend(backend: str, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    row: dict[str, Any] = {"backend": backend}
    with database(backend, workdir) as url:
        env = base_env(url, TASKMILL_API_WORKERS=str(args.api_workers))
        assert taskmill("db", "upgrade", env=env).returncode == 0
        headers = credential(env)
        db = Db(url)
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        with process(["api", "--port", str(port)], env):
            wait_http(base + "/health")
            one = json.dumps({"type": "echo", "payload": {"n": 1}})
            single = wrk(base + "/api/v1/tasks", one, headers, args.seconds, args.connections)
            row["submit_single_rps"] = single["rps"]
            row["submit_single_p50_ms"] = single["p50"]
            row["submit_single_errors"] = single["errors"]
            batch_body = json.dumps({"tasks": [{"type": "echo", "payload": {"n": i}} for i in range(1000)]})
            batch = wrk(base + "/api/v1/tasks/batch", batch_body, headers, args.seconds, 2)
            row["submit_batch_tasks_per_s"] = batch["rps"] * 1000
            row["submit_batch_errors"] = batch["errors"]
        # drain: a fresh backlog of --tasks echo tasks, one worker with 2 processes
        with db.engine.connect() as conn:
            from sqlalchemy import text

            conn.execute(text("DELETE FROM tasks"))
        submit_direct(url, args.tasks)
        before = db.xacts()
        with process(["worker", "--concurrency", "2"], env):
            deadline = time.monotonic() + 600
            while db.scalar("SELECT count(*) FROM tasks WHERE status = 'completed'") < args.tasks:
                if time.monotonic() > deadline:
                    raise RuntimeError("drain did not finish")
                time.sleep(0.5)
            after = db.xacts()
            span = db.scalar(
                "SELECT "
                + (
                    "(julianday(max(finished_at)) - julianday(min(started_at))) * 86400"
                    if backend == "sqlite"
                    else "extract(epoch from max(finished_at) - min(started_at))"
                )
                + " FROM tasks"
            )
            row["drain_tasks_per_s"] = args.tasks / float(span)
            polls = 0 if before is None else 2 * (1 + int(float(span) / 0.5))
            row["db_xacts_per_task"] = None if before is None else (after - before - polls) / args.tasks
            # idle latency: one task at a time through the API, worker idle in between
            port = free_port()
            base = f"http://127.0.0.1:{port}"
            with process(["api", "--port", str(port)], env):
                wait_http(base + "/health")
                time.sleep(1.5)  # let the worker go idle
                ids = []
                s = requests.Session()
                for _ in range(args.latency_samples):
                    r = s.post(base + "/api/v1/tasks", json={"type": "echo"}, headers=headers, timeout=10)
                    ids.append(r.json()["id"])
                    time.sleep(0.05)
                time.sleep(1)
                lat = []
                for task_id in ids:
                    t = s.get(f"{base}/api/v1/tasks/{task_id}", headers=headers, timeout=10).json()
                    lat.append(_parse(t["started_at"]) - _parse(t["created_at"]))
                lat.sort()
                row["latency_p50_ms"] = statistics.median(lat) * 1000
                row["latency_p99_ms"] = lat[max(0, int(len(lat) * 0.99) - 1)] * 1000
    return row


def _parse(value: str) -> float:
    import datetime as dt

    return dt.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


DRAIN_CONFIGS = [
    ("taskmill prefork -c 2 (default pool)", ["--pool", "prefork", "--concurrency", "2"]),
    ("taskmill threads -c 8", ["--pool", "threads", "--concurrency", "8"]),
    ("taskmill asyncio -c 8", ["--pool", "asyncio", "--concurrency", "8"]),
]


def taskmill_drain(url: str, n: int, worker_args: list[str]) -> dict[str, float]:
    """One ``taskmill worker`` draining ``n`` pre-submitted echo tasks; steady rate by sampling
    (the peers' method) and by the tasks' own timestamps."""
    from bench_peers import watch_drain

    db = Db(url)
    with db.engine.connect() as conn:
        from sqlalchemy import text

        conn.execute(text("DELETE FROM tasks"))
        conn.execute(text("DELETE FROM events"))
    submit_direct(url, n)
    before = db.xacts()
    with process(["worker", *worker_args], base_env(url)) as proc:
        rate = watch_drain(
            lambda: db.scalar("SELECT count(*) FROM tasks WHERE status <> 'completed'"),
            n,
            every=0.05,
            procs=[proc],
        )
    after = db.xacts()
    span = db.scalar("SELECT extract(epoch from max(finished_at) - min(finished_at)) FROM tasks")
    return {
        "sampled": rate,
        "stamped": (n - 1) / float(span) if span else float("nan"),
        "xacts_per_task": (after - before) / n if before is not None else float("nan"),
    }


def _rss_kib(pid: int) -> int:
    """Proportional set size of ``pid`` and its children (KiB): pages a prefork pool shares are
    counted once, as a container's memory limit counts them."""
    total = 0
    pids = [pid]
    try:
        pids += [int(x) for x in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        pass
    for p in pids:
        try:
            m = re.search(r"Pss:\s+(\d+)", Path(f"/proc/{p}/smaps_rollup").read_text())
            total += int(m.group(1)) if m else 0
        except OSError:
            pass
    return total


def run_memory(args: argparse.Namespace, workdir: Path) -> None:
    """Worker RSS at start and end of a drain of ``--tasks`` tasks per pool, and storage bytes
    per completed task with its events."""
    from bench_peers import watch_drain

    print(f"\nmachine: {machine()}; N = {args.tasks:,} echo tasks per pool; PostgreSQL\n")
    print(
        "| pool | PSS after start, MiB | PSS at each tenth completed, MiB | PSS at end, MiB | tasks/s "
        "| storage bytes/task (tasks + events) |"
    )
    print("|---|---:|---|---:|---:|---:|")
    for name, wargs in DRAIN_CONFIGS:
        if args.only and args.only not in name:
            continue
        with database("postgresql", workdir) as url:
            assert taskmill("db", "upgrade", env=base_env(url)).returncode == 0
            db = Db(url)
            submit_direct(url, args.tasks)
            with process(["worker", *wargs], base_env(url)) as proc:
                deadline = time.monotonic() + 120  # the pool is up once the first task completed
                while time.monotonic() < deadline and not db.scalar(
                    "SELECT count(*) FROM tasks WHERE status = 'completed'"
                ):
                    time.sleep(0.2)
                start = _rss_kib(proc.pid)
                tenths: list[float] = []

                def remaining(db: Db = db, pid: int = proc.pid, tenths: list[float] = tenths) -> int:
                    left = db.scalar("SELECT count(*) FROM tasks WHERE status <> 'completed'")
                    while len(tenths) < 9 and args.tasks - left >= (len(tenths) + 1) * args.tasks / 10:
                        tenths.append(_rss_kib(pid) / 1024)  # the curve says more than its ends
                    return left

                rate = watch_drain(remaining, args.tasks, timeout=3600, every=0.5, procs=[proc])
                end = _rss_kib(proc.pid)
            size = db.scalar("SELECT pg_total_relation_size('tasks') + pg_total_relation_size('events')")
            per_task = size / args.tasks
            curve = " ".join(f"{v:.0f}" for v in tenths)
            cells = [name, f"{start / 1024:.1f}", curve, f"{end / 1024:.1f}"]
            cells += [f"{rate:,.0f}", f"{per_task:,.0f}"]
            print("| " + " | ".join(cells) + " |")


def _peer_row(rows: dict[str, list[float]], label: str, drain: Any) -> None:
    """Run one peer's drain into ``rows`` (a peer not installed or failing leaves no row)."""
    try:
        got = drain()
        print(f"{label}: {got}", file=sys.stderr, flush=True)
    except Exception as exc:  # noqa: BLE001 - a peer failing does not stop the table
        print(f"{label} failed: {exc}", file=sys.stderr)
        return
    if got is not None:
        rows.setdefault(label, []).append(got)


def run_drain(args: argparse.Namespace, workdir: Path) -> None:
    """The drain table: taskmill per pool, PgQueuer and Celery, in one run, ``--repeat`` rounds."""
    from bench_peers import celery_drain
    from bench_peers import pgqueuer_drain

    sys.path.insert(0, str(ROOT))
    from tests.services import redis_server

    rows: dict[str, list[float]] = {}
    extra: dict[str, list[float]] = {}
    for _ in range(args.repeat):
        with database("postgresql", workdir) as url:
            env = base_env(url)
            assert taskmill("db", "upgrade", env=env).returncode == 0
            for name, wargs in DRAIN_CONFIGS:
                got = taskmill_drain(url, args.tasks, wargs)
                print(f"{name}: {got}", file=sys.stderr, flush=True)
                rows.setdefault(name, []).append(got["sampled"])
                extra.setdefault(name, []).append(got["xacts_per_task"])
        with database("postgresql", workdir) as url:
            label = "PgQueuer pgq run, 2 processes, defaults"
            _peer_row(rows, label, lambda: pgqueuer_drain(url, args.tasks, processes=2))
        with redis_server() as server:  # a private redis-server for Celery's broker
            label = "Celery 5 prefork -c 2 on Redis, no result backend"
            _peer_row(rows, label, lambda: celery_drain(server.url, args.tasks, concurrency=2))
    print(f"\nmachine: {machine()}; N = {args.tasks:,} no-op tasks; PostgreSQL; {args.repeat} round(s)\n")
    ref = rows.get("PgQueuer pgq run, 2 processes, defaults")
    print("| system, configuration | steady drain, tasks/s (each round) | × PgQueuer | DB commits/task |")
    print("|---|---:|---:|---:|")
    for name, rates in rows.items():
        ratio = "n/a" if not ref else " / ".join(f"{r / p:.2f}" for r, p in zip(rates, ref, strict=False))
        commits = extra.get(name)
        c = " / ".join(f"{x:.3f}" for x in commits) if commits else "n/a"
        print(f"| {name} | {' / '.join(f'{r:,.0f}' for r in rates)} | {ratio} | {c} |")


def machine() -> str:
    cpu = platform.processor() or "?"
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        m = re.search(r"Model name:\s+(.+)", out)
        cpu = m.group(1).strip() if m else cpu
    except OSError:
        pass
    mem = "?"
    try:
        kb = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1))
        mem = f"{kb / 1024 / 1024:.1f} GiB"
    except (OSError, AttributeError):
        pass
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return f"{os.cpu_count()} cores, {cpu}, {mem} RAM, load {load}, Python {platform.python_version()}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backend", choices=["sqlite", "postgresql", "both"], default="both")
    ap.add_argument("--tasks", type=int, default=20000, help="tasks drained by the worker")
    ap.add_argument("--seconds", type=int, default=10, help="duration of each wrk run")
    ap.add_argument("--connections", type=int, default=16, help="wrk connections for single submits")
    ap.add_argument("--api-workers", type=int, default=2)
    ap.add_argument("--latency-samples", type=int, default=200)
    ap.add_argument("--drain", action="store_true", help="only the drain table: pools against PgQueuer")
    ap.add_argument("--repeat", type=int, default=1, help="rounds of the drain table")
    ap.add_argument("--memory", action="store_true", help="only worker RSS and storage per task, per pool")
    ap.add_argument("--only", default="", help="with --memory: only the pools whose label contains this")
    args = ap.parse_args()
    if args.memory:
        with tempfile.TemporaryDirectory() as tmp:
            run_memory(args, Path(tmp))
        return
    if args.drain:
        with tempfile.TemporaryDirectory() as tmp:
            run_drain(args, Path(tmp))
        return
    if not shutil.which("wrk"):
        sys.exit("wrk is needed for the API figures: apt-get install wrk")
    backends = ["sqlite", "postgresql"] if args.backend == "both" else [args.backend]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for backend in backends:
            rows.append(run_backend(backend, args, Path(tmp)))
    print(f"\nmachine: {machine()}; {args.api_workers} gunicorn workers; worker --concurrency 2\n")
    cols = [
        ("backend", "backend", "{}"),
        ("submit_single_rps", "API single submits/s", "{:,.0f}"),
        ("submit_single_p50_ms", "single p50 ms", "{:.1f}"),
        ("submit_batch_tasks_per_s", "API batch tasks/s", "{:,.0f}"),
        ("drain_tasks_per_s", "drain tasks/s", "{:,.0f}"),
        ("latency_p50_ms", "idle latency p50 ms", "{:.1f}"),
        ("latency_p99_ms", "p99 ms", "{:.1f}"),
        ("db_xacts_per_task", "DB round trips/task", "{:.2f}"),
    ]
    print("| " + " | ".join(c[1] for c in cols) + " |")
    print("|" + "---|" * len(cols))
    for row in rows:
        cells = []
        for key, _, fmt in cols:
            v = row.get(key)
            cells.append("n/a" if v is None else fmt.format(v))
        print("| " + " | ".join(cells) + " |")
    errors = {r["backend"]: (r["submit_single_errors"], r["submit_batch_errors"]) for r in rows}
    print(f"\nnon-2xx responses (single, batch): {errors}")


if __name__ == "__main__":
    main()
