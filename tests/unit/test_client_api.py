"""taskmill.client against the real app served on a local port (werkzeug, in a thread).

Tasks are driven through the lifecycle as a worker would (``run_to_end``), so these tests need no
worker process; tests/integration/test_client_e2e.py runs the client against ``taskmill run``.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from werkzeug.serving import make_server

from taskmill import client as tc
from tests.unit.conftest import Secured
from tests.unit.conftest import build_secured_app
from tests.unit.conftest import run_to_end


class Served:
    def __init__(self, secured: Secured) -> None:
        self.secured = secured
        self.server = make_server("127.0.0.1", 0, secured.app, threaded=True)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def client(self, role: str = "submitter", tenant: str = "acme", **kw: Any) -> tc.Client:
        key = self.secured.keys[(role, "root" if role == "admin" else tenant)]
        return tc.Client(self.url, api_key=key, timeout=10, backoff=0.01, **kw)

    def close(self) -> None:
        self.server.shutdown()
        self.thread.join(timeout=10)
        self.secured.runtime.close()


@pytest.fixture
def served(tmp_path: Any) -> Iterator[Served]:
    s = Served(Secured(build_secured_app(tmp_path / "c.db", max_payload_bytes=4096)))
    yield s
    s.close()


def test_importing_the_client_loads_no_server_library():
    code = (
        "import sys, taskmill.client\n"
        "heavy = ('flask', 'werkzeug', 'sqlalchemy', 'alembic', 'psycopg2', 'redis', 'rq', 'pika',"
        " 'marshmallow', 'flask_smorest', 'kombu', 'limits')\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_submit_get_cancel_retry(served):
    c = served.client()
    task = c.submit("t.echo", {"a": 1}, tags=["x"], priority=7)
    assert task["status"] == "queued" and task["payload"] == {"a": 1} and task["priority"] == 7
    assert c.get(task["id"])["id"] == task["id"]
    cancelled = c.cancel(task["id"])
    assert cancelled["status"] == "cancelled"
    with pytest.raises(tc.Conflict) as info:
        c.cancel(task["id"])
    assert info.value.status == 409 and info.value.body["code"] == 409
    again = c.retry(task["id"])
    assert again["status"] == "queued"


def test_idempotent_submit_returns_the_first_task(served):
    c = served.client()
    first = c.submit("t.echo", {"n": 1}, idempotency_key="k-1")
    assert c.submit("t.echo", {"n": 1}, idempotency_key="k-1")["id"] == first["id"]
    with pytest.raises(tc.Conflict):
        c.submit("t.echo", {"n": 2}, idempotency_key="k-1")


def test_list_iterates_every_page(served):
    c = served.client()
    made = c.submit_many([{"type": "t.echo", "payload": {"i": i}, "tags": ["paged"]} for i in range(7)])
    assert [t["payload"]["i"] for t in made] == list(range(7))
    listed = list(c.list(tag="paged", page_size=2))
    assert sorted(t["id"] for t in listed) == sorted(t["id"] for t in made)
    assert len(listed) == 7  # four pages, each task once
    assert list(c.list(tag="nothing-has-this")) == []


def test_errors_map_to_their_classes(served):
    c = served.client()
    with pytest.raises(tc.ValidationFailed) as info:
        c.submit("no.such.handler")
    assert info.value.status == 422 and "type" in info.value.errors
    with pytest.raises(tc.ValidationFailed) as info:
        c.submit_many([{"type": "t.strict", "payload": {"n": 99}}])
    assert "0" in info.value.errors["tasks"]
    with pytest.raises(tc.NotFound):
        c.get("00000000-0000-4000-8000-000000000000")
    with pytest.raises(tc.PayloadTooLarge):
        c.submit("t.echo", {"big": "x" * 10_000})
    with pytest.raises(tc.Unauthorized) as info:
        tc.Client(served.url, api_key="tm_nope_nope").get("00000000-0000-4000-8000-000000000000")
    assert info.value.status == 401
    with pytest.raises(tc.Forbidden):
        served.client("viewer").submit("t.echo")
    for cls in (tc.ValidationFailed, tc.NotFound, tc.Unauthorized, tc.RateLimited, tc.Unavailable):
        assert issubclass(cls, tc.ClientError)


def test_rate_limited_carries_retry_after(tmp_path):
    s = Served(Secured(build_secured_app(tmp_path / "r.db", rate_limit="2/minute")))
    try:
        c = s.client()
        with pytest.raises(tc.RateLimited) as info:
            for _ in range(5):
                list(c.list(page_size=1))
        assert info.value.status == 429 and info.value.retry_after and info.value.retry_after >= 1
    finally:
        s.close()


def test_connection_errors_are_retried_for_reads_only(served):
    dead = tc.Client("http://127.0.0.1:9", api_key="k", timeout=1, retries=2, backoff=0.01)
    started = time.monotonic()
    with pytest.raises(tc.ConnectionFailed) as info:
        dead.get("00000000-0000-4000-8000-000000000000")
    assert info.value.status is None and time.monotonic() - started < 10


def _finish_later(served: Served, task_id: str, kind: str, delay: float = 0.5) -> threading.Thread:
    def finish() -> None:
        time.sleep(delay)
        run_to_end(served.secured.runtime, task_id, kind)

    thread = threading.Thread(target=finish, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("use_events", [True, False])
def test_wait_returns_the_final_task(served, use_events):
    c = served.client()
    task = c.submit("t.echo", {"x": 1})
    thread = _finish_later(served, task["id"], "completed")
    final = c.wait(task["id"], timeout=20, use_events=use_events)
    thread.join()
    assert final["status"] == "completed" and final["result"] == {"ok": True}


def test_wait_returns_a_failed_task_and_times_out(served):
    c = served.client()
    task = c.submit("t.echo")
    with pytest.raises(TimeoutError):
        c.wait(task["id"], timeout=0.5)
    _finish_later(served, task["id"], "failed", delay=0).join()
    final = c.wait(task["id"], timeout=10)
    assert final["status"] == "failed" and final["error"]["message"] == "boom"


def test_events_follow_a_task_and_resume_after_an_id(served):
    c = served.client()
    task = c.submit("t.echo")
    seen: list[tuple[Any, str, Any]] = []
    _finish_later(served, task["id"], "completed")
    stream = c.events(task_id=task["id"], last_event_id=0, read_timeout=20)
    for event in stream:
        seen.append(event)
        if event[1] == "task.completed":
            break
    stream.close()
    names = [name for _, name, _ in seen]
    assert names[0] == "task.submitted" and names[-1] == "task.completed", names
    assert all(data["id"] == task["id"] for _, _, data in seen)
    ids = [event_id for event_id, _, _ in seen]
    assert ids == sorted(ids)
    # resume after the first event: the rest again, nothing before it
    resumed = []
    stream = c.events(task_id=task["id"], last_event_id=ids[0], read_timeout=20)
    for event in stream:
        resumed.append(event)
        if event[1] == "task.completed":
            break
    stream.close()
    assert [e[0] for e in resumed] == ids[1:]
