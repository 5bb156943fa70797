"""The access matrix, generated from the app's URL map: every route × role × (own, other tenant).

Each route of the installed distribution must have an entry in :data:`CALLS` (how to call it) and
a declaration (``@requires`` or ``@public``); a new route without both fails here. For every
protected route: no credential, a bad key, an expired JWT and a revoked key are 401 with
``WWW-Authenticate: Bearer``; a role below the declared one is 403; another tenant's object is 404
(an admin sees every tenant).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from taskmill.api.auth import PUBLIC
from taskmill.api.auth import iter_route_roles
from taskmill.models import Role
from taskmill_auth import create_api_key
from tests.unit.conftest import Secured
from tests.unit.conftest import build_secured_app
from tests.unit.conftest import run_to_end


@dataclass
class Call:
    """How to call a route for a caller in ``tenant``: the path, and the JSON body."""

    path: str
    json: Any = None
    owner: str | None = None
    """The tenant owning the object in the path (None: the route names no tenant's object)."""


def _queued(s: Secured, tenant: str) -> Call:
    task = s.submit(tenant)
    return Call(f"/api/v1/tasks/{task.id}", owner=tenant)


def _cancelled(s: Secured, tenant: str) -> Call:
    task = s.submit(tenant)
    s.runtime.lifecycle.cancel(task.id, None)
    return Call(f"/api/v1/tasks/{task.id}/retry", owner=tenant)


def _failed(s: Secured, tenant: str) -> Call:
    queue = f"q{uuid.uuid4().hex[:8]}"
    task = s.submit(tenant, queue=queue)
    run_to_end(s.runtime, task.id, "failed", queue=queue)
    return Call("/api/v1/dead-letters/requeue", {"ids": [str(task.id)]}, owner=tenant)


def _key(s: Secured, tenant: str) -> Call:
    created = create_api_key(s.runtime, tenant, Role.VIEWER)
    return Call(f"/api/v1/api-keys/{created['id']}", owner=tenant)


def _schedule(s: Secured, tenant: str, suffix: str = "") -> Call:
    from taskmill.schedules import ScheduleService

    name = f"m{uuid.uuid4().hex[:10]}"
    ScheduleService(s.runtime).create({"name": name, "interval": 60, "type": "t.echo"}, tenant)
    return Call(f"/api/v1/schedules/{name}{suffix}", owner=tenant)


def _workflow(s: Secured, tenant: str) -> Call:
    from taskmill.workflows import WorkflowService

    wf = WorkflowService(s.runtime).submit({"tasks": [{"key": "a", "type": "t.echo"}]}, tenant)
    return Call(f"/api/v1/workflows/{wf.id}", owner=tenant)


def _deliveries(s: Secured, tenant: str) -> Call:
    task = s.submit(tenant)
    return Call(f"/api/v1/tasks/{task.id}/deliveries", owner=tenant)


CALLS: dict[tuple[str, str], Callable[[Secured, str], Call]] = {
    ("/api/v1/schedules", "GET"): lambda s, t: Call("/api/v1/schedules"),
    ("/api/v1/schedules", "POST"): lambda s, t: Call(
        "/api/v1/schedules", {"name": f"m{uuid.uuid4().hex[:10]}", "interval": 60, "type": "t.echo"}
    ),
    ("/api/v1/schedules/<string:name>", "GET"): _schedule,
    ("/api/v1/schedules/<string:name>", "DELETE"): _schedule,
    ("/api/v1/schedules/<string:name>/pause", "POST"): lambda s, t: _schedule(s, t, "/pause"),
    ("/api/v1/schedules/<string:name>/resume", "POST"): lambda s, t: _schedule(s, t, "/resume"),
    ("/api/v1/workflows", "GET"): lambda s, t: Call("/api/v1/workflows"),
    ("/api/v1/workflows", "POST"): lambda s, t: Call(
        "/api/v1/workflows", {"tasks": [{"key": "a", "type": "t.echo"}]}
    ),
    ("/api/v1/workflows/<taskid:workflow_id>", "GET"): _workflow,
    ("/api/v1/workflows/<taskid:workflow_id>", "DELETE"): _workflow,
    ("/api/v1/events", "GET"): lambda s, t: Call("/api/v1/events"),
    ("/api/v1/tasks/<taskid:task_id>/deliveries", "GET"): _deliveries,
    ("/api/v1/tasks", "GET"): lambda s, t: Call("/api/v1/tasks"),
    ("/api/v1/tasks", "POST"): lambda s, t: Call("/api/v1/tasks", {"type": "t.echo"}),
    ("/api/v1/tasks/batch", "POST"): lambda s, t: Call(
        "/api/v1/tasks/batch", {"tasks": [{"type": "t.echo"}]}
    ),
    ("/api/v1/tasks/<taskid:task_id>", "GET"): _queued,
    ("/api/v1/tasks/<taskid:task_id>", "DELETE"): _queued,
    ("/api/v1/tasks/<taskid:task_id>/retry", "POST"): _cancelled,
    ("/api/v1/queues", "GET"): lambda s, t: Call("/api/v1/queues"),
    ("/api/v1/queues/<name>/pause", "POST"): lambda s, t: Call("/api/v1/queues/matrix/pause"),
    ("/api/v1/queues/<name>/resume", "POST"): lambda s, t: Call("/api/v1/queues/matrix/resume"),
    ("/api/v1/dead-letters", "GET"): lambda s, t: Call("/api/v1/dead-letters"),
    ("/api/v1/dead-letters/requeue", "POST"): _failed,
    ("/api/v1/workers", "GET"): lambda s, t: Call("/api/v1/workers"),
    ("/api/v1/handlers", "GET"): lambda s, t: Call("/api/v1/handlers"),
    ("/api/v1/api-keys", "GET"): lambda s, t: Call("/api/v1/api-keys"),
    ("/api/v1/api-keys", "POST"): lambda s, t: Call("/api/v1/api-keys", {"tenant": t, "role": "viewer"}),
    ("/api/v1/api-keys/<key_id>", "DELETE"): _key,
    ("/api/v1/audit", "GET"): lambda s, t: Call("/api/v1/audit"),
    # public
    ("/api/v1/openapi.json", "GET"): lambda s, t: Call("/api/v1/openapi.json"),
    ("/api/v1/docs", "GET"): lambda s, t: Call("/api/v1/docs"),
    ("/api/v1/docs/taskmill-docs.js", "GET"): lambda s, t: Call("/api/v1/docs/taskmill-docs.js"),
    ("/api/v1/docs/swagger-ui/<path:filename>", "GET"): lambda s, t: Call(
        "/api/v1/docs/swagger-ui/swagger-ui.css"
    ),
    ("/health", "GET"): lambda s, t: Call("/health"),
    ("/health/live", "GET"): lambda s, t: Call("/health/live"),
    ("/metrics", "GET"): lambda s, t: Call("/metrics"),
}
"""How to call each route. A route missing here fails :func:`test_every_route_is_in_the_matrix`."""

BULK_ROUTES = {("/api/v1/dead-letters/requeue", "POST")}
"""Routes acting on a set: another tenant's ids are silently left alone (200, nothing done)."""


@pytest.fixture(scope="module")
def matrix(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """One auth-on app of the whole installed distribution, shared by the matrix tests."""
    app = build_secured_app(tmp_path_factory.mktemp("matrix") / "m.db", load_plugins=["taskmill"])
    app.config["TASKMILL_EVENTS_MAX_AGE"] = 0.1  # the events stream ends, so a call returns
    secured = Secured(app)
    yield secured
    secured.runtime.close()


def _routes(s: Secured) -> list[tuple[str, str, Role | str | None]]:
    """Every route but the dashboard's (browser pages and forms, whose roles are held equal to the
    API's in tests/unit/test_web_roles.py)."""
    return [
        (r.rule, r.method, r.role)
        for r in iter_route_roles(s.app)
        if r.rule != "/" and not r.rule.startswith("/dashboard")
    ]


def _protected(s: Secured) -> list[tuple[str, str, Role]]:
    return [(rule, m, role) for rule, m, role in _routes(s) if isinstance(role, Role)]


def _send(s: Secured, method: str, call: Call, headers: dict[str, str] | None = None) -> Any:
    r = s.client.open(call.path, method=method, json=call.json, headers=headers or {})
    r.get_data()  # buffer it, then close the file of a static asset
    r.close()
    return r


def test_every_route_is_in_the_matrix(matrix):
    routes = _routes(matrix)
    missing = [(rule, m) for rule, m, _ in routes if (rule, m) not in CALLS]
    undeclared = [(rule, m) for rule, m, role in routes if role is None]
    assert missing == [], "add these routes to CALLS (and declare their role)"
    assert undeclared == []
    assert {(r, m) for r, m, _ in routes} >= set(CALLS) - {("/metrics", "GET")}


def test_public_routes_answer_without_credential(matrix):
    for rule, method, role in _routes(matrix):
        if role == PUBLIC:
            r = _send(matrix, method, CALLS[(rule, method)](matrix, "acme"))
            assert r.status_code == 200, (rule, r.status_code)


@pytest.mark.parametrize("role", list(Role))
def test_matrix(matrix, role):
    """Every protected route for one role, on an object of its own tenant and of another."""
    caller_tenant = "root" if role is Role.ADMIN else "acme"
    failures = []
    for rule, method, declared in _protected(matrix):
        for case, object_tenant in (("own", caller_tenant), ("other", "other")):
            call = CALLS[(rule, method)](matrix, object_tenant)
            r = _send(matrix, method, call, matrix.headers(role.value))
            if not role.includes(declared):
                expected: Any = {403}
            elif (
                call.owner is not None
                and case == "other"
                and role is not Role.ADMIN
                and (rule, method) not in BULK_ROUTES
            ):
                expected = {404}
            else:
                expected = {200, 201, 202, 204}
            if r.status_code not in expected:
                failures.append((role.value, case, method, rule, r.status_code, r.get_json()))
                continue
            if r.status_code >= 400:
                assert r.get_json()["code"] == r.status_code
                continue
            body = r.get_json(silent=True)
            if role is not Role.ADMIN and isinstance(body, list):
                leaked = [i for i in body if isinstance(i, dict) and i.get("tenant") not in (None, "acme")]
                if leaked:
                    failures.append((role.value, case, method, rule, "sees another tenant", leaked[:1]))
            if (rule, method) in BULK_ROUTES and case == "other" and role is not Role.ADMIN:
                if body["requeued"] != 0:
                    failures.append((role.value, case, method, rule, "acted on another tenant", body))
    assert failures == []


def _assert_401(r: Any, what: str) -> None:
    assert r.status_code == 401, (what, r.status_code, r.get_json())
    assert r.headers["WWW-Authenticate"].startswith("Bearer"), what
    assert r.get_json()["code"] == 401


def test_every_protected_route_refuses_missing_and_bad_credentials(matrix):
    expired = matrix.jwt({"sub": "svc", "tenant": "acme", "role": "admin", "exp": int(time.time()) - 3600})
    wrong_secret = matrix.jwt({"sub": "svc", "tenant": "acme", "role": "admin"}, secret="x" * 40)
    unknown_key = "tm_0123456789ab_" + "A" * 43
    revoked = create_api_key(matrix.runtime, "root", Role.ADMIN)
    from taskmill_auth import revoke_api_key

    assert revoke_api_key(matrix.runtime, revoked["id"])
    credentials = {
        "none": {},
        "garbage bearer": {"Authorization": "Bearer not-a-key"},
        "unknown key": {"Authorization": f"Bearer {unknown_key}"},
        "unknown X-API-Key": {"X-API-Key": unknown_key},
        "revoked key": {"Authorization": f"Bearer {revoked['key']}"},
        "expired JWT": {"Authorization": f"Bearer {expired}"},
        "JWT with a wrong signature": {"Authorization": f"Bearer {wrong_secret}"},
        "basic auth": {"Authorization": "Basic YWRtaW46YWRtaW4="},
    }
    for rule, method, _ in _protected(matrix):
        call = CALLS[(rule, method)](matrix, "root")
        for what, headers in credentials.items():
            _assert_401(_send(matrix, method, call, headers), f"{what}: {method} {rule}")


def test_a_jwt_principal_gets_the_same_matrix(matrix):
    """Spot check: JWT principals go through the same role and tenant checks as keys."""
    viewer = {"Authorization": f"Bearer {matrix.jwt({'sub': 'svc', 'tenant': 'acme', 'role': 'viewer'})}"}
    mine = _queued(matrix, "acme")
    theirs = _queued(matrix, "other")
    assert matrix.client.get(mine.path, headers=viewer).status_code == 200
    assert matrix.client.get(theirs.path, headers=viewer).status_code == 404
    assert matrix.client.delete(mine.path, headers=viewer).status_code == 403


DECLARED = {
    **{(rule, m): Role.OPERATOR for rule, m in CALLS if rule.startswith("/api/v1/schedules")},
    ("/api/v1/workflows", "GET"): Role.VIEWER,
    ("/api/v1/workflows", "POST"): Role.SUBMITTER,
    ("/api/v1/workflows/<taskid:workflow_id>", "GET"): Role.VIEWER,
    ("/api/v1/workflows/<taskid:workflow_id>", "DELETE"): Role.SUBMITTER,
    ("/api/v1/events", "GET"): Role.VIEWER,
    ("/api/v1/tasks/<taskid:task_id>/deliveries", "GET"): Role.VIEWER,
}
"""The roles API.md gives the schedule, workflow, events and deliveries routes."""


def test_schedule_workflow_events_and_deliveries_routes_declare_api_md_s_roles(matrix):
    declared = {(rule, m): role for rule, m, role in _routes(matrix)}
    assert {k: declared.get(k) for k in DECLARED} == DECLARED
