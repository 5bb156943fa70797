"""Runtimes on every storage backend, for contract tests parametrised over them."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from taskmill.config import Settings
from taskmill.runtime import Runtime
from taskmill.runtime import build_runtime
from tests.jobs import JobsPlugin
from tests.services import postgres_url
from tests.services import scratch_database

BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgresql", id="postgresql", marks=pytest.mark.integration),
]


@contextmanager
def runtime_on(backend: str, tmp_path: Any, **overrides: Any) -> Iterator[Runtime]:
    """A migrated runtime with the test handlers, on a fresh SQLite file or PostgreSQL database."""
    if backend == "sqlite":
        ctx = _nullctx(f"sqlite:///{tmp_path}/contract.db")
    else:
        ctx = scratch_database(postgres_url())
    with ctx as url:
        values: dict[str, Any] = {"load_plugins": ("sql",), "secret_key": "test", **overrides}
        settings = Settings().replace(database_url=url, **values)  # plugin settings go to extra
        rt = build_runtime(settings, plugins=[JobsPlugin()], upgrade=True)
        try:
            yield rt
        finally:
            rt.close()


@contextmanager
def _nullctx(value: str) -> Iterator[str]:
    yield value
