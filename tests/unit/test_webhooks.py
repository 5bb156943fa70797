"""Webhook delivery end to end on SQLite: the SQL broker's pool POSTs to a real local server."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from http.server import ThreadingHTTPServer
from typing import Any

import pytest

import taskmill.worker
from taskmill.journal import JournalFeed
from taskmill.models import Task
from taskmill.models import TaskQuery
from taskmill.models import TaskStatus
from taskmill.runtime import Runtime
from taskmill.serialize import task_to_dict
from taskmill.worker import WorkerOptions
from taskmill.worker import set_current_runtime
from taskmill_handlers.webhook import WEBHOOK_TYPE
from tests.storages import runtime_on

S = TaskStatus
SECRET = "webhook-test-secret"


class Receiver:
    """A local HTTP server that records every request and answers ``status``."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.status = 204
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the http.server API
                length = int(self.headers.get("Content-Length") or 0)
                receiver.requests.append(
                    {"path": self.path, "headers": dict(self.headers), "body": self.rfile.read(length)}
                )
                self.send_response(receiver.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str = "/hook", host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    srv = Receiver()
    try:
        yield srv
    finally:
        srv.close()


@pytest.fixture
def make_rt(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Build a runtime with the built-in handlers, made the worker's current runtime."""
    monkeypatch.setattr(taskmill.worker, "_RUNTIME", None)  # restored after the test
    stack: list[Any] = []

    def make(**overrides: Any) -> Runtime:
        values = {"load_plugins": ("sql", "handlers"), "webhook_secret": SECRET, **overrides}
        ctx = runtime_on("sqlite", tmp_path, **values)
        rt = ctx.__enter__()
        stack.append(ctx)
        set_current_runtime(rt)  # the pool's forked children inherit it
        return rt

    yield make
    for ctx in reversed(stack):
        ctx.__exit__(None, None, None)


def submit(rt: Runtime, **body: Any) -> Task:
    body.setdefault("type", "echo")
    [(task, _)] = rt.lifecycle.submit([rt.lifecycle.build(body, "acme")])
    return task


def drain(rt: Runtime) -> None:
    """Run the pool in burst mode, then the manager's journal feed (which submits deliveries),
    until no task is queued."""
    feed = JournalFeed(rt)
    for _ in range(5):
        rt.broker.run_worker(WorkerOptions(queues=["default"], concurrency=1, burst=True))
        feed.run_once()
        if not rt.storage.tasks.list(TaskQuery(status="queued", limit=1))[1]:
            return
    raise AssertionError("tasks are still queued")


def all_tasks(rt: Runtime) -> list[Task]:
    return rt.storage.tasks.list(TaskQuery(limit=100))[0]


def deliveries(rt: Runtime) -> list[Task]:
    return [t for t in all_tasks(rt) if t.type == WEBHOOK_TYPE]


def test_a_completed_task_is_posted_signed_to_its_callback(make_rt: Any, receiver: Receiver) -> None:
    rt = make_rt(webhook_allow_private=True)
    task = submit(rt, payload={"n": 1}, callback_url=receiver.url())
    drain(rt)

    assert len(receiver.requests) == 1
    req = receiver.requests[0]
    final = rt.storage.tasks.get(task.id)
    assert final.status is S.COMPLETED
    body = json.loads(req["body"])
    assert body == task_to_dict(final)
    assert body["status"] == "completed" and body["result"] == {"n": 1}
    headers = {k.lower(): v for k, v in req["headers"].items()}
    expected = hmac.new(SECRET.encode(), req["body"], hashlib.sha256).hexdigest()
    assert hmac.compare_digest(headers["x-taskmill-signature"], f"sha256={expected}")
    assert headers["content-type"] == "application/json"
    assert headers["x-taskmill-task"] == str(task.id)
    assert headers["x-taskmill-event"] == "completed"
    assert req["path"] == "/hook"

    [delivery] = deliveries(rt)
    assert delivery.status is S.COMPLETED and delivery.callback_url is None  # no webhook of webhooks
    assert delivery.payload == {"url": receiver.url(), "task_id": str(task.id), "event": "completed"}
    assert (delivery.queue, delivery.max_retries, delivery.timeout) == ("default", 8, 30)
    assert delivery.result == {"delivered": True, "status": 204, "event": "completed"}

    rt.host.task_event(final, "completed", rt)  # a repeated event submits nothing new
    assert len(all_tasks(rt)) == 2


def test_the_server_secret_signs_when_no_webhook_secret_is_set(make_rt: Any, receiver: Receiver) -> None:
    rt = make_rt(webhook_allow_private=True, webhook_secret="")
    submit(rt, callback_url=receiver.url())
    drain(rt)
    [req] = receiver.requests
    expected = hmac.new(rt.secret_key.encode(), req["body"], hashlib.sha256).hexdigest()
    assert req["headers"]["X-Taskmill-Signature"] == f"sha256={expected}"


def test_a_failing_receiver_is_retried_with_back_off(make_rt: Any, receiver: Receiver) -> None:
    rt = make_rt(webhook_allow_private=True)
    receiver.status = 500
    submit(rt, callback_url=receiver.url())
    drain(rt)
    [delivery] = deliveries(rt)
    assert delivery.status is S.SCHEDULED and delivery.attempts == 1
    assert delivery.error["type"] == "WebhookDeliveryFailed" and "HTTP 500" in delivery.error["message"]
    assert delivery.run_at is not None
    assert len(receiver.requests) == 1


def test_a_loopback_receiver_is_refused_at_delivery_without_retry(make_rt: Any, receiver: Receiver) -> None:
    rt = make_rt()  # webhook_allow_private off
    task = submit(rt, type="fail", max_retries=0, callback_url=receiver.url(host="localhost"))
    drain(rt)
    assert rt.storage.tasks.get(task.id).status is S.FAILED
    [delivery] = deliveries(rt)
    assert delivery.status is S.FAILED and delivery.attempts == 1
    assert delivery.error["type"] == "ForbiddenAddress"
    assert "TASKMILL_WEBHOOK_ALLOW_PRIVATE" in delivery.error["message"]
    assert receiver.requests == []


def test_cancelling_a_pending_task_delivers_cancelled(make_rt: Any, receiver: Receiver) -> None:
    rt = make_rt(webhook_allow_private=True)
    task = submit(rt, delay=3600, callback_url=receiver.url())
    cancelled, done = rt.lifecycle.cancel(task.id, "acme")
    assert done and cancelled.status is S.CANCELLED
    drain(rt)
    [req] = receiver.requests
    body = json.loads(req["body"])
    assert body["status"] == "cancelled" and body["id"] == str(task.id)
    assert req["headers"]["X-Taskmill-Event"] == "cancelled"


def test_a_task_without_callback_creates_no_delivery(make_rt: Any, receiver: Receiver) -> None:
    rt = make_rt(webhook_allow_private=True)
    submit(rt)
    drain(rt)
    assert len(all_tasks(rt)) == 1
    assert receiver.requests == []


def test_a_delivery_only_sends_a_task_of_its_tenant_to_that_tasks_callback(
    make_rt: Any, receiver: Receiver
) -> None:
    """A hand-made delivery cannot send another tenant's task, or a task to another URL."""
    rt = make_rt(webhook_allow_private=True)
    theirs = submit(rt, callback_url=receiver.url("/theirs"))
    drain(rt)
    receiver.requests.clear()
    payload = {"url": receiver.url("/mine"), "task_id": str(theirs.id), "event": "completed"}
    [(other_tenant, _)] = rt.lifecycle.submit(
        [rt.lifecycle.build({"type": WEBHOOK_TYPE, "payload": payload}, "evil")]
    )
    [(other_url, _)] = rt.lifecycle.submit(
        [rt.lifecycle.build({"type": WEBHOOK_TYPE, "payload": payload}, "acme")]
    )
    drain(rt)
    for t in (other_tenant, other_url):
        done = rt.storage.tasks.get(t.id)
        assert done.status is S.FAILED and done.error["type"] == "WebhookRefused" and done.attempts == 1
    assert receiver.requests == []
