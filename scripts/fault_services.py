"""The fault script's services: a scratch database, a broker of its own, and the taskmill
processes it starts and kills (scripts/fault.py runs them)."""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING
from typing import Any
from urllib.parse import urlsplit

if TYPE_CHECKING:  # pragma: no cover
    from fault import FaultConfig

DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"
"""RabbitMQ of the machine, when neither --broker-url nor TASKMILL_TEST_AMQP_URL names one."""

__all__ = [
    "_free_port",
    "_database",
    "_broker",
    "_rabbitmq_vhost",
    "_connects",
    "_delete_redis_keys",
    "_wait",
    "Processes",
    "_signal_group",
    "_plugin_site",
]


# ---- services: database, broker, processes ---------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def _database(cfg: FaultConfig, scratch: Path, token: str) -> Iterator[str]:
    """The database URL to run on: a scratch PostgreSQL database (dropped after) or SQLite file."""
    if cfg.database_url.startswith("sqlite"):
        yield f"sqlite:///{scratch / 'fault.db'}"
        return
    if not cfg.scratch_database:
        yield cfg.database_url
        return
    import psycopg2  # only here: the script stays import-light

    plain = cfg.database_url.replace("postgresql+psycopg2://", "postgresql://")
    name = f"taskmill_fault_{token}"
    admin = psycopg2.connect(plain, connect_timeout=5)
    admin.autocommit = True
    try:
        with admin.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
        yield urlsplit(plain)._replace(path=f"/{name}").geturl()
    finally:
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


@contextmanager
def _broker(cfg: FaultConfig, token: str, task_ids: set[str]) -> Iterator[str]:
    """The broker URL: empty for SQL; for Redis a private redis-server unless one is given
    (then this run's keys are deleted afterwards); for AMQP a vhost of its own on the server of
    the URL given (or the default)."""
    if cfg.broker == "sql":
        yield ""
    elif cfg.broker == "redis" and not cfg.broker_url:
        port = _free_port()
        proc = subprocess.Popen(
            ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            _wait(lambda: _connects(port), 10, "redis-server to listen")
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            proc.kill()
            proc.wait(timeout=10)
    elif cfg.broker == "redis":
        try:
            yield cfg.broker_url
        finally:
            _delete_redis_keys(cfg.broker_url, token, task_ids)
    elif cfg.broker == "amqp":
        url = cfg.broker_url or os.environ.get("TASKMILL_TEST_AMQP_URL", DEFAULT_AMQP_URL)
        with _rabbitmq_vhost(url, token) as vhost_url:
            yield vhost_url
    else:
        raise ValueError(f"unknown broker {cfg.broker!r} (sql, redis or amqp)")


@contextmanager
def _rabbitmq_vhost(url: str, token: str) -> Iterator[str]:
    """A vhost of this run's own (``rabbitmqctl``, on this machine), deleted with its queues after;
    without ``rabbitmqctl``, ``url`` as it is (this run's queues, named after its token, stay)."""
    if shutil.which("rabbitmqctl") is None:
        yield url
        return
    name = f"taskmill_fault_{token}"
    ctl = ["rabbitmqctl", "-q"]
    subprocess.run([*ctl, "add_vhost", name], check=True, capture_output=True, timeout=60)
    try:
        user = urlsplit(url).username or "guest"
        perms = [*ctl, "set_permissions", "-p", name, user, ".*", ".*", ".*"]
        subprocess.run(perms, check=True, capture_output=True, timeout=60)
        yield urlsplit(url)._replace(path=f"/{name}").geturl()
    finally:
        subprocess.run([*ctl, "delete_vhost", name], capture_output=True, timeout=60)


def _connects(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


def _delete_redis_keys(url: str, token: str, task_ids: set[str]) -> None:
    """Delete every key whose name holds this run's token (its queue) or one of its task ids."""
    import redis

    client = redis.Redis.from_url(url, decode_responses=True)
    try:
        ours = [k for k in client.scan_iter(count=1000) if token in k or any(t in k for t in task_ids)]
        for i in range(0, len(ours), 500):
            client.delete(*ours[i : i + 500])
    finally:
        client.close()


def _wait(predicate: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise RuntimeError(f"timed out after {timeout}s waiting for {what}")


class Processes:
    """The api, manager and workers: each in a process group of its own, logged to a file."""

    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self.env = env
        self.logs = logs
        self.all: list[subprocess.Popen[bytes]] = []
        self.workers: list[subprocess.Popen[bytes]] = []

    def start(self, *args: str) -> subprocess.Popen[bytes]:
        with open(self.logs / f"{args[0]}-{len(self.all)}.log", "wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "taskmill.cli", *args],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its children share its group: one killpg ends them all
            )
        self.all.append(proc)
        return proc

    def start_worker(self, queue: str, concurrency: int) -> None:
        self.workers.append(self.start("worker", "--queues", queue, "--concurrency", str(concurrency)))

    def kill_random_worker(self, rng: random.Random) -> subprocess.Popen[bytes]:
        victim = rng.choice([w for w in self.workers if w.poll() is None])
        _signal_group(victim, signal.SIGKILL)
        victim.wait(timeout=10)
        self.workers.remove(victim)
        return victim

    def stop(self) -> None:
        """SIGTERM everything, give it 15 s, then SIGKILL every group."""
        for proc in self.all:
            _signal_group(proc, signal.SIGTERM)
        deadline = time.monotonic() + 15
        for proc in self.all:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for proc in self.all:
            _signal_group(proc, signal.SIGKILL)  # children that outlived their parent too
            if proc.poll() is None:
                proc.wait(timeout=10)

    def tail(self, role: str = "", lines: int = 15) -> str:
        out = []
        for path in sorted(self.logs.glob(f"{role}*.log")):
            text = path.read_text(errors="replace").splitlines()[-lines:]
            if text:
                out.append(f"--- {path.name}\n" + "\n".join(text))
        return "\n".join(out)


def _signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _plugin_site(scratch: Path) -> Path:
    """A throw-away distribution whose entry point registers this file's handler (module ``fault``)."""
    site = scratch / "site"
    info = site / "taskmill_fault-0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: taskmill-fault\nVersion: 0\n")
    (info / "entry_points.txt").write_text("[taskmill]\nfault = fault\n")
    return site
