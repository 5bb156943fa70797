"""Finding the real services the integration and end-to-end tests use.

Each probe returns a URL, or skips the test with the reason when the service is unreachable,
except with ``TASKMILL_REQUIRE_SERVICES=1`` (CI), where an unreachable service fails the test.
"""

from __future__ import annotations

import os
import socket
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
