"""Fixtures of the end-to-end tests: real `taskmill` processes on free ports."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.services import amqp_url
from tests.services import postgres_url
from tests.services import rabbitmq_vhost
from tests.services import redis_server
from tests.services import scratch_database

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Installation:
    """A running `taskmill run`, its output, and an HTTP client with its admin credential."""

    def __init__(self, proc: subprocess.Popen[str], base: str, env: dict[str, str]) -> None:
        self.proc = proc
        self.base = base
        self.env = env
        self.lines: list[str] = []
        self.key: str | None = None
        self.http = requests.Session()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def _learn_key(self) -> None:
        """Authenticate the session with the admin key `taskmill run` printed, once it has."""
        if self.key is None:
            for line in list(self.lines):
                m = re.fullmatch(r"Admin API key: (\S+)", line)
                if m:
                    self.key = m.group(1)
                    self.http.headers["Authorization"] = f"Bearer {self.key}"

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError("taskmill run exited:\n" + "\n".join(self.lines[-50:]))
            self._learn_key()
            try:
                ok = requests.get(self.base + "/health", timeout=1).status_code == 200
                workers = self.get("/api/v1/workers").json() if ok else []
                if ok and isinstance(workers, list) and workers:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.2)
        raise AssertionError("taskmill run did not become ready:\n" + "\n".join(self.lines[-50:]))

    def get(self, path: str, **kw: Any) -> requests.Response:
        return self.http.get(self.base + path, timeout=10, **kw)

    def post(self, path: str, json: Any = None, **kw: Any) -> requests.Response:
        return self.http.post(self.base + path, json=json, timeout=10, **kw)

    def delete(self, path: str, **kw: Any) -> requests.Response:
        return self.http.delete(self.base + path, timeout=10, **kw)

    def wait_task(self, task_id: str, statuses: set[str], timeout: float = 30) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        body: dict[str, Any] = {}
        while time.monotonic() < deadline:
            body = self.get(f"/api/v1/tasks/{task_id}").json()
            if body.get("status") in statuses:
                return body
            time.sleep(0.1)
        output = "\n".join(self.lines[-80:])
        raise AssertionError(f"task {task_id} did not reach {statuses}: {body}\n--- taskmill run:\n{output}")

    def stop(self) -> int:
        """Ctrl-C, as a user would; everything must be gone afterwards."""
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGINT)
                try:
                    self.proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
                    raise
            return self.proc.returncode
        finally:
            self._reader.join(timeout=5)
            if self.proc.stdout is not None:
                self.proc.stdout.close()
            self.http.close()


@contextmanager
def taskmill_run(workdir: Path, env_extra: dict[str, str], concurrency: int = 2) -> Iterator[Installation]:
    port = free_port()
    clean = {
        k: v for k, v in os.environ.items() if not k.startswith("TASKMILL_") or k.startswith("TASKMILL_TEST_")
    }
    env = {
        **clean,
        "PYTHONPATH": str(ROOT),
        "PYTHONUNBUFFERED": "1",
        "TASKMILL_WORKER_LEASE": "3",
        "TASKMILL_MANAGER_INTERVAL": "0.2",
        "TASKMILL_CANCEL_GRACE": "1",
        "TASKMILL_LOAD_PLUGINS": "taskmill",  # the built-in plugins only, whatever else is installed
        **env_extra,
    }
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    cmd = [
        sys.executable,
        "-m",
        "taskmill.cli",
        "run",
        "--port",
        str(port),
        "--concurrency",
        str(concurrency),
    ]
    proc = subprocess.Popen(
        cmd,
        cwd=workdir,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    inst = Installation(proc, f"http://127.0.0.1:{port}", env)
    try:
        inst.wait_ready()
        yield inst
    finally:
        inst.stop()
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # nothing of ours may outlive the test
        except ProcessLookupError:
            pass


BROKERS = ["sqlite", "postgresql", "redis", "rabbitmq"]


@pytest.fixture(scope="module", params=BROKERS)
def broker_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, str]]:
    """Settings of one installation per broker: the embedded default (SQLite + SQL broker),
    PostgreSQL with the SQL broker, PostgreSQL with the Redis broker (a private redis-server), and
    PostgreSQL with the RabbitMQ broker (a vhost of its own)."""
    with ExitStack() as stack:
        if request.param == "sqlite":
            path = tmp_path_factory.mktemp("e2e") / "taskmill.db"
            yield {"TASKMILL_DATABASE_URL": f"sqlite:///{path}"}
        elif request.param == "postgresql":
            url = stack.enter_context(scratch_database(postgres_url()))
            yield {"TASKMILL_DATABASE_URL": url}
        elif request.param == "redis":
            url = stack.enter_context(scratch_database(postgres_url()))
            server = stack.enter_context(redis_server())
            yield {"TASKMILL_DATABASE_URL": url, "TASKMILL_BROKER_URL": server.url}
        elif request.param == "rabbitmq":
            url = stack.enter_context(scratch_database(postgres_url()))
            vhost = stack.enter_context(rabbitmq_vhost(amqp_url()))
            yield {"TASKMILL_DATABASE_URL": url, "TASKMILL_BROKER_URL": vhost}
        else:  # pragma: no cover
            raise ValueError(request.param)


@pytest.fixture(scope="module")
def installation(
    broker_url: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Installation]:
    with taskmill_run(tmp_path_factory.mktemp("run"), broker_url) as inst:
        yield inst
