"""Fixtures of the integration tests: real services, each test on its own database."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.services import postgres_url
from tests.services import redis_url as services_redis_url
from tests.services import scratch_database


@pytest.fixture(scope="session")
def pg_server_url() -> str:
    """The PostgreSQL server to use (skips, or fails in CI, when unreachable)."""
    return postgres_url()


@pytest.fixture
def pg_url(pg_server_url: str) -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test, dropped afterwards."""
    with scratch_database(pg_server_url) as url:
        yield url


@pytest.fixture(scope="session")
def redis_url() -> str:
    """The Redis server of ``TASKMILL_TEST_REDIS_URL`` (skips, or fails in CI, when unreachable)."""
    return services_redis_url()
