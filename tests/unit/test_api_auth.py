"""The auth seam: credentials (401), roles (403), tenant scoping (404), public routes, declarations."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from flask import Blueprint
from flask import Flask
from flask.testing import FlaskClient

from taskmill import hookimpl
from taskmill.api.auth import PUBLIC
from taskmill.api.auth import iter_route_roles
from taskmill.api.auth import requires
from taskmill.api.auth import undeclared_routes
from taskmill.errors import AuthError
from taskmill.interfaces import AuthBackend
from taskmill.models import Principal
from taskmill.models import Role

TOKENS = {
    "viewer-acme": Principal(subject="v", tenant="acme", role=Role.VIEWER),
    "submitter-acme": Principal(subject="s", tenant="acme", role=Role.SUBMITTER),
    "operator-acme": Principal(subject="o", tenant="acme", role=Role.OPERATOR),
    "viewer-other": Principal(subject="v2", tenant="other", role=Role.VIEWER),
    "submitter-other": Principal(subject="s2", tenant="other", role=Role.SUBMITTER),
    "operator-other": Principal(subject="o2", tenant="other", role=Role.OPERATOR),
    "admin-root": Principal(subject="a", tenant="root", role=Role.ADMIN),
}
"""Bearer tokens the test auth backend accepts."""


class TokenBackend(AuthBackend):
    """A test credential checker: ``Authorization: Bearer <one of TOKENS>``."""

    name = "test-tokens"
    instances = 0

    def __init__(self, settings: Any, runtime: Any) -> None:
        super().__init__(settings, runtime)
        type(self).instances += 1

    def authenticate(self, request: Any) -> Principal | None:
        header = request.headers.get("Authorization", "")
        if not header.startswith("Bearer "):
            return None
        token = header[len("Bearer ") :]
        if token in TOKENS:
            return TOKENS[token]
        raise AuthError("unknown token")


class TokenAuth:
    """A plugin declaring :class:`TokenBackend`."""

    @hookimpl
    def taskmill_auth_backends(self) -> list[type]:
        return [TokenBackend]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def auth_app(make_app: Any) -> Flask:
    """An app with auth on and :class:`TokenBackend` as its only credential checker."""
    return make_app(auth="apikey", plugins=[TokenAuth()])


@pytest.fixture
def auth_client(auth_app: Flask) -> FlaskClient:
    return auth_app.test_client()


# ---- 401 ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("get", "/api/v1/tasks"),
        ("post", "/api/v1/tasks"),
        ("get", "/api/v1/tasks/not-a-uuid"),
        ("get", "/api/v1/queues"),
        ("post", "/api/v1/queues/default/pause"),
        ("get", "/api/v1/dead-letters"),
        ("get", "/api/v1/workers"),
        ("get", "/api/v1/handlers"),
    ],
)
def test_no_credential_is_401_with_www_authenticate(auth_client, method, path):
    r = getattr(auth_client, method)(path, json={"type": "t.echo"} if method == "post" else None)
    assert r.status_code == 401
    assert r.headers["WWW-Authenticate"].startswith("Bearer")
    body = r.get_json()
    assert body["code"] == 401 and body["status"] == "Unauthorized" and body["message"]


def test_invalid_credential_is_401(auth_client):
    r = auth_client.get("/api/v1/tasks", headers=bearer("wrong"))
    assert r.status_code == 401
    assert r.headers["WWW-Authenticate"].startswith("Bearer")


def test_credential_check_comes_before_validation(auth_client, tasks_in_db, auth_app):
    r = auth_client.post("/api/v1/tasks", data="{not json", content_type="application/json")
    assert r.status_code == 401
    assert tasks_in_db(auth_app.extensions["taskmill"]) == 0


@pytest.mark.parametrize(
    "path", ["/api/v1/openapi.json", "/api/v1/docs", "/health", "/health/live", "/metrics"]
)
def test_public_routes_need_no_credential(auth_client, path):
    assert auth_client.get(path).status_code == 200


# ---- 403 ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("token", "method", "path", "allowed"),
    [
        ("viewer-acme", "get", "/api/v1/tasks", True),
        ("viewer-acme", "get", "/api/v1/queues", True),
        ("viewer-acme", "get", "/api/v1/workers", True),
        ("viewer-acme", "get", "/api/v1/handlers", True),
        ("viewer-acme", "post", "/api/v1/tasks", False),
        ("viewer-acme", "post", "/api/v1/tasks/batch", False),
        ("viewer-acme", "get", "/api/v1/dead-letters", False),
        ("submitter-acme", "post", "/api/v1/tasks", True),
        ("submitter-acme", "get", "/api/v1/dead-letters", False),
        ("submitter-acme", "post", "/api/v1/dead-letters/requeue", False),
        ("operator-acme", "get", "/api/v1/dead-letters", True),
        ("operator-acme", "post", "/api/v1/queues/default/pause", False),
        ("operator-acme", "post", "/api/v1/queues/default/resume", False),
        ("admin-root", "post", "/api/v1/queues/default/pause", True),
    ],
)
def test_roles(auth_client, token, method, path, allowed):
    body = {"type": "t.echo"}
    if path.endswith("batch"):
        body = {"tasks": [body]}
    elif path.endswith("requeue"):
        body = {"ids": []}
    r = getattr(auth_client, method)(path, headers=bearer(token), json=body if method == "post" else None)
    if allowed:
        assert r.status_code in (200, 201), r.get_json()
    else:
        assert r.status_code == 403
        assert r.get_json()["code"] == 403


def test_role_check_comes_before_validation_and_lookup(auth_client, auth_app, tasks_in_db):
    r = auth_client.post("/api/v1/tasks", headers=bearer("viewer-acme"), json={"bogus": 1})
    assert r.status_code == 403
    r = auth_client.delete("/api/v1/tasks/not-a-uuid", headers=bearer("viewer-acme"))
    assert r.status_code == 403
    assert tasks_in_db(auth_app.extensions["taskmill"]) == 0


# ---- tenants ---------------------------------------------------------------------------------------


def test_tasks_are_scoped_to_the_tenant(auth_client):
    task = auth_client.post(
        "/api/v1/tasks", headers=bearer("submitter-acme"), json={"type": "t.echo"}
    ).get_json()
    assert task["tenant"] == "acme"
    url = f"/api/v1/tasks/{task['id']}"
    assert auth_client.get(url, headers=bearer("viewer-acme")).status_code == 200
    assert auth_client.get(url, headers=bearer("viewer-other")).status_code == 404
    assert auth_client.delete(url, headers=bearer("submitter-other")).status_code == 404
    assert auth_client.post(f"{url}/retry", headers=bearer("submitter-other")).status_code == 404
    assert auth_client.get(url, headers=bearer("admin-root")).status_code == 200
    listed = auth_client.get("/api/v1/tasks", headers=bearer("viewer-other")).get_json()
    assert listed == []
    listed = auth_client.get("/api/v1/tasks", headers=bearer("viewer-acme")).get_json()
    assert [t["id"] for t in listed] == [task["id"]]
    assert len(auth_client.get("/api/v1/tasks", headers=bearer("admin-root")).get_json()) == 1
    # the other tenant's cancel did nothing
    assert auth_client.get(url, headers=bearer("viewer-acme")).get_json()["status"] == "queued"


def test_an_admin_submits_into_their_own_tenant(auth_client):
    task = auth_client.post("/api/v1/tasks", headers=bearer("admin-root"), json={"type": "t.echo"}).get_json()
    assert task["tenant"] == "root"


def test_idempotency_keys_are_per_tenant(auth_client):
    body = {"type": "t.echo", "idempotency_key": "shared"}
    a = auth_client.post("/api/v1/tasks", headers=bearer("submitter-acme"), json=body)
    b = auth_client.post(
        "/api/v1/tasks", headers=bearer("submitter-other"), json={**body, "payload": {"x": 1}}
    )
    assert a.status_code == 201 and b.status_code == 201
    assert a.get_json()["id"] != b.get_json()["id"]


def test_dependencies_must_be_in_the_tenant(auth_client):
    other = auth_client.post("/api/v1/tasks", headers=bearer("submitter-other"), json={"type": "t.echo"})
    r = auth_client.post(
        "/api/v1/tasks",
        headers=bearer("submitter-acme"),
        json={"type": "t.echo", "depends_on": [other.get_json()["id"]]},
    )
    assert r.status_code == 422


def test_queue_depth_is_per_tenant(auth_client):
    auth_client.post("/api/v1/tasks", headers=bearer("submitter-acme"), json={"type": "t.echo"})
    auth_client.post("/api/v1/tasks", headers=bearer("submitter-other"), json={"type": "t.echo"})
    auth_client.post("/api/v1/tasks", headers=bearer("submitter-other"), json={"type": "t.echo"})
    acme = auth_client.get("/api/v1/queues", headers=bearer("viewer-acme")).get_json()
    admin = auth_client.get("/api/v1/queues", headers=bearer("admin-root")).get_json()
    assert {q["name"]: q["depth"] for q in acme} == {"default": {"queued": 1}}
    assert {q["name"]: q["depth"] for q in admin} == {"default": {"queued": 3}}


def test_dead_letters_are_per_tenant(auth_client, auth_app, drive):
    runtime = auth_app.extensions["taskmill"]
    a = auth_client.post(
        "/api/v1/tasks", headers=bearer("submitter-acme"), json={"type": "t.echo"}
    ).get_json()
    o = auth_client.post(
        "/api/v1/tasks", headers=bearer("submitter-other"), json={"type": "t.echo"}
    ).get_json()
    drive(runtime, a["id"], "failed")
    drive(runtime, o["id"], "failed")
    listed = auth_client.get("/api/v1/dead-letters", headers=bearer("operator-acme")).get_json()
    assert [t["id"] for t in listed] == [a["id"]]
    r = auth_client.post(
        "/api/v1/dead-letters/requeue", headers=bearer("operator-acme"), json={"ids": [o["id"]]}
    )
    assert r.get_json() == {"requeued": 0, "ids": []}
    r = auth_client.post("/api/v1/dead-letters/requeue", headers=bearer("operator-acme"), json={"filter": {}})
    assert r.get_json() == {"requeued": 1, "ids": [a["id"]]}
    assert runtime.storage.tasks.get(uuid.UUID(o["id"])).status.value == "failed"


# ---- the backend loop ------------------------------------------------------------------------------


class RejectEverything(AuthBackend):
    """Understands every Bearer credential and rejects it (asked first: higher priority)."""

    priority = 10

    def authenticate(self, request: Any) -> Principal | None:
        if request.headers.get("Authorization"):
            raise AuthError("not one of mine")
        return None


class RejectingAuth:
    @hookimpl
    def taskmill_auth_backends(self) -> list[type]:
        return [RejectEverything]


def test_an_auth_error_is_remembered_and_the_next_backend_asked(make_app):
    client = make_app(auth="apikey", plugins=[RejectingAuth(), TokenAuth()]).test_client()
    assert client.get("/api/v1/tasks", headers=bearer("viewer-acme")).status_code == 200
    r = client.get("/api/v1/tasks", headers=bearer("nobody"))
    assert r.status_code == 401
    assert r.headers["WWW-Authenticate"].startswith("Bearer")


def test_backends_are_instantiated_once_per_app(make_app):
    TokenBackend.instances = 0
    client = make_app(auth="apikey", plugins=[TokenAuth()]).test_client()
    for _ in range(3):
        client.get("/api/v1/tasks", headers=bearer("viewer-acme"))
    assert TokenBackend.instances == 1


def test_no_backend_means_every_api_request_is_401(make_app):
    client = make_app(auth="apikey").test_client()
    assert client.get("/api/v1/tasks", headers=bearer("viewer-acme")).status_code == 401
    assert client.get("/health/live").status_code == 200


def test_auth_none_is_a_local_admin(client):
    assert client.post("/api/v1/queues/default/pause").status_code == 200
    assert client.post("/api/v1/tasks", json={"type": "t.echo"}).get_json()["tenant"] == "default"


# ---- declarations ------------------------------------------------------------------------------------


def test_every_route_declares_a_role_or_public(app):
    routes = list(iter_route_roles(app))
    assert routes
    assert undeclared_routes(app) == []
    declared = {(r.rule, r.method): r.role for r in routes}
    assert declared[("/api/v1/tasks", "GET")] is Role.VIEWER
    assert declared[("/api/v1/tasks", "POST")] is Role.SUBMITTER
    assert declared[("/api/v1/tasks/batch", "POST")] is Role.SUBMITTER
    assert declared[("/api/v1/tasks/<taskid:task_id>", "DELETE")] is Role.SUBMITTER
    assert declared[("/api/v1/tasks/<taskid:task_id>/retry", "POST")] is Role.SUBMITTER
    assert declared[("/api/v1/dead-letters", "GET")] is Role.OPERATOR
    assert declared[("/api/v1/dead-letters/requeue", "POST")] is Role.OPERATOR
    assert declared[("/api/v1/queues/<name>/pause", "POST")] is Role.ADMIN
    assert declared[("/api/v1/queues/<name>/resume", "POST")] is Role.ADMIN
    for public_rule in ("/api/v1/openapi.json", "/api/v1/docs", "/health", "/health/live", "/metrics"):
        assert declared[(public_rule, "GET")] == PUBLIC


def test_every_route_of_the_installed_distribution_declares_a_role(make_app):
    """Everything ``taskmill`` ships (its plugins' blueprints included) declares a role or public."""
    app = make_app(load_plugins=["taskmill"])
    assert undeclared_routes(app) == []


undeclared = Blueprint("undeclared", __name__)


@undeclared.get("/api/v1/undeclared")
def undeclared_view() -> dict[str, str]:
    return {"ok": "yes"}


declared = Blueprint("declared", __name__)


@declared.get("/api/v1/extra")
@requires(Role.VIEWER)
def declared_view() -> dict[str, str]:
    return {"ok": "yes"}


class ExtraRoutes:
    @hookimpl
    def taskmill_app(self, app: Any) -> None:
        app.register_blueprint(undeclared)
        app.register_blueprint(declared)


def test_a_route_without_declaration_is_found_and_fails_closed(make_app):
    app = make_app(auth="apikey", plugins=[TokenAuth(), ExtraRoutes()])
    assert [(r.rule, r.method) for r in undeclared_routes(app)] == [("/api/v1/undeclared", "GET")]
    client = app.test_client()
    assert client.get("/api/v1/undeclared").status_code == 401
    assert client.get("/api/v1/undeclared", headers=bearer("operator-acme")).status_code == 403
    assert client.get("/api/v1/undeclared", headers=bearer("admin-root")).status_code == 200
    # a plugin route that declares a role is guarded by the same seam, without touching core
    assert client.get("/api/v1/extra").status_code == 401
    assert client.get("/api/v1/extra", headers=bearer("viewer-acme")).status_code == 200


def test_tokens_cover_every_role():
    assert {p.role for p in TOKENS.values()} == set(Role)
