"""``GET /api/v1/tasks/{id}/deliveries``: a task's webhook deliveries and their attempts (SQLite)."""

from __future__ import annotations

import uuid
from typing import Any

from taskmill.manager import Manager
from taskmill.models import Outcome
from tests.unit.conftest import run_to_end


def test_deliveries_and_their_attempts_are_visible_on_the_task(make_app: Any) -> None:
    app = make_app(load_plugins=["sql", "handlers"])
    client = app.test_client()
    runtime = app.extensions["taskmill"]
    task = client.post(
        "/api/v1/tasks", json={"type": "t.echo", "callback_url": "https://hooks.example.invalid/x"}
    ).json
    assert client.get(f"/api/v1/tasks/{task['id']}/deliveries").json == []
    run_to_end(runtime, task["id"], "completed")
    Manager(runtime).tick()  # the journal feed submits the delivery
    [delivery] = client.get(f"/api/v1/tasks/{task['id']}/deliveries").json
    assert delivery["event"] == "completed" and delivery["url"] == "https://hooks.example.invalid/x"
    assert delivery["status"] == "queued" and delivery["attempts"] == 0 and delivery["delivered"] is False
    # one failed POST: the delivery retries later, and says so
    [claimed] = runtime.lifecycle.claim(["default"], 10, "w")
    assert str(claimed.id) == delivery["id"]
    error = {"type": "WebhookDeliveryFailed", "message": "HTTP 500 from https://hooks.example.invalid/x"}
    runtime.lifecycle.finish([(claimed, Outcome(claimed.id, "retry", error=error))], "w")
    [delivery] = client.get(f"/api/v1/tasks/{task['id']}/deliveries").json
    assert delivery["status"] == "scheduled" and delivery["attempts"] == 1
    assert delivery["last_error"]["type"] == "WebhookDeliveryFailed"
    assert delivery["next_attempt_at"] is not None
    assert "traceback" not in delivery["last_error"]


def test_unknown_and_foreign_tasks_are_404(make_app: Any) -> None:
    client = make_app(load_plugins=["sql", "handlers"]).test_client()
    assert client.get(f"/api/v1/tasks/{uuid.uuid4()}/deliveries").status_code == 404
    assert client.get("/api/v1/tasks/nope/deliveries").status_code == 404
    spec = client.get("/api/v1/openapi.json").json
    assert spec["paths"]["/api/v1/tasks/{task_id}/deliveries"]["get"]["operationId"] == "listTaskDeliveries"
