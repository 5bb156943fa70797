"""`taskmill run` as a real process, driven over HTTP, once per broker."""

from __future__ import annotations

import os
import signal
import time

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_submitted_tasks_complete_with_their_results(installation) -> None:
    r = installation.post("/api/v1/tasks", {"type": "echo", "payload": {"hello": "world"}})
    assert r.status_code == 201, r.text
    assert r.headers["Location"].endswith(r.json()["id"])
    done = installation.wait_task(r.json()["id"], {"completed"})
    assert done["result"] == {"hello": "world"} and done["attempts"] == 1 and done["worker"]
    batch = installation.post(
        "/api/v1/tasks/batch", {"tasks": [{"type": "echo", "payload": {"i": i}} for i in range(50)]}
    )
    assert batch.status_code == 201
    for i, t in enumerate(batch.json()["tasks"]):
        assert installation.wait_task(t["id"], {"completed"})["result"] == {"i": i}


def test_failing_task_retries_then_lands_in_dead_letters(installation) -> None:
    body = {"type": "fail", "payload": {"message": "nope"}, "max_retries": 2, "retry_backoff": 0.1}
    task = installation.post("/api/v1/tasks", body).json()
    failed = installation.wait_task(task["id"], {"failed"})
    assert failed["attempts"] == 3
    assert failed["error"]["type"] == "RuntimeError" and failed["error"]["message"] == "nope"
    dead = installation.get("/api/v1/dead-letters", params={"page_size": 1000}).json()
    assert task["id"] in [t["id"] for t in dead]
    again = installation.post("/api/v1/dead-letters/requeue", {"ids": [task["id"]]}).json()
    assert again["requeued"] == 1
    assert installation.wait_task(task["id"], {"failed"})["attempts"] == 6


def test_fail_then_succeed(installation) -> None:
    task = installation.post(
        "/api/v1/tasks", {"type": "fail", "payload": {"times": 1}, "retry_backoff": 0.1}
    ).json()
    done = installation.wait_task(task["id"], {"completed"})
    assert done["result"] == {"attempts": 2}


def test_cancel_while_running(installation) -> None:
    task = installation.post("/api/v1/tasks", {"type": "sleep", "payload": {"seconds": 60}}).json()
    installation.wait_task(task["id"], {"running"})
    r = installation.delete(f"/api/v1/tasks/{task['id']}")
    assert r.status_code == 202 and r.json()["cancel_requested"] is True
    done = installation.wait_task(task["id"], {"cancelled"}, timeout=15)
    assert done["finished_at"]
    assert installation.delete(f"/api/v1/tasks/{task['id']}").status_code == 409


def test_task_survives_kill_9_of_its_worker(installation) -> None:
    task = installation.post("/api/v1/tasks", {"type": "sleep", "payload": {"seconds": 2}}).json()
    installation.wait_task(task["id"], {"running"})
    workers = installation.get("/api/v1/workers").json()
    [holder] = [w for w in workers if task["id"] in (w.get("current_tasks") or [w["current_task"]])] or [
        w for w in workers if w["id"] == installation.wait_task(task["id"], {"running"})["worker"]
    ]
    os.kill(holder["pid"], signal.SIGKILL)
    done = installation.wait_task(task["id"], {"completed"}, timeout=60)
    assert done["attempts"] == 2 and done["worker"] != holder["id"]
    # the supervisor started a new worker, and the dead one is gone from the list
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        ids = [w["id"] for w in installation.get("/api/v1/workers").json()]
        if ids and holder["id"] not in ids:
            break
        time.sleep(0.2)
    assert holder["id"] not in ids and ids


def test_queues_and_metrics_reflect_the_work(installation) -> None:
    queues = {q["name"]: q for q in installation.get("/api/v1/queues").json()}
    assert queues["default"]["depth"].get("completed", 0) >= 1
    metrics = installation.get("/metrics").text
    assert 'taskmill_tasks_submitted_total{queue="default",type="echo"}' in metrics
    assert "taskmill_tasks_finished_total" in metrics and "taskmill_task_duration_seconds_bucket" in metrics
    assert 'taskmill_queue_depth{queue="default",status="completed"}' in metrics
