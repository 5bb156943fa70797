"""The fault script: submit N tasks through the HTTP API while SIGKILLing worker processes K times,
then count what was lost.

    python scripts/fault.py --broker sql   --tasks 2000 --kills 10     # SQL broker on PostgreSQL
    python scripts/fault.py --broker redis --tasks 2000 --kills 10     # a private redis-server
    python scripts/fault.py --broker amqp  --broker-url amqp://guest:guest@127.0.0.1:5672/%2F

It starts the api (``taskmill api``, gunicorn), a manager and ``--workers`` worker processes
(``taskmill worker``) on a scratch PostgreSQL database (created on the server of
``--database-url`` and dropped afterwards) and, for ``--broker redis``, on a private
``redis-server`` (unless ``--broker-url`` names one); for ``--broker amqp`` in a vhost of its own
(``rabbitmqctl``) on the server of ``--broker-url``. A submitter thread sends the tasks as a mix of
batches and single submits; meanwhile a random worker process and its children are SIGKILLed each
time another 1/(K+1) of the tasks has finished, and a replacement is started at once. Then it
waits (printing progress) until every task is final or ``--deadline`` passes, and prints:

* submitted, completed, failed, cancelled;
* **lost**: tasks not final at the deadline, plus tasks completed without having run (attempts 0,
  no ``started_at``, or no run recorded by the handler);
* tasks run more than once: by ``attempts`` and by the handler's own record. The ``fault.run``
  handler (registered from this file through a throw-away distribution on ``PYTHONPATH``, as a
  third-party plugin would be) appends ``<task id> <attempt> <pid>`` to a file before it sleeps.

Exit status: 0 when nothing was lost, 1 when something was, 2 when the set-up failed.
Every process, the scratch database, the private Redis (or the keys of this run in a given Redis)
and the scratch directory are removed at the end, also on Ctrl-C.

``run_fault(FaultConfig(...))`` runs the same from Python and returns a :class:`FaultReport`
(``tests/integration/test_fault.py``).
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import os
import random
import shutil
import signal
import sys
import tempfile
import threading
import time
import uuid
from contextlib import ExitStack
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # fault_services, also when loaded by path

from fault_services import Processes
from fault_services import _broker
from fault_services import _database
from fault_services import _free_port
from fault_services import _plugin_site
from fault_services import _wait

from taskmill import handler
from taskmill import hookimpl

ROOT = Path(__file__).resolve().parents[1]
RUNS_FILE_VAR = "FAULT_RUNS_FILE"
"""Where the ``fault.run`` handler records each run (set in the workers' environment)."""
FINAL = ("completed", "failed", "cancelled")
DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/test"


# ---- the handler the workers run (imported by them as module ``fault``) ----------------------------


@handler("fault.run", max_retries=5)
def fault_run(ctx: Any, payload: dict[str, Any]) -> dict[str, Any]:
    """Record this run (task id, attempt, pid) in the runs file, then sleep ``seconds``."""
    line = f"{ctx.task_id} {ctx.attempt} {os.getpid()}\n".encode()
    fd = os.open(os.environ[RUNS_FILE_VAR], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, line)  # one small O_APPEND write: lines of two processes never interleave
    finally:
        os.close(fd)
    time.sleep(float(payload.get("seconds", 0)))
    return {"attempt": ctx.attempt, "pid": os.getpid()}


@hookimpl
def taskmill_handlers() -> list[Any]:
    return [fault_run]


# ---- configuration and report ---------------------------------------------------------------------


@dataclasses.dataclass
class FaultConfig:
    broker: str = "sql"
    """``sql`` (the database is the queue), ``redis`` or ``amqp``."""
    tasks: int = 2000
    kills: int = 10
    workers: int = 3
    concurrency: int = 2
    """Processes per ``taskmill worker``."""
    database_url: str = os.environ.get("TASKMILL_TEST_DATABASE_URL", DEFAULT_DATABASE_URL)
    """PostgreSQL server on which a scratch database is made (or ``sqlite``)."""
    scratch_database: bool = True
    """False: use ``database_url`` itself (nothing is dropped)."""
    broker_url: str = ""
    """Redis/AMQP URL; empty for redis: a private redis-server."""
    rate: float = 400.0
    """Tasks submitted per second (the submitter paces itself)."""
    deadline: float = 120.0
    """Seconds, after the last submit, to wait for every task to be final."""
    lease: float = 5.0
    seed: int | None = None
    quiet: bool = False
    settings: dict[str, str] = dataclasses.field(default_factory=dict)
    """More ``TASKMILL_*`` variables for every process (``--set NAME=VALUE``)."""


@dataclasses.dataclass
class FaultReport:
    submitted: int = 0
    completed: int = 0
    failed: int = 0
    cancelled: int = 0
    not_final: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    completed_without_run: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    attempts_over_one: int = 0
    """Tasks whose ``attempts`` > 1."""
    handler_runs_over_one: int = 0
    """Tasks the handler recorded more than one run of."""
    runs_not_counted: int = 0
    """Tasks with more handler runs than ``attempts`` (a start that was not counted)."""
    kills: list[float] = dataclasses.field(default_factory=list)
    """Seconds into the run of each SIGKILL."""
    seconds: float = 0.0

    @property
    def lost(self) -> int:
        return len(self.not_final) + len(self.completed_without_run)

    def lines(self) -> list[str]:
        out = [
            f"submitted:            {self.submitted}",
            f"completed:            {self.completed}",
            f"failed:               {self.failed}",
            f"cancelled:            {self.cancelled}",
            f"lost:                 {self.lost}  (not final: {len(self.not_final)}, "
            f"completed without a run: {len(self.completed_without_run)})",
            f"ran more than once:   {self.attempts_over_one} by attempts, "
            f"{self.handler_runs_over_one} by the handler's record "
            f"({self.runs_not_counted} with more runs than attempts)",
            f"kills:                {len(self.kills)} at " + ", ".join(f"{k:.1f}s" for k in self.kills),
            f"duration:             {self.seconds:.1f}s",
        ]
        for t in self.not_final + self.completed_without_run:
            out.append(
                f"  lost {t['id']}: status={t['status']} attempts={t['attempts']} "
                f"started_at={t.get('started_at')} worker={t.get('worker')}"
            )
        return out


# ---- the run --------------------------------------------------------------------------------------


class Api:
    """The few HTTP calls the script makes (``TASKMILL_AUTH=none`` on loopback: no credential)."""

    def __init__(self, base: str) -> None:
        import requests

        self.base = base
        self.http = requests.Session()
        self.errors = requests.RequestException

    def healthy(self) -> bool:
        try:
            return self.http.get(self.base + "/health", timeout=2).status_code == 200
        except self.errors:
            return False

    def submit(self, bodies: list[dict[str, Any]]) -> list[str]:
        """Submit one (single POST) or many (a batch); the ids accepted (2xx), retried on errors."""
        for attempt in range(5):
            try:
                if len(bodies) == 1:
                    r = self.http.post(self.base + "/api/v1/tasks", json=bodies[0], timeout=30)
                    if r.status_code in (200, 201):
                        return [r.json()["id"]]
                else:
                    r = self.http.post(self.base + "/api/v1/tasks/batch", json={"tasks": bodies}, timeout=30)
                    if r.status_code == 201:
                        return [t["id"] for t in r.json()["tasks"]]
                if r.status_code < 500 and r.status_code != 429:
                    raise RuntimeError(f"submit answered {r.status_code}: {r.text[:300]}")
            except self.errors:
                pass
            time.sleep(0.2 * (attempt + 1))
        return []

    def depth(self, queue: str) -> dict[str, int]:
        try:
            r = self.http.get(self.base + "/api/v1/queues", timeout=10)
            for q in r.json():
                if q["name"] == queue:
                    return q["depth"]
        except (self.errors, ValueError):
            pass
        return {}

    def tasks(self, queue: str, ids: set[str]) -> dict[str, dict[str, Any]]:
        found: dict[str, dict[str, Any]] = {}
        page = 1
        while True:
            r = self.http.get(
                self.base + "/api/v1/tasks",
                params={"queue": queue, "page": page, "page_size": 1000},
                timeout=60,
            )
            r.raise_for_status()
            items = r.json()
            found.update({t["id"]: t for t in items})
            if len(items) < 1000:
                break
            page += 1
        for tid in ids - set(found):
            found[tid] = self.http.get(f"{self.base}/api/v1/tasks/{tid}", timeout=10).json()
        return found


def _bodies(rng: random.Random, queue: str, n: int) -> list[dict[str, Any]]:
    """``n`` tasks: 85% return at once (echo-like), 15% sleep 20–200 ms; any priority."""
    return [
        {
            "type": "fault.run",
            "queue": queue,
            "priority": rng.randint(0, 9),
            "max_retries": 5,
            "payload": {"seconds": 0 if rng.random() < 0.85 else round(rng.uniform(0.02, 0.2), 3)},
        }
        for _ in range(n)
    ]


class Submitter(threading.Thread):
    """Submits ``total`` tasks at ``rate`` per second: batches of 5–100 and single submits."""

    def __init__(self, api: Api, queue: str, total: int, rate: float, rng: random.Random) -> None:
        super().__init__(daemon=True, name="fault-submitter")
        self.api, self.queue, self.total, self.rate, self.rng = api, queue, total, rate, rng
        self.ids: list[str] = []
        self.error: BaseException | None = None
        self.stopped = threading.Event()

    def run(self) -> None:
        started = time.monotonic()
        sent = 0
        try:
            while sent < self.total and not self.stopped.is_set():
                n = 1 if self.rng.random() < 0.3 else self.rng.randint(5, 100)
                n = min(n, self.total - sent)
                self.ids += self.api.submit(_bodies(self.rng, self.queue, n))
                sent += n
                ahead = started + sent / self.rate - time.monotonic()
                if ahead > 0:
                    self.stopped.wait(ahead)
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            self.error = exc


def run_fault(cfg: FaultConfig) -> FaultReport:
    """Run one fault test as the module docstring says; return what it counted."""
    rng = random.Random(cfg.seed)
    token = uuid.uuid4().hex[:10]
    queue = f"fault-{token}"
    say = (lambda *a: None) if cfg.quiet else (lambda *a: print(*a, flush=True))
    report = FaultReport()
    task_ids: set[str] = set()
    with ExitStack() as stack:
        scratch = Path(tempfile.mkdtemp(prefix="taskmill-fault-"))
        stack.callback(shutil.rmtree, scratch, ignore_errors=True)
        (scratch / "logs").mkdir()
        db_url = stack.enter_context(_database(cfg, scratch, token))
        broker_url = stack.enter_context(_broker(cfg, token, task_ids))
        runs_file = scratch / "runs.txt"
        port = _free_port()
        clean = {k: v for k, v in os.environ.items() if not k.startswith("TASKMILL_")}
        clean.pop("PROMETHEUS_MULTIPROC_DIR", None)
        paths = [str(ROOT), str(ROOT / "scripts"), str(_plugin_site(scratch)), clean.get("PYTHONPATH", "")]
        env = {
            **clean,
            "PYTHONPATH": os.pathsep.join(p for p in paths if p),
            "PYTHONUNBUFFERED": "1",
            RUNS_FILE_VAR: str(runs_file),
            "TASKMILL_DATABASE_URL": db_url,
            "TASKMILL_BROKER_URL": broker_url,
            "TASKMILL_AUTH": "none",
            "TASKMILL_LOAD_PLUGINS": "taskmill,taskmill-fault",
            "TASKMILL_LOG_LEVEL": "WARNING",
            "TASKMILL_METRICS_DIR": str(scratch / "metrics"),
            "TASKMILL_WORKER_LEASE": str(cfg.lease),
            "TASKMILL_MANAGER_INTERVAL": "0.5",
            "TASKMILL_REPUBLISH_AFTER": str(cfg.lease),
            "TASKMILL_SHUTDOWN_TIMEOUT": "5",
            **cfg.settings,
        }
        procs = Processes(env, scratch / "logs")
        stack.callback(procs.stop)
        api = Api(f"http://127.0.0.1:{port}")
        procs.start("api", "--port", str(port), "--workers", "2")
        try:
            _wait(api.healthy, 60, "the api to answer /health")
        except RuntimeError:
            raise RuntimeError("the api did not start:\n" + procs.tail()) from None
        procs.start("manager")
        for _ in range(cfg.workers):
            procs.start_worker(queue, cfg.concurrency)
        say(
            f"fault: broker={cfg.broker} tasks={cfg.tasks} kills={cfg.kills} workers={cfg.workers}"
            f"x{cfg.concurrency} lease={cfg.lease}s queue={queue}"
        )

        started = time.monotonic()
        submitter = Submitter(api, queue, cfg.tasks, cfg.rate, rng)
        stack.callback(submitter.stopped.set)
        submitter.start()
        deadline: float | None = None
        next_print, last_final = 0.0, -1
        while True:
            time.sleep(0.2)
            now = time.monotonic()
            if submitter.error is not None:
                raise RuntimeError(f"the submitter failed: {submitter.error}")
            depth = api.depth(queue)
            final = sum(depth.get(s, 0) for s in FINAL)
            # the i-th kill once i/(K+1) of the tasks are final: spread over the whole run
            due = cfg.tasks * (len(report.kills) + 1) / (cfg.kills + 1)
            if len(report.kills) < cfg.kills and final >= due:
                victim = procs.kill_random_worker(rng)
                procs.start_worker(queue, cfg.concurrency)
                report.kills.append(now - started)
                say(f"  {now - started:6.1f}s  SIGKILL worker pid {victim.pid} (and its children); replaced")
            if now >= next_print:
                stalled = final == last_final and not submitter.is_alive()
                next_print, last_final = now + (10 if stalled else 2), final
                busy = ", ".join(f"{k}={v}" for k, v in sorted(depth.items()) if k not in FINAL)
                say(
                    f"  {now - started:6.1f}s  submitted={len(submitter.ids)}/{cfg.tasks} final={final} "
                    f"{busy} kills={len(report.kills)}/{cfg.kills}"
                )
            if not submitter.is_alive():
                deadline = deadline or now + cfg.deadline
                if final >= len(submitter.ids) or now >= deadline:
                    break
        report.seconds = time.monotonic() - started
        task_ids.update(submitter.ids)
        _count(report, api.tasks(queue, task_ids), runs_file)
        if report.lost:
            say("manager log (tail):\n" + procs.tail("manager"))
    return report


def _count(report: FaultReport, tasks: dict[str, dict[str, Any]], runs_file: Path) -> None:
    runs: collections.Counter[str] = collections.Counter()
    if runs_file.exists():
        for line in runs_file.read_text().splitlines():
            parts = line.split()
            if len(parts) == 3:  # a line cut by a SIGKILL mid-write is not a run
                runs[parts[0]] += 1
    report.submitted = len(tasks)
    for tid, t in tasks.items():
        status = t["status"]
        if status == "completed":
            report.completed += 1
            if t["attempts"] < 1 or not t.get("started_at") or runs[tid] < 1:
                report.completed_without_run.append(t)
        elif status == "failed":
            report.failed += 1
        elif status == "cancelled":
            report.cancelled += 1
        else:
            report.not_final.append(t)
        report.attempts_over_one += t["attempts"] > 1
        report.handler_runs_over_one += runs[tid] > 1
        report.runs_not_counted += runs[tid] > t["attempts"]


# ---- command line ---------------------------------------------------------------------------------


def machine() -> str:
    mem = "?"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    except OSError:
        pass
    return f"nproc={os.cpu_count()} memory={mem} python={sys.version.split()[0]}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    d = FaultConfig()
    p.add_argument("--broker", choices=("sql", "redis", "amqp"), default=d.broker)
    p.add_argument("--tasks", "-n", type=int, default=d.tasks)
    p.add_argument("--kills", "-k", type=int, default=d.kills)
    p.add_argument("--workers", "-w", type=int, default=d.workers, help="taskmill worker processes")
    p.add_argument("--concurrency", "-c", type=int, default=d.concurrency, help="processes per worker")
    p.add_argument("--database-url", default=d.database_url, help="PostgreSQL server (or 'sqlite')")
    p.add_argument("--no-scratch", action="store_true", help="use --database-url as it is")
    p.add_argument("--broker-url", default="", help="Redis/AMQP URL (redis default: a private server)")
    p.add_argument("--rate", type=float, default=d.rate, help="tasks submitted per second")
    p.add_argument("--deadline", type=float, default=d.deadline, help="seconds to wait after submitting")
    p.add_argument("--lease", type=float, default=d.lease, help="TASKMILL_WORKER_LEASE of the run")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="a TASKMILL_* setting")
    a = p.parse_args(argv)
    cfg = FaultConfig(
        broker=a.broker,
        tasks=a.tasks,
        kills=a.kills,
        workers=a.workers,
        concurrency=a.concurrency,
        database_url=a.database_url,
        scratch_database=not a.no_scratch,
        broker_url=a.broker_url,
        rate=a.rate,
        deadline=a.deadline,
        lease=a.lease,
        seed=a.seed,
        settings=dict(kv.split("=", 1) for kv in a.set),
    )

    def interrupted(*_: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)  # clean up on SIGTERM as on Ctrl-C
    print(f"machine: {machine()}", flush=True)
    try:
        report = run_fault(cfg)
    except (RuntimeError, OSError) as exc:
        print(f"fault: set-up failed: {exc}", file=sys.stderr)
        return 2
    print("\n".join(report.lines()))
    return 1 if report.lost else 0


if __name__ == "__main__":
    sys.exit(main())
