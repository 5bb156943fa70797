"""Each role's /metrics as an operator's Prometheus sees it, on real processes and PostgreSQL:
the api under gunicorn with two workers, a worker and a manager on their metrics ports (each
with a multiprocess directory of its own, as in a pod). The values move as tasks run, liveness
and readiness answer, and every scrape passes ``promtool check metrics``."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.deploy.tools import ROOT
from tests.deploy.tools import executable
from tests.deploy.tools import run
from tests.services import postgres_url
from tests.services import scratch_database
from tests.waiting import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TASKS = 12


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Role:
    def __init__(self, name: str, args: list[str], env: dict[str, str], port: int) -> None:
        self.name = name
        self.port = port
        self.base = f"http://127.0.0.1:{port}"
        self.log = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "taskmill.cli", *args],
            env=env,
            cwd=ROOT,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def output(self) -> str:
        self.log.seek(0)
        return f"--- {self.name} ---\n" + self.log.read()[-3000:]

    def get(self, path: str) -> requests.Response:
        return requests.get(self.base + path, timeout=10)

    def status(self, path: str) -> int:
        try:
            return self.get(path).status_code
        except requests.RequestException:
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited\n{self.output()}") from None
            return 0

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()


@contextmanager
def roles(database_url: str) -> Iterator[dict[str, Role]]:
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("TASKMILL_") and k != "PROMETHEUS_MULTIPROC_DIR"
    }
    base = {
        **clean,
        "PYTHONPATH": str(ROOT),
        "PYTHONUNBUFFERED": "1",
        "TASKMILL_DATABASE_URL": database_url,
        "TASKMILL_AUTH": "none",
        "TASKMILL_LOAD_PLUGINS": "taskmill",
        "TASKMILL_MANAGER_INTERVAL": "0.2",
        "TASKMILL_LOG_LEVEL": "WARNING",
    }
    with ExitStack() as stack:
        started: dict[str, Role] = {}

        def start(name: str, args: list[str], port: int) -> None:
            env = {**base, "PROMETHEUS_MULTIPROC_DIR": stack.enter_context(tempfile.TemporaryDirectory())}
            started[name] = Role(name, args, env, port)
            stack.callback(started[name].stop)

        # the schema once, before the roles (as the deployments do)
        out = run([sys.executable, "-m", "taskmill.cli", "db", "upgrade"], env=base, cwd=ROOT)
        assert out.returncode == 0, out.stdout + out.stderr
        api_port = _free_port()
        start("api", ["api", "--port", str(api_port), "--workers", "2"], api_port)
        port = _free_port()
        start("worker", ["worker", "--concurrency", "2", "--metrics-port", str(port)], port)
        port = _free_port()
        start("manager", ["manager", "--metrics-port", str(port)], port)
        context = lambda: "\n".join(r.output() for r in started.values())  # noqa: E731
        for role in started.values():
            ready = "/health" if role.name == "api" else "/health/ready"
            wait_for(lambda r=role, p=ready: r.status(p) == 200, 60, f"{role.name} ready", context)
        yield started


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels`` (0 when none)."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples(text).items() if n == name and want <= set(ls))


def test_each_role_exports_what_it_counts_and_the_values_move():
    promtool = executable("promtool", "apt-get install -y prometheus")
    with scratch_database(postgres_url()) as url, roles(url) as r:
        api, worker, manager = r["api"], r["worker"], r["manager"]
        before = {name: role.get("/metrics").text for name, role in r.items()}
        ids = []
        for i in range(TASKS):
            resp = requests.post(
                f"{api.base}/api/v1/tasks", json={"type": "echo", "payload": {"i": i}}, timeout=10
            )
            assert resp.status_code == 201, resp.text
            ids.append(resp.json()["id"])

        def all_done() -> bool:
            statuses = [
                requests.get(f"{api.base}/api/v1/tasks/{i}", timeout=10).json()["status"] for i in ids
            ]
            return all(s == "completed" for s in statuses)

        wait_for(all_done, 60, "the tasks to complete", lambda: worker.output())

        # the api counts submissions (two gunicorn workers, one multiprocess directory)
        wait_for(
            lambda: (
                value(api.get("/metrics").text, "taskmill_tasks_submitted_total", type="echo")
                - value(before["api"], "taskmill_tasks_submitted_total", type="echo")
                == TASKS
            ),
            20,
            "the api's submitted counter",
        )
        # the worker counts what it ran, and its own CPU and memory
        text = worker.get("/metrics").text
        assert value(text, "taskmill_tasks_finished_total", status="completed", type="echo") == TASKS
        assert value(text, "taskmill_task_duration_seconds_count", type="echo") == TASKS
        assert value(text, "taskmill_task_wait_seconds_count") == TASKS
        worker_ids = {
            dict(ls)["worker"] for (n, ls) in samples(text) if n == "taskmill_worker_resident_memory_bytes"
        }
        assert len(worker_ids) == 1
        assert value(text, "taskmill_worker_resident_memory_bytes") > 10_000_000
        assert value(text, "taskmill_worker_cpu_seconds_total") > 0
        assert value(text, "taskmill_worker_concurrency") == 2
        # every role shows the cluster gauges, which the manager refreshes every few seconds
        for role in (manager, api, worker):
            wait_for(
                lambda role=role: (
                    value(role.get("/metrics").text, "taskmill_queue_depth", status="completed") == TASKS
                ),
                30,
                f"{role.name}'s queue depth",
            )
            text = role.get("/metrics").text
            assert value(text, "taskmill_workers", queue="default") == 1
            assert value(text, "taskmill_storage_up") == 1 and value(text, "taskmill_broker_up") == 1
            assert 0 <= value(text, "taskmill_stats_age_seconds") < 30
        for name, role in r.items():
            text = role.get("/metrics").text
            out = run([promtool, "check", "metrics"], input=text)
            assert out.returncode == 0, f"{name}: {out.stdout}{out.stderr}"
        # probes of the roles without an HTTP API
        for role in (worker, manager):
            assert role.get("/health/live").json() == {"status": "ok", "reason": "ok"}
            body = role.get("/health/ready").json()
            assert body == {"status": "ok", "checks": {"storage": "ok", "broker": "ok"}}
            assert role.get("/nothing").status_code == 404


def test_taskmill_run_merges_every_role_into_the_api(tmp_path: Path):
    """Under ``taskmill run`` one /metrics (the api's) shows the worker's counters and gauges."""
    port = _free_port()
    env = {
        **{
            k: v
            for k, v in os.environ.items()
            if not k.startswith("TASKMILL_") and k != "PROMETHEUS_MULTIPROC_DIR"
        },
        "PYTHONPATH": str(ROOT),
        "TASKMILL_DATABASE_URL": f"sqlite:///{tmp_path}/run.db",
        "TASKMILL_AUTH": "none",
        "TASKMILL_LOAD_PLUGINS": "taskmill",
        "TASKMILL_METRICS_PORT": str(_free_port()),  # ignored under run: the api merges
    }
    role = Role("run", ["run", "--port", str(port), "--concurrency", "1"], env, port)
    try:
        wait_for(lambda: role.status("/health") == 200, 60, "taskmill run", role.output)
        resp = requests.post(f"{role.base}/api/v1/tasks", json={"type": "echo", "payload": {}}, timeout=10)
        assert resp.status_code == 201, resp.text
        wait_for(
            lambda: (
                value(role.get("/metrics").text, "taskmill_tasks_finished_total", status="completed") == 1
            ),
            30,
            "the worker's counter in the api's /metrics",
            role.output,
        )
        wait_for(
            lambda: value(role.get("/metrics").text, "taskmill_worker_resident_memory_bytes") > 0,
            30,
            "the worker's memory gauge in the api's /metrics",
            role.output,
        )
    finally:
        role.stop()
