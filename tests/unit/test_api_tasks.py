"""``/api/v1/tasks``: submit, batch, get, list, cancel, retry, idempotency and every bad input."""

from __future__ import annotations

import datetime as dt
import json
import re
import uuid
from typing import Any

import pytest

TIME_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def submit(client: Any, body: dict[str, Any], **kwargs: Any) -> Any:
    return client.post("/api/v1/tasks", json=body, **kwargs)


# ---- submit ---------------------------------------------------------------------------------------


def test_submit_returns_201_with_the_task_and_location(client, runtime):
    r = submit(client, {"type": "t.echo", "payload": {"a": 1}, "tags": ["x"], "priority": 7})
    assert r.status_code == 201
    task = r.get_json()
    assert r.headers["Location"] == f"/api/v1/tasks/{task['id']}"
    assert task["type"] == "t.echo"
    assert task["payload"] == {"a": 1}
    assert task["status"] == "queued"
    assert task["tenant"] == "default"
    assert task["priority"] == 7
    assert task["tags"] == ["x"]
    assert task["queue"] == "default"
    assert task["max_retries"] == 3 and task["timeout"] == 300 and task["retry_backoff"] == 1.0
    assert task["attempts"] == 0 and task["depends_on"] == [] and task["result"] is None
    assert TIME_RE.match(task["created_at"]) and TIME_RE.match(task["updated_at"])
    assert task["run_at"] is None and task["started_at"] is None
    expected = {
        "id", "type", "queue", "priority", "payload", "status", "tenant", "attempts", "max_retries",
        "timeout", "retry_backoff", "run_at", "depends_on", "idempotency_key", "callback_url", "tags",
        "progress", "cancel_requested", "result", "error", "worker", "created_at", "started_at",
        "finished_at", "updated_at",
    }  # fmt: skip
    assert set(task) == expected
    assert runtime.storage.tasks.get(uuid.UUID(task["id"])) is not None


def test_submit_uses_the_handler_defaults(client):
    task = submit(client, {"type": "t.strict", "payload": {"n": 3}}).get_json()
    assert (task["queue"], task["timeout"], task["max_retries"]) == ("strict", 30, 1)


def test_submit_with_delay_is_scheduled(client):
    r = submit(client, {"type": "t.echo", "delay": 3600})
    assert r.status_code == 201
    task = r.get_json()
    assert task["status"] == "scheduled"
    run_at = dt.datetime.fromisoformat(task["run_at"].replace("Z", "+00:00"))
    assert run_at > dt.datetime.now(dt.UTC) + dt.timedelta(minutes=59)
    assert TIME_RE.match(task["run_at"])


def test_submit_with_run_at_in_the_past_is_queued_and_times_come_back_in_utc(client):
    task = submit(client, {"type": "t.echo", "run_at": "2020-01-01T12:00:00+02:00"}).get_json()
    assert task["status"] == "queued"
    assert task["run_at"] == "2020-01-01T10:00:00.000Z"


def test_submit_with_dependencies_waits(client):
    first = submit(client, {"type": "t.echo"}).get_json()
    second = submit(client, {"type": "t.echo", "depends_on": [first["id"]]}).get_json()
    assert second["status"] == "waiting"
    assert second["depends_on"] == [first["id"]]


def test_submit_with_a_public_callback_url(client):
    r = submit(client, {"type": "t.echo", "callback_url": "https://example.com/hook"})
    assert r.status_code == 201
    assert r.get_json()["callback_url"] == "https://example.com/hook"


def test_private_callback_url_allowed_when_configured(make_app):
    # the setting belongs to the handlers plugin (webhooks), so that plugin is loaded
    client = make_app(webhook_allow_private=True, load_plugins=["sql", "handlers"]).test_client()
    assert submit(client, {"type": "t.echo", "callback_url": "http://127.0.0.1:9/x"}).status_code == 201


def test_get_task(client):
    task = submit(client, {"type": "t.echo"}).get_json()
    r = client.get(f"/api/v1/tasks/{task['id']}")
    assert r.status_code == 200
    assert r.get_json() == task


@pytest.mark.parametrize(
    "task_id", ["not-a-uuid", "123", str(uuid.uuid4()), "0b6f5c1e-zzzz-4000-8000-000000000000"]
)
def test_unknown_or_malformed_task_id_is_404(client, task_id):
    for r in (
        client.get(f"/api/v1/tasks/{task_id}"),
        client.delete(f"/api/v1/tasks/{task_id}"),
        client.post(f"/api/v1/tasks/{task_id}/retry"),
    ):
        assert r.status_code == 404
        body = r.get_json()
        assert body["code"] == 404 and body["status"] == "Not Found" and body["message"]


# ---- bad input: the status, and nothing written ----------------------------------------------------

BAD_BODIES = [
    pytest.param({"payload": {}}, 422, id="missing-type"),
    pytest.param({"type": "t.echo", "status": "completed"}, 422, id="unknown-field-status"),
    pytest.param({"type": "t.echo", "tenant": "other"}, 422, id="unknown-field-tenant"),
    pytest.param({"type": "t.echo", "attempts": 3}, 422, id="unknown-field-attempts"),
    pytest.param({"type": "t.echo", "result": 1}, 422, id="unknown-field-result"),
    pytest.param({"type": "no.such.type"}, 422, id="unknown-type"),
    pytest.param({"type": "t.strict", "payload": {"n": "x"}}, 422, id="payload-rejected-by-schema"),
    pytest.param({"type": "t.strict", "payload": {"n": 1, "m": 2}}, 422, id="payload-unknown-key"),
    pytest.param({"type": "t.echo", "payload": [1, 2]}, 422, id="payload-not-object"),
    pytest.param({"type": "t.echo", "payload": "x"}, 422, id="payload-string"),
    pytest.param({"type": "t.echo", "priority": 10}, 422, id="priority-too-high"),
    pytest.param({"type": "t.echo", "priority": -1}, 422, id="priority-negative"),
    pytest.param({"type": "t.echo", "priority": 2.5}, 422, id="priority-fraction"),
    pytest.param({"type": "t.echo", "max_retries": 101}, 422, id="max-retries-too-high"),
    pytest.param({"type": "t.echo", "timeout": 0}, 422, id="timeout-zero"),
    pytest.param({"type": "t.echo", "delay": -1}, 422, id="negative-delay"),
    pytest.param({"type": "t.echo", "retry_backoff": -0.5}, 422, id="negative-backoff"),
    pytest.param(
        {"type": "t.echo", "delay": 5, "run_at": "2030-01-01T00:00:00Z"}, 422, id="delay-and-run-at"
    ),
    pytest.param({"type": "t.echo", "run_at": "tomorrow"}, 422, id="bad-run-at"),
    pytest.param({"type": "t.echo", "tags": "x"}, 422, id="tags-not-list"),
    pytest.param({"type": "t.echo", "tags": [1]}, 422, id="tag-not-string"),
    pytest.param({"type": "t.echo", "depends_on": ["nope"]}, 422, id="depends-on-not-uuid"),
    pytest.param({"type": "t.echo", "depends_on": [str(uuid.uuid4())]}, 422, id="depends-on-unknown"),
    pytest.param({"type": "t.echo", "callback_url": "ftp://example.com/x"}, 422, id="callback-not-http"),
    pytest.param({"type": "t.echo", "callback_url": "http://127.0.0.1/x"}, 422, id="callback-loopback"),
    pytest.param({"type": "t.echo", "callback_url": "http://10.1.2.3/x"}, 422, id="callback-private"),
    pytest.param(
        {"type": "t.echo", "callback_url": "http://169.254.169.254/x"}, 422, id="callback-link-local"
    ),
    pytest.param({"type": "t.echo", "callback_url": "http://[::1]/x"}, 422, id="callback-ipv6-loopback"),
    pytest.param({"type": "t.echo", "queue": "has space"}, 422, id="bad-queue-name"),
    pytest.param({"type": "t.echo", "idempotency_key": ""}, 422, id="empty-idempotency-key"),
    pytest.param([{"type": "t.echo"}], 422, id="body-is-a-list"),
    pytest.param("t.echo", 422, id="body-is-a-string"),
]


@pytest.mark.parametrize(("body", "status"), BAD_BODIES)
def test_bad_submission_is_rejected_and_writes_nothing(client, runtime, tasks_in_db, body, status):
    submit(client, {"type": "t.echo"})  # something in the database already
    before = tasks_in_db(runtime)
    r = submit(client, body)
    assert r.status_code == status, r.get_json()
    err = r.get_json()
    assert err["code"] == status
    assert set(err) == {"code", "status", "message", "errors"}
    assert err["errors"], "a validation error names what is wrong"
    assert tasks_in_db(runtime) == before


def test_unknown_field_is_named(client):
    err = submit(client, {"type": "t.echo", "status": "completed"}).get_json()
    assert "status" in err["errors"]


def test_unknown_type_and_rejected_payload_are_named(client):
    assert "type" in submit(client, {"type": "nope"}).get_json()["errors"]
    err = submit(client, {"type": "t.strict", "payload": {"n": 99}}).get_json()
    assert "n" in err["errors"]["payload"]


def test_malformed_json_is_400_and_writes_nothing(client, runtime, tasks_in_db):
    r = client.post("/api/v1/tasks", data='{"type": "t.echo",', content_type="application/json")
    assert r.status_code == 400
    body = r.get_json()
    assert body["code"] == 400 and "JSON" in body["message"]
    assert tasks_in_db(runtime) == 0


@pytest.mark.parametrize(
    ("data", "content_type"),
    [({"type": "t.echo"}, None), ("type=t.echo", "application/x-www-form-urlencoded"), ("x", "text/plain")],
)
def test_non_json_body_is_400(client, runtime, tasks_in_db, data, content_type):
    kwargs = {"content_type": content_type} if content_type else {}
    r = client.post("/api/v1/tasks", data=data, **kwargs)
    assert r.status_code == 400
    assert "application/json" in r.get_json()["message"]
    assert tasks_in_db(runtime) == 0


def test_oversized_body_is_413_json_and_writes_nothing(make_app, tasks_in_db):
    app = make_app(max_payload_bytes=2048)
    client = app.test_client()
    r = submit(client, {"type": "t.echo", "payload": {"blob": "x" * 4096}})
    assert r.status_code == 413
    assert r.is_json
    assert r.get_json()["code"] == 413
    assert tasks_in_db(app.extensions["taskmill"]) == 0
    assert submit(client, {"type": "t.echo", "payload": {"blob": "x" * 100}}).status_code == 201


# ---- idempotency ---------------------------------------------------------------------------------


def test_same_key_same_body_answers_200_with_the_first_task(client, runtime, tasks_in_db):
    body = {"type": "t.echo", "payload": {"a": 1}, "idempotency_key": "k-1"}
    first = submit(client, body)
    again = submit(client, body)
    assert first.status_code == 201 and again.status_code == 200
    assert again.get_json()["id"] == first.get_json()["id"]
    assert again.headers["Location"] == first.headers["Location"]
    assert tasks_in_db(runtime) == 1


def test_same_key_different_body_is_409(client, runtime, tasks_in_db):
    submit(client, {"type": "t.echo", "payload": {"a": 1}, "idempotency_key": "k-2"})
    r = submit(client, {"type": "t.echo", "payload": {"a": 2}, "idempotency_key": "k-2"})
    assert r.status_code == 409
    assert r.get_json()["code"] == 409
    assert tasks_in_db(runtime) == 1


def test_idempotency_key_header_means_the_same_as_the_field(client, runtime, tasks_in_db):
    first = submit(client, {"type": "t.echo"}, headers={"Idempotency-Key": "k-3"})
    assert first.status_code == 201
    assert first.get_json()["idempotency_key"] == "k-3"
    again = submit(client, {"type": "t.echo", "idempotency_key": "k-3"})
    assert again.status_code == 200
    assert again.get_json()["id"] == first.get_json()["id"]
    both = submit(client, {"type": "t.echo", "idempotency_key": "k-3"}, headers={"Idempotency-Key": "k-3"})
    assert both.status_code == 200
    assert tasks_in_db(runtime) == 1


def test_header_and_field_that_differ_are_422(client, runtime, tasks_in_db):
    r = submit(client, {"type": "t.echo", "idempotency_key": "a"}, headers={"Idempotency-Key": "b"})
    assert r.status_code == 422
    assert tasks_in_db(runtime) == 0


# ---- batch ---------------------------------------------------------------------------------------


def test_batch_is_201_in_request_order(client, runtime, tasks_in_db):
    body = {"tasks": [{"type": "t.echo", "payload": {"i": i}} for i in range(5)]}
    r = client.post("/api/v1/tasks/batch", json=body)
    assert r.status_code == 201
    tasks = r.get_json()["tasks"]
    assert [t["payload"]["i"] for t in tasks] == list(range(5))
    assert len({t["id"] for t in tasks}) == 5
    assert tasks_in_db(runtime) == 5


def test_batch_with_per_task_keys_is_idempotent(client, runtime, tasks_in_db):
    body = {"tasks": [{"type": "t.echo", "idempotency_key": f"b-{i}"} for i in range(3)]}
    first = client.post("/api/v1/tasks/batch", json=body).get_json()["tasks"]
    again = client.post("/api/v1/tasks/batch", json=body)
    assert again.status_code == 201
    assert [t["id"] for t in again.get_json()["tasks"]] == [t["id"] for t in first]
    assert tasks_in_db(runtime) == 3


def test_batch_is_all_or_none_and_names_the_index(client, runtime, tasks_in_db):
    body = {"tasks": [{"type": "t.echo"}, {"type": "t.echo"}, {"type": "t.echo"}, {"type": "nope"}]}
    r = client.post("/api/v1/tasks/batch", json=body)
    assert r.status_code == 422
    assert set(r.get_json()["errors"]["tasks"]) == {"3"}
    assert "type" in r.get_json()["errors"]["tasks"]["3"]
    body["tasks"][3] = {"type": "t.echo", "priority": 99}
    r = client.post("/api/v1/tasks/batch", json=body)
    assert r.status_code == 422
    assert "priority" in r.get_json()["errors"]["tasks"]["3"]
    body["tasks"][3] = {"type": "t.strict", "payload": {}}
    r = client.post("/api/v1/tasks/batch", json=body)
    assert r.status_code == 422
    assert "payload" in r.get_json()["errors"]["tasks"]["3"]
    assert tasks_in_db(runtime) == 0


@pytest.mark.parametrize("size", [0, 1001])
def test_batch_size_is_limited(client, runtime, tasks_in_db, size):
    r = client.post("/api/v1/tasks/batch", json={"tasks": [{"type": "t.echo"}] * size})
    assert r.status_code == 422
    assert "tasks" in r.get_json()["errors"]
    assert tasks_in_db(runtime) == 0


def test_batch_of_1000_is_accepted(client, runtime, tasks_in_db):
    r = client.post("/api/v1/tasks/batch", json={"tasks": [{"type": "t.echo"}] * 1000})
    assert r.status_code == 201
    assert tasks_in_db(runtime) == 1000


def test_batch_with_conflicting_keys_is_409_and_writes_nothing(client, runtime, tasks_in_db):
    submit(client, {"type": "t.echo", "payload": {"a": 1}, "idempotency_key": "dup"})
    body = {"tasks": [{"type": "t.echo"}, {"type": "t.echo", "payload": {"a": 2}, "idempotency_key": "dup"}]}
    r = client.post("/api/v1/tasks/batch", json=body)
    assert r.status_code == 409
    assert tasks_in_db(runtime) == 1


def test_batch_rejects_unknown_fields_and_a_non_list(client):
    assert client.post("/api/v1/tasks/batch", json={"tasks": [], "x": 1}).status_code == 422
    assert client.post("/api/v1/tasks/batch", json={"tasks": {"type": "t.echo"}}).status_code == 422
    assert (
        client.post("/api/v1/tasks/batch", json={"tasks": [{"type": "t.echo", "status": "x"}]}).status_code
        == 422
    )


# ---- list, filters, pagination -------------------------------------------------------------------


def test_list_is_newest_first_with_x_pagination(client):
    ids = [submit(client, {"type": "t.echo", "payload": {"i": i}}).get_json()["id"] for i in range(5)]
    r = client.get("/api/v1/tasks?page_size=2")
    assert r.status_code == 200
    assert [t["id"] for t in r.get_json()] == ids[::-1][:2]
    pagination = json.loads(r.headers["X-Pagination"])
    assert pagination["total"] == 5 and pagination["total_pages"] == 3 and pagination["page"] == 1
    assert pagination["next_page"] == 2
    last = client.get("/api/v1/tasks?page_size=2&page=3")
    assert [t["id"] for t in last.get_json()] == [ids[0]]


def test_default_page_size_is_50(client):
    client.post("/api/v1/tasks/batch", json={"tasks": [{"type": "t.echo"}] * 60})
    r = client.get("/api/v1/tasks")
    assert len(r.get_json()) == 50
    assert json.loads(r.headers["X-Pagination"])["total"] == 60
    assert len(client.get("/api/v1/tasks?page_size=1000").get_json()) == 60


@pytest.mark.parametrize("query", ["page_size=0", "page_size=1001", "page=0", "page=x", "status=bogus"])
def test_bad_list_arguments_are_422(client, query):
    r = client.get(f"/api/v1/tasks?{query}")
    assert r.status_code == 422
    assert r.get_json()["errors"]


def test_filters(client, runtime, drive):
    a = submit(client, {"type": "t.echo", "tags": ["red"], "queue": "q1"}).get_json()
    b = submit(client, {"type": "t.strict", "payload": {"n": 1}, "tags": ["blue"]}).get_json()
    c = submit(client, {"type": "t.echo", "tags": ["red", "blue"]}).get_json()
    drive(runtime, c["id"], "completed")

    def ids(query: str) -> set[str]:
        r = client.get(f"/api/v1/tasks?{query}")
        assert r.status_code == 200, r.get_json()
        return {t["id"] for t in r.get_json()}

    assert ids("type=t.echo") == {a["id"], c["id"]}
    assert ids("queue=q1") == {a["id"]}
    assert ids("queue=strict") == {b["id"]}
    assert ids("tag=red") == {a["id"], c["id"]}
    assert ids("tag=blue") == {b["id"], c["id"]}
    assert ids("status=completed") == {c["id"]}
    assert ids("status=queued&type=t.echo") == {a["id"]}
    created_b = b["created_at"]
    assert b["id"] in ids(f"created_after={created_b}")  # inclusive
    assert b["id"] not in ids(f"created_before={created_b}")  # exclusive
    assert ids("created_after=2999-01-01T00:00:00Z") == set()
    assert ids("created_before=2000-01-01T00:00:00Z") == set()


# ---- cancel and retry ----------------------------------------------------------------------------


def test_cancel_a_queued_task_is_200(client):
    task = submit(client, {"type": "t.echo"}).get_json()
    r = client.delete(f"/api/v1/tasks/{task['id']}")
    assert r.status_code == 200
    assert r.get_json()["status"] == "cancelled"


def test_cancel_a_running_task_is_202(client, runtime, drive):
    task = submit(client, {"type": "t.echo"}).get_json()
    drive(runtime, task["id"], "running")
    r = client.delete(f"/api/v1/tasks/{task['id']}")
    assert r.status_code == 202
    body = r.get_json()
    assert body["status"] == "running" and body["cancel_requested"] is True


@pytest.mark.parametrize("final", ["completed", "failed"])
def test_cancel_a_finished_task_is_409_and_changes_nothing(client, runtime, drive, final):
    task = submit(client, {"type": "t.echo"}).get_json()
    drive(runtime, task["id"], final)
    before = client.get(f"/api/v1/tasks/{task['id']}").get_json()
    r = client.delete(f"/api/v1/tasks/{task['id']}")
    assert r.status_code == 409
    assert r.get_json()["code"] == 409
    assert client.get(f"/api/v1/tasks/{task['id']}").get_json() == before


def test_cancel_a_cancelled_task_is_409(client):
    task = submit(client, {"type": "t.echo"}).get_json()
    client.delete(f"/api/v1/tasks/{task['id']}")
    assert client.delete(f"/api/v1/tasks/{task['id']}").status_code == 409


def test_retry_a_failed_task(client, runtime, drive):
    task = submit(client, {"type": "t.echo"}).get_json()
    drive(runtime, task["id"], "failed")
    r = client.post(f"/api/v1/tasks/{task['id']}/retry")
    assert r.status_code == 200
    body = r.get_json()
    assert body["status"] == "queued" and body["error"] is None and body["attempts"] == 1


def test_retry_a_cancelled_task(client):
    task = submit(client, {"type": "t.echo"}).get_json()
    client.delete(f"/api/v1/tasks/{task['id']}")
    r = client.post(f"/api/v1/tasks/{task['id']}/retry")
    assert r.status_code == 200 and r.get_json()["status"] == "queued"


@pytest.mark.parametrize("state", ["queued", "running", "completed"])
def test_retry_of_a_task_that_did_not_fail_is_409_and_changes_nothing(client, runtime, drive, state):
    task = submit(client, {"type": "t.echo"}).get_json()
    if state != "queued":
        drive(runtime, task["id"], state)
    before = client.get(f"/api/v1/tasks/{task['id']}").get_json()
    r = client.post(f"/api/v1/tasks/{task['id']}/retry")
    assert r.status_code == 409
    assert client.get(f"/api/v1/tasks/{task['id']}").get_json() == before


def test_a_body_on_retry_is_not_needed(client, runtime, drive):
    task = submit(client, {"type": "t.echo"}).get_json()
    drive(runtime, task["id"], "failed")
    r = client.post(f"/api/v1/tasks/{task['id']}/retry", json={})
    assert r.status_code == 200


def test_fast_task_serialiser_matches_the_documented_schema() -> None:
    """Submit and batch answer through task_to_dict (no marshmallow); it must stay identical to
    what TaskSchema (the OpenAPI description) dumps."""
    import datetime as dt
    import uuid

    from taskmill.api.schemas import TaskSchema
    from taskmill.models import Task
    from taskmill.models import TaskStatus
    from taskmill.serialize import task_to_dict

    now = dt.datetime(2026, 11, 28, 10, 0, 0, 123456, tzinfo=dt.UTC)
    task = Task(
        id=uuid.uuid4(),
        type="echo",
        payload={"a": [1, {"b": None}]},
        status=TaskStatus.FAILED,
        tags=["x", "y"],
        depends_on=[str(uuid.uuid4())],
        error={"type": "E", "message": "m", "traceback": "t"},
        result={"r": 1.5},
        progress=0.25,
        run_at=now,
        created_at=now,
        started_at=now,
        finished_at=now,
        updated_at=now,
        idempotency_key="k",
        callback_url="https://example.com/cb",
        worker="w",
        attempts=2,
    )
    assert task_to_dict(task) == TaskSchema().dump(task)
    assert task_to_dict(task)["created_at"] == "2026-11-28T10:00:00.123Z"
