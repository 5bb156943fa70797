"""Queues (pause/resume), dead letters (list, requeue), workers and handlers."""

from __future__ import annotations

import json
import uuid

import pytest

from taskmill.models import WorkerInfo
from taskmill.models import utcnow


def submit(client, **body):
    body.setdefault("type", "t.echo")
    r = client.post("/api/v1/tasks", json=body)
    assert r.status_code == 201, r.get_json()
    return r.get_json()


# ---- queues ----------------------------------------------------------------------------------------


def test_queues_list_depth_per_state(client, runtime, drive):
    submit(client)
    submit(client)
    done = submit(client)
    submit(client, queue="other", delay=600)
    drive(runtime, done["id"], "completed")
    r = client.get("/api/v1/queues")
    assert r.status_code == 200
    queues = {q["name"]: q for q in r.get_json()}
    assert queues["default"]["depth"] == {"queued": 2, "completed": 1}
    assert queues["default"]["paused"] is False
    assert queues["default"]["oldest_queued_age"] >= 0
    assert queues["other"]["depth"] == {"scheduled": 1}
    assert queues["other"]["oldest_queued_age"] is None
    assert set(queues["default"]) == {"name", "paused", "depth", "oldest_queued_age"}


def test_pause_and_resume(client, runtime):
    submit(client)
    r = client.post("/api/v1/queues/default/pause")
    assert r.status_code == 200
    assert r.get_json()["paused"] is True and r.get_json()["depth"] == {"queued": 1}
    assert runtime.storage.queues.paused() == {"default"}
    # a paused queue accepts tasks; workers take none from it
    submit(client)
    assert runtime.lifecycle.claim(["default"], 10, "w") == []
    r = client.post("/api/v1/queues/default/resume")
    assert r.status_code == 200 and r.get_json()["paused"] is False
    assert runtime.storage.queues.paused() == set()
    assert len(runtime.lifecycle.claim(["default"], 10, "w")) == 2


def test_a_queue_not_used_yet_may_be_paused_ahead(client):
    r = client.post("/api/v1/queues/later.queue:v2/pause")
    assert r.status_code == 200
    assert r.get_json() == {"name": "later.queue:v2", "paused": True, "depth": {}, "oldest_queued_age": None}
    assert {q["name"] for q in client.get("/api/v1/queues").get_json()} == {"later.queue:v2"}


@pytest.mark.parametrize("name", ["has space", "x" * 201, "sémantique", "a;b"])
def test_invalid_queue_names_are_422(client, runtime, name):
    r = client.post(f"/api/v1/queues/{name}/pause")
    assert r.status_code == 422, r.get_json()
    assert r.get_json()["errors"]
    assert runtime.storage.queues.paused() == set()


# ---- dead letters ----------------------------------------------------------------------------------


def test_dead_letters_list_failed_tasks_paginated(client, runtime, drive):
    failed = []
    for i in range(3):
        failed.append(submit(client, payload={"i": i})["id"])
        drive(runtime, failed[-1], "failed")
    submit(client)  # queued: not a dead letter
    r = client.get("/api/v1/dead-letters?page_size=2")
    assert r.status_code == 200
    assert [t["id"] for t in r.get_json()] == failed[::-1][:2]
    assert all(t["status"] == "failed" and t["error"]["message"] == "boom" for t in r.get_json())
    assert json.loads(r.headers["X-Pagination"])["total"] == 3


def test_requeue_by_ids(client, runtime, drive):
    a = submit(client)["id"]
    b = submit(client)["id"]
    queued = submit(client)["id"]
    drive(runtime, a, "failed")
    drive(runtime, b, "failed")
    r = client.post("/api/v1/dead-letters/requeue", json={"ids": [a, queued, str(uuid.uuid4())]})
    assert r.status_code == 200
    assert r.get_json() == {"requeued": 1, "ids": [a]}
    assert client.get(f"/api/v1/tasks/{a}").get_json()["status"] == "queued"
    assert client.get(f"/api/v1/tasks/{b}").get_json()["status"] == "failed"
    assert client.get(f"/api/v1/tasks/{queued}").get_json()["status"] == "queued"


def test_requeue_by_filter(client, runtime, drive):
    echo = submit(client)["id"]
    strict = submit(client, type="t.strict", payload={"n": 1})["id"]
    drive(runtime, echo, "failed")
    drive(runtime, strict, "failed", queue="strict")
    r = client.post("/api/v1/dead-letters/requeue", json={"filter": {"type": "t.strict"}})
    assert r.get_json() == {"requeued": 1, "ids": [strict]}
    r = client.post("/api/v1/dead-letters/requeue", json={"filter": {"failed_after": "2999-01-01T00:00:00Z"}})
    assert r.get_json() == {"requeued": 0, "ids": []}
    r = client.post(
        "/api/v1/dead-letters/requeue",
        json={"filter": {"queue": "default", "failed_before": "2999-01-01T00:00:00Z"}},
    )
    assert r.get_json() == {"requeued": 1, "ids": [echo]}
    assert client.get("/api/v1/dead-letters").get_json() == []


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"ids": [], "filter": {}},
        {"ids": ["nope"]},
        {"ids": [str(uuid.uuid4())] * 1001},
        {"filter": {"status": "failed"}},
        {"filter": {"failed_after": "yesterday"}},
        {"ids": [], "extra": 1},
    ],
)
def test_bad_requeue_requests_are_422_and_change_nothing(client, runtime, drive, body):
    task = submit(client)["id"]
    drive(runtime, task, "failed")
    r = client.post("/api/v1/dead-letters/requeue", json=body)
    assert r.status_code == 422
    assert client.get(f"/api/v1/tasks/{task}").get_json()["status"] == "failed"


# ---- workers ----------------------------------------------------------------------------------------


def test_workers(client, runtime, drive):
    a = submit(client)["id"]
    b = submit(client)["id"]
    runtime.storage.workers.register(
        WorkerInfo(id="w-1", host="box", pid=123, queues=["default"], concurrency=2, started_at=utcnow())
    )
    runtime.storage.workers.heartbeat("w-1", {"current_task": f"{a},{b}", "processed": 4, "failed": 1})
    runtime.storage.workers.register(WorkerInfo(id="w-2", host="box", pid=124, queues=["x", "y"]))
    r = client.get("/api/v1/workers")
    assert r.status_code == 200
    workers = {w["id"]: w for w in r.get_json()}
    w1 = workers["w-1"]
    assert (w1["host"], w1["pid"], w1["queues"]) == ("box", 123, ["default"])
    assert w1["current_task"] == a and w1["current_tasks"] == [a, b]
    assert (w1["processed"], w1["failed"]) == (4, 1)
    assert w1["last_heartbeat"].endswith("Z") and w1["started_at"].endswith("Z")
    assert workers["w-2"]["current_task"] is None and workers["w-2"]["current_tasks"] == []
    expected = {
        "id",
        "host",
        "pid",
        "queues",
        "current_task",
        "started_at",
        "last_heartbeat",
        "processed",
        "failed",
    }
    assert expected <= set(w1)


# ---- handlers -----------------------------------------------------------------------------------------


def test_handlers(client):
    r = client.get("/api/v1/handlers")
    assert r.status_code == 200
    handlers = {h["name"]: h for h in r.get_json()}
    assert set(handlers) == {"t.echo", "t.strict"}
    strict = handlers["t.strict"]
    assert strict["description"].startswith("Accept only")
    assert (strict["queue"], strict["timeout"], strict["max_retries"]) == ("strict", 30, 1)
    assert strict["payload_schema"]["type"] == "object"
    assert strict["payload_schema"]["properties"]["n"]["type"] == "integer"
    assert strict["payload_schema"]["required"] == ["n"]
    assert handlers["t.echo"]["payload_schema"] == {"type": "object"}
    assert handlers["t.echo"]["plugin"]
    assert set(strict) == {
        "name",
        "description",
        "payload_schema",
        "queue",
        "timeout",
        "max_retries",
        "plugin",
    }
