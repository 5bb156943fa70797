"""Finding the real services the integration and end-to-end tests use.

Each probe returns a URL, or skips the test with the reason when the service is unreachable,
except with ``TASKMILL_REQUIRE_SERVICES=1`` (CI), where an unreachable service fails the test.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit

import pytest

DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/test"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"


def required() -> bool:
    return os.environ.get("TASKMILL_REQUIRE_SERVICES", "") in ("1", "true", "yes")


def unavailable(what: str, url: str, exc: BaseException) -> None:
    message = f"{what} is unreachable at {url}: {exc}"
    if required():
        pytest.fail(f"{message} (TASKMILL_REQUIRE_SERVICES=1)")
    pytest.skip(message)


def _reachable(url: str) -> None:
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 5432), timeout=2):
        pass


def postgres_url() -> str:
    url = os.environ.get("TASKMILL_TEST_DATABASE_URL", DEFAULT_DATABASE_URL)
    try:
        import psycopg2

        _reachable(url)
        psycopg2.connect(url.replace("postgresql+psycopg2://", "postgresql://"), connect_timeout=3).close()
    except Exception as exc:  # noqa: BLE001 - any failure means unreachable
        unavailable("PostgreSQL", url, exc)
    return url


@contextmanager
def scratch_database(base_url: str) -> Iterator[str]:
    """A new, empty PostgreSQL database on the server of ``base_url``, dropped afterwards."""
    import psycopg2

    plain = base_url.replace("postgresql+psycopg2://", "postgresql://")
    name = f"taskmill_t_{uuid.uuid4().hex[:10]}"
    admin = psycopg2.connect(plain, connect_timeout=5)
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    parts = urlsplit(plain)
    url = parts._replace(path=f"/{name}").geturl()
    try:
        yield url
    finally:
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def redis_url() -> str:
    """The Redis of ``TASKMILL_TEST_REDIS_URL`` (skips, or fails in CI, when unreachable)."""
    url = os.environ.get("TASKMILL_TEST_REDIS_URL", DEFAULT_REDIS_URL)
    try:
        import redis

        client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)
        try:
            client.ping()
        finally:
            client.close()
    except Exception as exc:  # noqa: BLE001 - any failure means unreachable
        unavailable("Redis", url, exc)
    return url


def amqp_url() -> str:
    """The RabbitMQ of ``TASKMILL_TEST_AMQP_URL`` (skips, or fails in CI, when unreachable)."""
    url = os.environ.get("TASKMILL_TEST_AMQP_URL", DEFAULT_AMQP_URL)
    try:
        import pika

        params = pika.URLParameters(url)
        params.socket_timeout = 2
        params.connection_attempts = 1
        pika.BlockingConnection(params).close()
    except Exception as exc:  # noqa: BLE001 - any failure means unreachable
        unavailable("RabbitMQ", url.replace(urlsplit(url).password or "\0", "***"), exc)
    return url


@contextmanager
def rabbitmq_vhost(base_url: str) -> Iterator[str]:
    """A new RabbitMQ vhost (``rabbitmqctl``, on this machine) for the user of ``base_url``;
    yields the URL of it and deletes the vhost, queues and all, afterwards."""
    if shutil.which("rabbitmqctl") is None:
        unavailable("rabbitmqctl", "PATH", FileNotFoundError("rabbitmqctl"))
    parts = urlsplit(base_url)
    name = f"taskmill_t_{uuid.uuid4().hex[:10]}"
    subprocess.run(["rabbitmqctl", "-q", "add_vhost", name], check=True, capture_output=True, timeout=60)
    try:
        user = parts.username or "guest"
        subprocess.run(
            ["rabbitmqctl", "-q", "set_permissions", "-p", name, user, ".*", ".*", ".*"],
            check=True,
            capture_output=True,
            timeout=60,
        )
        yield parts._replace(path=f"/{name}").geturl()
    finally:
        subprocess.run(["rabbitmqctl", "-q", "delete_vhost", name], capture_output=True, timeout=60)


class RedisServer:
    """A ``redis-server`` of our own on a free port, without persistence (it can lose everything)."""

    def __init__(self) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        import redis

        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port, socket_connect_timeout=0.5, socket_timeout=1)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.RedisError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
            finally:
                client.close()

    def stop(self) -> None:
        """Kill it (SIGKILL: whatever it held is gone)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None


@contextmanager
def redis_server() -> Iterator[RedisServer]:
    """Start a private redis-server (skip, or fail in CI, when the binary is missing)."""
    if shutil.which("redis-server") is None:
        unavailable("redis-server", "PATH", FileNotFoundError("redis-server"))
    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()
