"""Fixtures of the unit tests: a real app on a SQLite file, with test handlers registered as a plugin.

No services and no mocks of taskmill's own code: the app, the lifecycle and the SQL storage are
the real ones; test handlers and test auth backends arrive through the plugin hooks, exactly as a
third-party plugin's would.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Callable
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from marshmallow import Schema
from marshmallow import fields
from marshmallow import validate

from taskmill import handler
from taskmill import hookimpl
from taskmill.app import create_app
from taskmill.models import Outcome
from taskmill.models import Task
from taskmill.runtime import Runtime


class StrictPayload(Schema):
    n = fields.Integer(required=True, validate=validate.Range(min=0, max=10))


@handler("t.echo", description="Return the payload (test handler).")
def t_echo(ctx: Any, payload: dict[str, Any]) -> dict[str, Any]:
    return payload


@handler("t.strict", schema=StrictPayload, queue="strict", timeout=30, max_retries=1)
def t_strict(ctx: Any, payload: dict[str, Any]) -> dict[str, Any]:
    """Accept only ``{"n": 0..10}`` (test handler)."""
    return payload


class UnitHandlers:
    """A plugin declaring the test handlers (instead of the built-in ones)."""

    @hookimpl
    def taskmill_handlers(self) -> list[Any]:
        return [t_echo, t_strict]


AppFactory = Callable[..., Flask]


@pytest.fixture
def make_app(tmp_path: Any) -> Iterator[AppFactory]:
    """Build apps on a fresh SQLite file: ``make_app(max_payload_bytes=2048, plugins=[...])``."""
    counter = itertools.count()
    runtimes: list[Runtime] = []

    def make(*, plugins: list[Any] | None = None, testing: bool = True, **overrides: Any) -> Flask:
        settings = {
            "database_url": f"sqlite:///{tmp_path}/t{next(counter)}.db",
            "auth": "none",
            "load_plugins": ["sql"],
            "secret_key": "unit-test-secret",
            **overrides,
        }
        app = create_app(settings, plugins=[UnitHandlers(), *(plugins or [])])
        app.testing = testing
        runtimes.append(app.extensions["taskmill"])
        return app

    yield make
    for runtime in runtimes:
        runtime.close()


@pytest.fixture
def app(make_app: AppFactory) -> Flask:
    """An app with ``TASKMILL_AUTH=none`` (every request is a local admin of tenant ``default``)."""
    return make_app()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def runtime(app: Flask) -> Runtime:
    return app.extensions["taskmill"]


def count_tasks(runtime: Runtime) -> int:
    """How many tasks the database holds (every tenant)."""
    return runtime.storage.list_tasks({}, offset=0, limit=1)[1]


def run_to_end(
    runtime: Runtime, task_id: str | uuid.UUID, kind: str = "failed", queue: str = "default"
) -> Task:
    """Drive a queued task through the lifecycle as a worker would: claim it, then record ``kind``.

    ``failed`` is recorded without retry, so the task lands in the dead-letter queue.
    """
    wanted = uuid.UUID(str(task_id))
    claimed = runtime.lifecycle.claim([queue], 1000, "unit-worker")
    others = [t for t in claimed if t.id != wanted]
    mine = [t for t in claimed if t.id == wanted]
    assert mine, f"task {task_id} was not claimable"
    if others:  # hand back what we did not mean to take
        runtime.lifecycle.finish([(t, Outcome(t.id, "requeue")) for t in others], "unit-worker")
    task = mine[0]
    if kind == "running":
        return task
    if kind == "failed":
        outcome = Outcome(task.id, "failed", error={"type": "RuntimeError", "message": "boom"}, no_retry=True)
    else:
        outcome = Outcome(task.id, kind, result={"ok": True} if kind == "completed" else None)
    (written,) = runtime.lifecycle.finish([(task, outcome)], "unit-worker")
    return written


@pytest.fixture
def tasks_in_db() -> Callable[[Runtime], int]:
    return count_tasks


@pytest.fixture
def drive() -> Callable[..., Task]:
    return run_to_end
