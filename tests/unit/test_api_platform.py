"""Health, metrics, the OpenAPI document, the docs page, and error responses (404/405/500/503)."""

from __future__ import annotations

import logging
import re
import socket
import uuid
from typing import Any

import pytest
from flask import Blueprint
from openapi_spec_validator import validate as validate_openapi

from taskmill import handler
from taskmill import hookimpl
from taskmill.api.auth import requires
from taskmill.app import create_app
from taskmill.config import load_settings
from taskmill.models import Role
from taskmill.runtime import build_runtime

# ---- health ----------------------------------------------------------------------------------------


def test_health_ok(client):
    r = client.get("/health")
    assert r.status_code == 200
    assert r.get_json() == {"status": "ok", "checks": {"storage": "ok", "broker": "ok"}}


def test_liveness(client):
    r = client.get("/health/live")
    assert r.status_code == 200
    assert r.get_json() == {"status": "ok"}


# ---- the database unreachable: 503 with Retry-After, nothing else --------------------------------------


def _closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@handler("down.echo")
def down_echo(ctx: Any, payload: dict[str, Any]) -> dict[str, Any]:
    return payload


class DownHandlers:
    @hookimpl
    def taskmill_handlers(self) -> list[Any]:
        return [down_echo]


@pytest.fixture
def down_client() -> Any:
    """An app whose PostgreSQL database cannot be reached (nothing listens on the port)."""
    settings = load_settings(
        overrides={
            "database_url": f"postgresql+psycopg2://postgres@127.0.0.1:{_closed_port()}/test",
            "auth": "none",
            "load_plugins": ["sql"],
        }
    )
    runtime = build_runtime(settings, plugins=[DownHandlers()])  # no upgrade: it would need the database
    app = create_app(runtime=runtime)
    app.testing = True
    yield app.test_client()
    runtime.close()


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("get", "/api/v1/tasks", None),
        ("get", f"/api/v1/tasks/{uuid.uuid4()}", None),
        ("delete", f"/api/v1/tasks/{uuid.uuid4()}", None),
        ("post", "/api/v1/tasks", {"type": "down.echo"}),
        ("post", "/api/v1/tasks/batch", {"tasks": [{"type": "down.echo"}]}),
        ("get", "/api/v1/queues", None),
        ("post", "/api/v1/queues/default/pause", None),
        ("get", "/api/v1/dead-letters", None),
        ("post", "/api/v1/dead-letters/requeue", {"filter": {}}),
        ("get", "/api/v1/workers", None),
    ],
)
def test_unreachable_database_is_503_with_retry_after(down_client, method, path, body):
    r = getattr(down_client, method)(path, json=body)
    assert r.status_code == 503, r.get_json()
    assert int(r.headers["Retry-After"]) > 0
    payload = r.get_json()
    assert set(payload) == {"code", "status", "message", "errors"}
    assert payload["code"] == 503
    assert "Traceback" not in r.get_data(as_text=True)
    assert "psycopg2" not in r.get_data(as_text=True)


def test_health_reports_an_unreachable_database(down_client):
    r = down_client.get("/health")
    assert r.status_code == 503
    assert r.headers["Retry-After"]
    body = r.get_json()
    assert body["status"] == "unavailable"
    assert body["checks"]["storage"] != "ok" and body["checks"]["broker"] != "ok"
    assert down_client.get("/health/live").status_code == 200


# ---- unexpected errors: a logged 500 without traceback ------------------------------------------------

boom = Blueprint("boom", __name__)


@boom.get("/api/v1/boom")
@requires(Role.VIEWER)
def boom_view() -> Any:
    raise RuntimeError("secret internal detail")


class BoomRoutes:
    @hookimpl
    def taskmill_app(self, app: Any) -> None:
        app.register_blueprint(boom)


def test_an_unexpected_exception_is_a_json_500_without_traceback(make_app, caplog):
    app = make_app(plugins=[BoomRoutes()], testing=False)
    with caplog.at_level(logging.ERROR):
        r = app.test_client().get("/api/v1/boom")
    assert r.status_code == 500
    body = r.get_json()
    assert body["code"] == 500 and set(body) == {"code", "status", "message", "errors"}
    text = r.get_data(as_text=True)
    assert "secret internal detail" not in text and "Traceback" not in text
    assert any("secret internal detail" in (rec.exc_text or "") or rec.exc_info for rec in caplog.records)


@pytest.mark.parametrize(("method", "path", "status"), [("get", "/api/v1/nope", 404), ("get", "/nope", 404)])
def test_unknown_routes_are_json(client, method, path, status):
    r = getattr(client, method)(path)
    assert r.status_code == status
    assert r.is_json and r.get_json()["code"] == status


def test_wrong_method_is_json_405(client):
    r = client.put("/api/v1/tasks", json={})
    assert r.status_code == 405
    assert r.get_json()["code"] == 405
    r = client.post("/api/v1/queues")
    assert r.status_code == 405


# ---- metrics -----------------------------------------------------------------------------------------


def test_metrics(client):
    client.post("/api/v1/tasks", json={"type": "t.echo", "queue": "metrics-q"})
    client.get("/api/v1/tasks")
    r = client.get("/metrics")
    assert r.status_code == 200
    assert r.content_type.startswith("text/plain")
    text = r.get_data(as_text=True)
    assert 'taskmill_tasks_submitted_total{queue="metrics-q",type="t.echo"}' in text
    assert 'taskmill_queue_depth{queue="metrics-q",status="queued"} 1.0' in text
    assert "flask_http_request_total" in text
    assert "flask_http_request_duration_seconds" in text


def test_http_metrics_of_a_second_app_in_the_same_process(make_app):
    make_app()
    client = make_app().test_client()
    client.get("/api/v1/tasks")
    assert 'endpoint="tasks.Tasks"' in client.get("/metrics").get_data(as_text=True)


def test_metrics_token(make_app):
    client = make_app(metrics_token="s3cret").test_client()
    r = client.get("/metrics")
    assert r.status_code == 401
    assert r.headers["WWW-Authenticate"].startswith("Bearer")
    assert client.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.get("/metrics", headers={"Authorization": "s3cret"}).status_code == 401
    assert client.get("/metrics", headers={"Authorization": "Bearer s3cret"}).status_code == 200


# ---- OpenAPI and the docs page ---------------------------------------------------------------------------


def test_openapi_document_is_valid_and_complete(client, app):
    r = client.get("/api/v1/openapi.json")
    assert r.status_code == 200
    doc = r.get_json()
    validate_openapi(doc)
    assert doc["openapi"] == "3.0.3"
    assert doc["info"]["title"] == "taskmill"
    expected = {
        "/api/v1/tasks": {"get", "post"},
        "/api/v1/tasks/batch": {"post"},
        "/api/v1/tasks/{task_id}": {"get", "delete"},
        "/api/v1/tasks/{task_id}/retry": {"post"},
        "/api/v1/queues": {"get"},
        "/api/v1/queues/{name}/pause": {"post"},
        "/api/v1/queues/{name}/resume": {"post"},
        "/api/v1/dead-letters": {"get"},
        "/api/v1/dead-letters/requeue": {"post"},
        "/api/v1/workers": {"get"},
        "/api/v1/handlers": {"get"},
        "/health": {"get"},
        "/health/live": {"get"},
    }
    for path, methods in expected.items():
        assert path in doc["paths"], path
        assert methods <= set(doc["paths"][path]), path
    # every API route of the app is documented
    for rule in app.url_map.iter_rules():
        if rule.endpoint.split(".")[0] in {
            "tasks",
            "queues",
            "dead_letters",
            "workers",
            "handlers",
            "health",
        }:
            path = re.sub(r"<(?:[^:>]+:)?([^>]+)>", r"{\1}", rule.rule)
            assert path in doc["paths"], path
    schemes = doc["components"]["securitySchemes"]
    assert schemes["bearerAuth"] == {
        "type": "http",
        "scheme": "bearer",
        "description": schemes["bearerAuth"]["description"],
    }
    assert schemes["apiKeyHeader"] == {"type": "apiKey", "in": "header", "name": "X-API-Key"}
    assert {"bearerAuth": []} in doc["security"]
    assert doc["paths"]["/health"]["get"]["security"] == []
    assert doc["paths"]["/health/live"]["get"]["security"] == []
    post = doc["paths"]["/api/v1/tasks"]["post"]
    assert {"201", "200", "401", "403", "409", "413", "422", "503"} <= set(post["responses"])
    assert any(p["name"] == "Idempotency-Key" for p in post["parameters"])
    task_id = doc["paths"]["/api/v1/tasks/{task_id}"]["parameters"][0]
    assert task_id["schema"]["format"] == "uuid"
    listing = doc["paths"]["/api/v1/tasks"]["get"]
    assert {p["name"] for p in listing["parameters"]} >= {
        "status",
        "type",
        "queue",
        "tag",
        "page",
        "page_size",
    }
    assert "X-Pagination" in str(listing["responses"]["200"])


def test_docs_page_is_local_only(client):
    r = client.get("/api/v1/docs")
    assert r.status_code == 200
    html = r.get_data(as_text=True)
    assert "http://" not in html and "https://" not in html and "//cdn" not in html
    scripts = re.findall(r"<script([^>]*)>(.*?)</script>", html, flags=re.S)
    assert scripts, "the page loads Swagger UI"
    for attrs, inline in scripts:
        assert 'src="/' in attrs, "every script is a local file"
        assert inline.strip() == "", "no inline script"
    assert "<style" not in html
    csp = r.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "default-src 'self'" in csp
    assets = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert assets
    for asset in assets:
        assert asset.startswith("/api/v1/docs/")
        got = client.get(asset)
        assert got.status_code == 200, asset
        got.close()
    assert 'data-spec-url="/api/v1/openapi.json"' in html


def test_docs_initializer_loads_the_local_document_and_no_validator(client):
    r = client.get("/api/v1/docs/taskmill-docs.js")
    assert r.status_code == 200
    assert "javascript" in r.content_type
    js = r.get_data(as_text=True)
    r.close()
    assert "http://" not in js and "https://" not in js
    assert "validatorUrl: null" in js
    assert "data-spec-url" in js


def test_docs_assets_cannot_escape_their_directory(client):
    assert client.get("/api/v1/docs/swagger-ui/../../../../etc/passwd").status_code == 404
    assert client.get("/api/v1/docs/swagger-ui/nope.js").status_code == 404


def test_a_body_nested_too_deep_is_a_400_naming_the_depth(make_app):
    client = make_app().test_client()
    for depth in (100_000, 65):
        body = '{"type": "t.echo", "payload": {"a": ' + "[" * depth + "]" * depth + "}}"
        response = client.post("/api/v1/tasks", data=body, content_type="application/json")
        assert response.status_code == 400, depth
        data = response.get_json()
        assert "nested deeper than 64" in data["message"]
        assert "Traceback" not in response.get_data(as_text=True)
    ok = '{"type": "t.echo", "payload": {"a": ' + "[" * 60 + "]" * 60 + "}}"
    assert client.post("/api/v1/tasks", data=ok, content_type="application/json").status_code == 201
