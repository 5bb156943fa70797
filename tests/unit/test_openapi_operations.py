"""The OpenAPI document names and describes every operation the app really serves.

These tests walk whatever is registered (core's resources and every loaded plugin's), so an
endpoint added later is checked the day it lands: it needs a readable, unique camelCase
``operationId`` (``@blp.doc(operationId="submitTask")``), so that a generated client reads
``submit_task`` rather than ``post_api_v1_tasks``; and a method a route does not serve answers
405 with an ``Allow`` header (RFC 9110).
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.unit.conftest import Secured

OPERATION_ID = re.compile(r"^[a-z][a-z0-9]*(?:[A-Z][a-z0-9]*)*$")
"""camelCase: a lower-case verb, then capitalised words (``submitTaskBatch``, ``healthLive``)."""

HTTP_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")

UNDOCUMENTED = ("/api/v1/openapi.json", "/api/v1/docs")
"""Routes that serve the documentation itself (the document and its page) rather than the API."""

EXPECTED = {
    ("POST", "/api/v1/tasks"): "submitTask",
    ("POST", "/api/v1/tasks/batch"): "submitTaskBatch",
    ("GET", "/api/v1/tasks/{task_id}"): "getTask",
    ("GET", "/api/v1/tasks"): "listTasks",
    ("DELETE", "/api/v1/tasks/{task_id}"): "cancelTask",
    ("POST", "/api/v1/tasks/{task_id}/retry"): "retryTask",
    ("GET", "/api/v1/queues"): "listQueues",
    ("POST", "/api/v1/queues/{name}/pause"): "pauseQueue",
    ("POST", "/api/v1/queues/{name}/resume"): "resumeQueue",
    ("GET", "/api/v1/dead-letters"): "listDeadLetters",
    ("POST", "/api/v1/dead-letters/requeue"): "requeueDeadLetters",
    ("GET", "/api/v1/workers"): "listWorkers",
    ("GET", "/api/v1/handlers"): "listHandlers",
    ("POST", "/api/v1/api-keys"): "createApiKey",
    ("GET", "/api/v1/api-keys"): "listApiKeys",
    ("DELETE", "/api/v1/api-keys/{key_id}"): "revokeApiKey",
    ("GET", "/health"): "health",
}
"""The ids clients already rely on (API.md names them): renaming one breaks generated clients."""


def _operations(spec: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {
        (method.upper(), path): op
        for path, item in spec["paths"].items()
        for method, op in item.items()
        if method in HTTP_METHODS
    }


@pytest.fixture
def spec(secured: Secured) -> dict[str, Any]:
    response = secured.client.get("/api/v1/openapi.json")
    assert response.status_code == 200
    return response.get_json()


def test_every_operation_has_a_unique_camel_case_operation_id(spec):
    operations = _operations(spec)
    assert len(operations) >= 18
    missing = sorted(f"{m} {p}" for (m, p), op in operations.items() if not op.get("operationId"))
    assert not missing, f"operations without an operationId (add @blp.doc(operationId=...)): {missing}"
    badly_named = sorted(
        f"{m} {p}: {op['operationId']}"
        for (m, p), op in operations.items()
        if not OPERATION_ID.match(op["operationId"])
    )
    assert not badly_named, f"operationIds that are not camelCase: {badly_named}"
    seen: dict[str, str] = {}
    for (method, path), op in sorted(operations.items()):
        other = seen.setdefault(op["operationId"], f"{method} {path}")
        assert other == f"{method} {path}", f"operationId {op['operationId']} used twice"


def test_the_operation_ids_clients_rely_on_stay(spec):
    operations = _operations(spec)
    actual = {key: operations.get(key, {}).get("operationId") for key in EXPECTED}
    assert actual == EXPECTED


def _openapi_path(rule: str) -> str:
    """``/api/v1/tasks/<taskid:task_id>`` → ``/api/v1/tasks/{task_id}``."""
    return re.sub(r"<(?:[^:>]+:)?([^>]+)>", r"{\1}", rule)


def _served_routes(secured: Secured) -> list[Any]:
    return [
        rule
        for rule in secured.app.url_map.iter_rules()
        if (rule.rule.startswith("/api/") or rule.rule.startswith("/health"))
        and not rule.rule.startswith(UNDOCUMENTED)
    ]


def test_every_api_route_is_in_the_document(secured, spec):
    operations = _operations(spec)
    absent = []
    for rule in _served_routes(secured):
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            if (method, _openapi_path(rule.rule)) not in operations:
                absent.append(f"{method} {rule.rule}")
    assert not absent, f"served but not in the OpenAPI document: {absent}"


def _concrete(rule: Any) -> str:
    """A URL of ``rule`` with a plausible value in each variable."""
    return re.sub(r"<[^>]+>", "00000000-0000-4000-8000-000000000000", rule.rule)


def test_every_405_lists_the_allowed_methods(secured):
    adapter = secured.app.url_map.bind("localhost")
    rules = secured.app.url_map.iter_rules()
    urls = {_concrete(rule) for rule in rules if not rule.rule.startswith("/static")}
    checked = 0
    for url in sorted(urls):
        methods = set(adapter.allowed_methods(url))
        for method in ("TRACE", "PUT", "PATCH", "DELETE", "POST"):
            if method in methods:
                continue
            response = secured.client.open(url, method=method, headers=secured.headers("admin"))
            assert response.status_code == 405, (method, url, response.status_code)
            allow = {m.strip() for m in response.headers.get("Allow", "").split(",") if m.strip()}
            assert allow == methods, (method, url, response.headers.get("Allow"))
            assert response.get_json()["code"] == 405
            checked += 1
    assert checked >= 20


def test_every_answer_with_a_body_documents_its_media_type(spec):
    """A success with a body says what it is; the events stream is ``text/event-stream``, so a
    client (or schemathesis) does not expect JSON from it."""
    bare = sorted(
        f"{m} {p} {status}"
        for (m, p), op in _operations(spec).items()
        for status, answer in op.get("responses", {}).items()
        if status in ("200", "201", "202") and not answer.get("content")
    )
    assert not bare, f"2xx answers without a documented content: {bare}"
    events = _operations(spec)[("GET", "/api/v1/events")]["responses"]["200"]["content"]
    assert list(events) == ["text/event-stream"]
