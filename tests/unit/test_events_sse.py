"""``GET /api/v1/events`` through Flask's test client (SQLite): format, filters, resume, scoping."""

from __future__ import annotations

import datetime as dt
import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from taskmill.api.events import hub_of


def parse(chunks: Iterator[bytes], want: int, timeout: float = 15.0) -> list[dict[str, Any]]:
    """Read server-sent events (and comments) until ``want`` events arrived."""
    out: list[dict[str, Any]] = []
    buf = ""
    deadline = time.monotonic() + timeout
    for chunk in chunks:
        buf += chunk.decode()
        while "\n\n" in buf:
            block, buf = buf.split("\n\n", 1)
            item: dict[str, Any] = {}
            for line in block.split("\n"):
                if line.startswith(":"):
                    item["comment"] = line[1:].strip()
                elif ":" in line:
                    k, v = line.split(":", 1)
                    item[k] = v[1:] if v.startswith(" ") else v
            if "data" in item and item.get("event") != "reset":
                item["data"] = json.loads(item["data"])
            out.append(item)
        if sum(1 for i in out if "id" in i) >= want or time.monotonic() > deadline:
            break
    return out


def events_of(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [i for i in items if "id" in i]


def open_stream(client: Any, url: str = "/api/v1/events", **kw: Any) -> Any:
    r = client.get(url, buffered=False, **kw)
    assert r.status_code == 200, r.get_data()
    assert r.mimetype == "text/event-stream"
    return r


def test_stream_carries_id_event_and_the_task(client: Any, runtime: Any) -> None:
    r = open_stream(client)
    try:
        task = client.post("/api/v1/tasks", json={"type": "t.echo", "payload": {"x": 1}}).json
        got = events_of(parse(r.response, 1))
    finally:
        r.close()
    assert got[0]["event"] == "task.submitted"
    assert got[0]["data"]["id"] == task["id"] and got[0]["data"]["payload"] == {"x": 1}
    assert int(got[0]["id"]) > 0


def test_filters_and_resume_with_last_event_id(client: Any, runtime: Any) -> None:
    a = client.post("/api/v1/tasks", json={"type": "t.echo", "queue": "qa"}).json
    b = client.post("/api/v1/tasks", json={"type": "t.echo", "queue": "qb"}).json
    runtime.lifecycle.cancel(uuid.UUID(a["id"]), None)
    # resume from 0: the backlog first, filtered by queue
    r = open_stream(client, "/api/v1/events?queue=qa", headers={"Last-Event-ID": "0"})
    try:
        got = events_of(parse(r.response, 2))
    finally:
        r.close()
    assert [(e["event"], e["data"]["id"]) for e in got] == [
        ("task.submitted", a["id"]),
        ("task.cancelled", a["id"]),
    ]
    # resume after the first event with the query parameter, filtered by task id
    first = int(got[0]["id"])
    r = open_stream(client, f"/api/v1/events?last_event_id={first}&task_id={a['id']}&task_id={b['id']}")
    try:
        again = events_of(parse(r.response, 2, timeout=3))
    finally:
        r.close()
    assert [e["event"] for e in again][:2] == ["task.submitted", "task.cancelled"]
    assert again[0]["data"]["id"] == b["id"] and int(again[0]["id"]) > first


def test_a_resume_older_than_the_journal_gets_reset_first(client: Any, runtime: Any) -> None:
    for _ in range(3):
        client.post("/api/v1/tasks", json={"type": "t.echo"})
    oldest = runtime.storage.events.oldest_id()
    runtime.storage.events.prune(dt.datetime.now(dt.UTC) + dt.timedelta(seconds=5), 1)  # drop the oldest one
    assert runtime.storage.events.oldest_id() > oldest
    r = open_stream(client, headers={"Last-Event-ID": "0"})
    try:
        items = parse(r.response, 2)
    finally:
        r.close()
    kinds = [i.get("event") for i in items if "event" in i]
    assert kinds[0] == "reset" and kinds[1:] == ["task.submitted", "task.submitted"]


def test_keepalive_comment_on_a_quiet_stream(client: Any, app: Any) -> None:
    app.config["TASKMILL_EVENTS_KEEPALIVE"] = 0.3
    r = open_stream(client)
    try:
        seen: list[str] = []
        for chunk in r.response:
            seen.append(chunk.decode())
            if any("keepalive" in s for s in seen):
                break
    finally:
        r.close()
    assert ": keepalive\n\n" in seen


def test_bad_last_event_id_is_422(client: Any) -> None:
    assert client.get("/api/v1/events", headers={"Last-Event-ID": "abc"}).status_code == 422
    assert client.get("/api/v1/events?last_event_id=-1").status_code == 422
    assert client.get("/api/v1/events?task_id=nope").status_code == 422


def test_streams_beyond_the_cap_are_503_and_closing_frees_them(client: Any, app: Any) -> None:
    hub = hub_of(app)
    hub.max_streams = 2
    first, second = open_stream(client), open_stream(client)
    try:
        next(first.response), next(second.response)
        r = client.get("/api/v1/events")
        assert r.status_code == 503 and r.headers["Retry-After"]
    finally:
        first.close()
        second.close()
    assert hub.open_streams == 0
    third = open_stream(client)
    third.close()


@pytest.mark.parametrize("role", ["viewer", "admin"])
def test_streams_are_tenant_scoped(secured: Any, role: str) -> None:
    c = secured.client
    secured.app.config["TASKMILL_EVENTS_KEEPALIVE"] = 0.3  # a chunk at least every 0.3 s ends parse()
    mine = secured.submit("acme")
    theirs = secured.submit("other")
    r = c.get("/api/v1/events", headers={**secured.headers(role), "Last-Event-ID": "0"}, buffered=False)
    assert r.status_code == 200
    try:
        got = events_of(parse(r.response, 2, timeout=2))
    finally:
        r.close()
    ids = {e["data"]["id"] for e in got}
    if role == "admin":
        assert ids == {str(mine.id), str(theirs.id)}
    else:
        assert ids == {str(mine.id)}
    assert c.get("/api/v1/events").status_code == 401


def test_a_stream_with_a_maximum_age_ends_and_frees_its_place(client: Any, app: Any) -> None:
    app.config["TASKMILL_EVENTS_MAX_AGE"] = 0.3
    started = time.monotonic()
    body = client.get("/api/v1/events").get_data(as_text=True)  # returns: the stream ended
    assert time.monotonic() - started < 5
    assert body.startswith("retry: ")
    assert hub_of(app).open_streams == 0
