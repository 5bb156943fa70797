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
from taskmill.models import TaskQuery
from taskmill.runtime import Runtime


class StrictPayload(Schema):
    n = fields.Integer(required=True, strict=True, validate=validate.Range(min=0, max=10))


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
    return runtime.storage.tasks.list(TaskQuery(limit=1))[1]


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


# ---- auth on: the real taskmill_auth plugin (API keys and JWT) ---------------------------------------

JWT_SECRET = "unit-test-jwt-secret-of-at-least-32-bytes!"
"""The HS256 secret of the auth-on apps."""

AUTH_TENANTS = ("acme", "other")


class Secured:
    """An auth-on app with a key per role and tenant (``keys[(role, tenant)]``; admins in ``root``)."""

    def __init__(self, app: Flask) -> None:
        from taskmill.models import Role
        from taskmill_auth import create_api_key

        self.app = app
        self.runtime: Runtime = app.extensions["taskmill"]
        self.client: FlaskClient = app.test_client()
        self.keys: dict[tuple[str, str], str] = {}
        self.key_ids: dict[tuple[str, str], str] = {}
        for role in Role:
            for tenant in ("root",) if role is Role.ADMIN else AUTH_TENANTS:
                created = create_api_key(self.runtime, tenant, role, f"{role.value}@{tenant}")
                self.keys[(role.value, tenant)] = created["key"]
                self.key_ids[(role.value, tenant)] = created["id"]

    def headers(self, role: str, tenant: str = "acme") -> dict[str, str]:
        """``Authorization: Bearer <key>`` of the key with that role (admins: tenant ``root``)."""
        tenant = "root" if role == "admin" else tenant
        return {"Authorization": f"Bearer {self.keys[(role, tenant)]}"}

    def jwt(self, claims: dict[str, Any], secret: str = JWT_SECRET, algorithm: str = "HS256") -> str:
        """An HS256 JWT with these claims (``exp`` one minute from now unless given)."""
        import time

        import jwt

        return jwt.encode({"exp": int(time.time()) + 60, **claims}, secret, algorithm=algorithm)

    def submit(self, tenant: str, **body: Any) -> Task:
        """A queued task of ``tenant`` made through the lifecycle (no request, no audit entry)."""
        lifecycle = self.runtime.lifecycle
        ((task, _),) = lifecycle.submit([lifecycle.build({"type": "t.echo", **body}, tenant)])
        return task


def build_secured_app(path: Any, *, plugins: list[Any] | None = None, **overrides: Any) -> Flask:
    """An app with auth on and the ``taskmill_auth`` plugin (plus ``sql`` and the test handlers)."""
    settings = {
        "database_url": f"sqlite:///{path}",
        "auth": "apikey",
        "load_plugins": ["sql", "auth"],
        "secret_key": "unit-test-secret",
        "jwt_secret": JWT_SECRET,
        **overrides,
    }
    app = create_app(settings, plugins=[UnitHandlers(), *(plugins or [])])
    app.testing = True
    return app


@pytest.fixture
def make_secured(tmp_path: Any) -> Iterator[Callable[..., Secured]]:
    """Build auth-on apps with a key per role: ``make_secured(rate_limit="2/second")``."""
    counter = itertools.count()
    made: list[Secured] = []

    def make(**overrides: Any) -> Secured:
        secured = Secured(build_secured_app(tmp_path / f"s{next(counter)}.db", **overrides))
        made.append(secured)
        return secured

    yield make
    for secured in made:
        secured.runtime.close()


@pytest.fixture
def secured(make_secured: Callable[..., Secured]) -> Secured:
    """An auth-on app (API keys and HS256 JWT) with a key per role and tenant."""
    return make_secured()
