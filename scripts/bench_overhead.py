#!/usr/bin/env python
"""What metrics and JSON logs cost: SQL-broker drain and API submits with each on and off.

Usage:
    python scripts/bench_overhead.py [--rounds 3] [--tasks 10000] [--seconds 8]

Four configurations run side by side, in every round, in a rotating order:

- ``off``: no metrics (the counting calls and prometheus-flask-exporter replaced by nothing),
  logs to a ``logging.NullHandler`` at INFO;
- ``metrics``: metrics on (``PROMETHEUS_MULTIPROC_DIR`` set, as in the image), logs off;
- ``logs``: metrics off, JSON logs at INFO written to a file;
- ``both``: metrics and JSON logs, as taskmill runs by default.

Each round drains ``--tasks`` echo tasks from PostgreSQL with ``taskmill worker --concurrency 2``
(scripts/bench.py's drain: tasks/s from the first start to the last finish) and drives
``taskmill api`` (2 gunicorn workers) with wrk single submits for ``--seconds``. It prints the
medians and, per configuration, the median over rounds of its ratio to ``off`` in the same
round. Numbers on a shared machine are noisy: the ratios, measured side by side, are the figure.
PostgreSQL: a scratch database on TASKMILL_BENCH_DATABASE_URL (default
postgresql://postgres@127.0.0.1:5432/postgres); wrk must be installed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import bench  # noqa: E402 - scripts/bench.py, next to this file

CONFIGS = {
    "off": {"metrics": False, "logs": False},
    "metrics": {"metrics": True, "logs": False},
    "logs": {"metrics": False, "logs": True},
    "both": {"metrics": True, "logs": True},
}


# ---- the role, started with metrics and logs switched as asked -----------------------------------


def _role_main() -> None:
    """``bench_overhead.py _role <taskmill args>``: run a taskmill role, with BENCH_METRICS=0
    removing the metrics calls and BENCH_LOGS=0 sending logs to a NullHandler."""
    import logging
    import threading

    if os.environ.get("BENCH_METRICS") == "0":
        from taskmill import app as app_module
        from taskmill import metrics

        def _none(*_a: Any, **_k: Any) -> None:
            return None

        metrics.submitted = _none  # type: ignore[assignment]
        metrics.finished = _none  # type: ignore[assignment]
        metrics.waited = _none  # type: ignore[assignment]
        metrics.ResourceSampler.run = lambda self, stop: threading.Thread(target=lambda: None)  # type: ignore[method-assign]

        def _no_http_metrics(app: Any, runtime: Any) -> None:
            app.extensions["taskmill.metrics"] = {"http": None, "registry": None}

        app_module._init_metrics = _no_http_metrics  # noqa: SLF001 - the benchmark's switch
    if os.environ.get("BENCH_LOGS") == "0":
        from taskmill import logs

        def _null(level: str = "INFO", fmt: str = "auto", **_k: Any) -> logging.Handler:
            root = logging.getLogger()
            for old in list(root.handlers):
                root.removeHandler(old)
            handler = logging.NullHandler()
            root.addHandler(handler)
            root.setLevel(getattr(logging, level.upper(), logging.INFO))
            return handler

        logs.configure = _null  # type: ignore[assignment]
    from taskmill.cli import main

    sys.argv = ["taskmill", *sys.argv[2:]]
    main()


def _micro_main() -> None:
    """``bench_overhead.py _micro``: the per-call cost of the counting calls a task makes and of
    one JSON log line, in this process (PROMETHEUS_MULTIPROC_DIR set, as in the image)."""
    import io
    import logging
    import timeit
    import uuid

    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="bench-metrics-")
    from taskmill import logs
    from taskmill import metrics
    from taskmill.models import Task

    n = 1000
    out: dict[str, float] = {}

    def per_call(fn: Any) -> float:
        fn()  # the first call creates the label's child and its file
        return min(timeit.repeat(fn, number=n, repeat=40)) / n * 1e6  # the least-disturbed run

    out["metrics per task (waited + finished)"] = per_call(
        lambda: (metrics.waited("default", 0.01), metrics.finished("default", "echo", "completed", 0.001))
    )
    out["metrics per submit (submitted)"] = per_call(lambda: metrics.submitted("default", "echo"))
    task = Task(id=uuid.uuid4(), type="echo", queue="default", tenant="bench", attempts=1)
    log = logging.getLogger("taskmill.worker")

    def line() -> None:
        with logs.task_context(task, worker="w-1"):
            log.warning("attempt %s of task %s failed: %s: %s", 1, task.id, "RuntimeError", "nope")

    def context_only() -> None:
        with logs.task_context(task, worker="w-1"):
            log.info  # noqa: B018 - a bound context and no line, as for a task that succeeds

    with open(os.devnull, "w") as sink:
        logs.configure("INFO", "json", secrets=["s3cret-value-123456"], stream=sink)
        out["JSON log line (to a file), with its task context"] = per_call(line)
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(logging.NullHandler())
    out["the same line to a NullHandler"] = per_call(line)
    out["task context bound, no line (every task, logs on or off)"] = per_call(context_only)
    logs.configure("INFO", "json", stream=io.StringIO())
    out["an INFO line when the level is WARNING (filtered)"] = 0.0
    logging.getLogger().setLevel(logging.WARNING)
    out["an INFO line when the level is WARNING (filtered)"] = per_call(lambda: log.info("x %s", 1))
    print(json.dumps(out))


def role_env(base: dict[str, str], config: str, workdir: Path) -> dict[str, str]:
    flags = CONFIGS[config]
    env = dict(base)
    env["TASKMILL_LOG_LEVEL"] = "INFO"
    env["TASKMILL_LOG_FORMAT"] = "json"
    env["BENCH_METRICS"] = "1" if flags["metrics"] else "0"
    env["BENCH_LOGS"] = "1" if flags["logs"] else "0"
    metrics_dir = workdir / f"metrics-{config}"
    shutil.rmtree(metrics_dir, ignore_errors=True)
    metrics_dir.mkdir()
    env["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    return env


@contextmanager
def role(args: list[str], env: dict[str, str], log_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, __file__, "_role", *args],
            env=env,
            start_new_session=True,
            stdout=subprocess.DEVNULL,
            stderr=log,
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


# ---- one measurement of each kind ------------------------------------------------------------------


def tree_cpu(pid: int) -> float:
    """CPU seconds so far of a process and all its descendants (reaped ones included)."""
    from taskmill.procfs import process_tree_usage

    usage = process_tree_usage(pid)
    return usage[0] if usage else float("nan")


def drain(url: str, db: bench.Db, env: dict[str, str], n: int, log: Path) -> tuple[float, float]:
    """Tasks/s of one worker (2 processes) over a fresh backlog of n echo tasks, and the worker's
    CPU milliseconds per task."""
    from sqlalchemy import text

    with db.engine.connect() as conn:
        conn.execute(text("DELETE FROM tasks"))
        conn.execute(text("DELETE FROM events"))
    with role(["worker", "--concurrency", "2"], env, log) as proc:
        deadline = time.monotonic() + 120
        while not db.scalar("SELECT count(*) FROM workers"):
            if time.monotonic() > deadline:
                raise RuntimeError("the worker did not register")
            time.sleep(0.2)
        time.sleep(1.0)
        cpu0 = tree_cpu(proc.pid)
        bench.submit_direct(url, n)
        deadline = time.monotonic() + 600
        while db.scalar("SELECT count(*) FROM tasks WHERE status = 'completed'") < n:
            if time.monotonic() > deadline:
                raise RuntimeError("drain did not finish")
            time.sleep(0.3)
        cpu1 = tree_cpu(proc.pid)
        span = db.scalar("SELECT extract(epoch from max(finished_at) - min(started_at)) FROM tasks")
    return n / float(span), (cpu1 - cpu0) * 1000 / n


def submits(env: dict[str, str], headers: dict[str, str], seconds: int, log: Path) -> tuple[float, float]:
    """Single submits/s through `taskmill api` (wrk, 16 connections), and the api's CPU
    milliseconds per submit."""
    port = bench.free_port()
    base = f"http://127.0.0.1:{port}"
    with role(["api", "--port", str(port)], env, log) as proc:
        bench.wait_http(base + "/health", timeout=60)
        body = json.dumps({"type": "echo", "payload": {"n": 1}})
        bench.wrk(base + "/api/v1/tasks", body, headers, 1, 4)  # warm-up
        cpu0 = tree_cpu(proc.pid)
        out = bench.wrk(base + "/api/v1/tasks", body, headers, seconds, 16)
        cpu1 = tree_cpu(proc.pid)
    if out["errors"]:
        print(f"  ({out['errors']} non-2xx answers)", file=sys.stderr)
    return out["rps"], (cpu1 - cpu0) * 1000 / max(1.0, out["rps"] * seconds)


def machine() -> str:
    mem = "?"
    try:
        with open("/proc/meminfo") as f:
            kb = int(f.readline().split()[1])
        mem = f"{kb / 1024 / 1024:.0f} GiB"
    except OSError:
        pass
    load = os.getloadavg()[0]
    return (
        f"{bench.machine()}; nproc {os.cpu_count()}; memory {mem}; load average {load:.1f} (shared machine)"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--tasks", type=int, default=10000, help="tasks drained per measurement")
    ap.add_argument("--seconds", type=int, default=8, help="duration of each wrk run")
    ap.add_argument("--only", choices=["drain", "api", "both"], default="both")
    args = ap.parse_args()
    if args.only != "drain" and not shutil.which("wrk"):
        sys.exit("wrk is needed for the API figures: apt-get install wrk")
    kinds = ("drain", "drain_cpu", "api", "api_cpu")
    results: dict[str, dict[str, list[float]]] = {k: {c: [] for c in CONFIGS} for k in kinds}
    names = list(CONFIGS)
    with tempfile.TemporaryDirectory() as tmp, bench.database("postgresql", Path(tmp)) as url:
        workdir = Path(tmp)
        base = bench.base_env(url, TASKMILL_API_WORKERS="2")
        assert bench.taskmill("db", "upgrade", env=base).returncode == 0
        headers = bench.credential(base)
        db = bench.Db(url)
        for rnd in range(args.rounds):
            order = names[rnd % len(names) :] + names[: rnd % len(names)]
            for config in order:
                env = role_env(base, config, workdir)
                log = workdir / f"{config}.log"
                if args.only in ("drain", "both"):
                    value, cpu = drain(url, db, env, args.tasks, log)
                    results["drain"][config].append(value)
                    results["drain_cpu"][config].append(cpu)
                    print(
                        f"round {rnd + 1} {config:8} drain {value:8,.0f} tasks/s {cpu:.3f} ms CPU", flush=True
                    )
                if args.only in ("api", "both"):
                    value, cpu = submits(env, headers, args.seconds, log)
                    results["api"][config].append(value)
                    results["api_cpu"][config].append(cpu)
                    print(
                        f"round {rnd + 1} {config:8} api   {value:8,.0f} submits/s {cpu:.3f} ms CPU",
                        flush=True,
                    )
        log_bytes = {
            c: (workdir / f"{c}.log").stat().st_size for c in CONFIGS if (workdir / f"{c}.log").exists()
        }
    print(f"\nmachine: {machine()}")
    print(f"{args.rounds} rounds; drain of {args.tasks} echo tasks (PostgreSQL, SQL broker, worker -c 2);")
    print(
        f"API: wrk -c16 single submits for {args.seconds}s (2 gunicorn workers); "
        f"log bytes written: {log_bytes}\n"
    )
    print("| measure | " + " | ".join(names) + " | " + " | ".join(f"{c}/off" for c in names[1:]) + " |")
    print("|---|" + "---:|" * (2 * len(names) - 1))
    rows = (
        ("drain", "drain tasks/s", "{:,.0f}"),
        ("drain_cpu", "worker CPU ms/task", "{:.3f}"),
        ("api", "API submits/s", "{:,.0f}"),
        ("api_cpu", "api CPU ms/submit", "{:.3f}"),
    )
    for kind, unit, fmt in rows:
        series = results[kind]
        if not series["off"]:
            continue
        medians = [statistics.median(series[c]) for c in names]
        ratios = [
            statistics.median(a / b for a, b in zip(series[c], series["off"], strict=True)) for c in names[1:]
        ]
        cells = [fmt.format(m) for m in medians] + [f"{r:.3f}" for r in ratios]
        print(f"| {unit} | " + " | ".join(cells) + " |")
    print(
        "\nratios: the median over rounds of (configuration ÷ off in the same round); 1.000 = no cost "
        "(throughput: lower is a cost; CPU per task: higher is a cost)"
    )
    micro = subprocess.run(
        [sys.executable, __file__, "_micro"],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        check=True,
    )
    print("\nper call, in one process (µs, the least-disturbed of 40 runs of 1,000):")
    for what, us in json.loads(micro.stdout).items():
        print(f"  {what}: {us:.1f}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_role":
        _role_main()
    elif len(sys.argv) > 1 and sys.argv[1] == "_micro":
        _micro_main()
    else:
        main()
