"""Server-sent events through a real ``taskmill api`` (gunicorn, gthread) on PostgreSQL, read by a
real HTTP client: live events, resume with ``Last-Event-ID``, and 200 open streams that do not stop
the API from answering."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests

pytestmark = [pytest.mark.integration, pytest.mark.e2e, pytest.mark.slow]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def api(pg_url: str, tmp_path: Any) -> Iterator[str]:
    """``taskmill api`` with two gunicorn processes on a scratch database; yields its base URL."""
    port = _free_port()
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("TASKMILL_") or k.startswith("TASKMILL_TEST_")
    }
    env.update(
        TASKMILL_DATABASE_URL=pg_url,
        TASKMILL_AUTH="none",
        TASKMILL_API_WORKERS="2",
        TASKMILL_LOG_LEVEL="WARNING",
        PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "metrics"),
    )
    log = open(tmp_path / "api.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [sys.executable, "-m", "taskmill.cli", "api", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise AssertionError("taskmill api exited:\n" + (tmp_path / "api.log").read_text()[-3000:])
            try:
                if requests.get(base + "/health/live", timeout=1).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(
                    "taskmill api did not start:\n" + (tmp_path / "api.log").read_text()[-3000:]
                )
            time.sleep(0.2)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def read_events(response: requests.Response, want: int, timeout: float = 20) -> list[dict[str, Any]]:
    """Parse ``want`` events from a streaming response (comments skipped)."""
    out: list[dict[str, Any]] = []
    item: dict[str, Any] = {}
    deadline = time.monotonic() + timeout
    for raw in response.iter_lines(decode_unicode=True):
        if time.monotonic() > deadline:
            break
        if raw is None:
            continue
        if raw == "":
            if "id" in item or item.get("event") == "reset":
                out.append(item)
            item = {}
            if sum(1 for i in out if "id" in i) >= want:
                break
            continue
        if raw.startswith(":"):
            continue
        key, _, value = raw.partition(":")
        item[key] = value[1:] if value.startswith(" ") else value
    for i in out:
        if "data" in i and i.get("event") != "reset":
            i["data"] = json.loads(i["data"])
    return out


def test_live_events_then_resume_with_last_event_id(api: str) -> None:
    with requests.get(api + "/api/v1/events", stream=True, timeout=(5, 30)) as stream:
        assert stream.status_code == 200
        assert stream.headers["Content-Type"].startswith("text/event-stream")
        task = requests.post(
            api + "/api/v1/tasks", json={"type": "echo", "payload": {"n": 1}}, timeout=10
        ).json()
        requests.delete(api + f"/api/v1/tasks/{task['id']}", timeout=10)
        got = read_events(stream, 2)
    assert [(e["event"], e["data"]["id"]) for e in got] == [
        ("task.submitted", task["id"]),
        ("task.cancelled", task["id"]),
    ]
    assert got[1]["data"]["status"] == "cancelled"
    # the connection dropped; reconnect after the first event: the second comes again, then live ones
    first = got[0]["id"]
    headers = {"Last-Event-ID": first}
    with requests.get(api + "/api/v1/events", stream=True, headers=headers, timeout=(5, 30)) as stream:
        later = requests.post(api + "/api/v1/tasks", json={"type": "echo"}, timeout=10).json()
        resumed = read_events(stream, 2)
    assert [e["id"] for e in resumed][0] == got[1]["id"]
    assert resumed[1]["data"]["id"] == later["id"] and int(resumed[1]["id"]) > int(got[1]["id"])


def _open_raw_stream(host: str, port: int) -> socket.socket:
    sock = socket.create_connection((host, port), timeout=10)
    sock.sendall(
        f"GET /api/v1/events HTTP/1.1\r\nHost: {host}:{port}\r\nAccept: text/event-stream\r\n\r\n".encode()
    )
    return sock


def test_two_hundred_open_streams_do_not_stop_the_api(api: str) -> None:
    host, port = api.removeprefix("http://").split(":")
    socks = [_open_raw_stream(host, int(port)) for _ in range(200)]
    try:
        heads = []
        for s in socks:
            heads.append(s.recv(4096).decode(errors="replace").split("\r\n", 1)[0])
        assert all(h.endswith("200 OK") for h in heads), sorted(set(heads))
        # every stream holds a thread now; ordinary requests must still be answered promptly
        started = time.monotonic()
        for i in range(20):
            r = requests.post(api + "/api/v1/tasks", json={"type": "echo", "payload": {"i": i}}, timeout=10)
            assert r.status_code == 201
            assert requests.get(api + "/api/v1/tasks?page_size=1", timeout=10).status_code == 200
        elapsed = time.monotonic() - started
        assert elapsed < 20, f"40 requests took {elapsed:.1f} s with 200 streams open"
        # and the streams do receive those events
        socks[0].settimeout(10)
        seen = b""
        while seen.count(b"event: task.submitted") < 20:
            chunk = socks[0].recv(65536)
            assert chunk, "stream closed"
            seen += chunk
    finally:
        for s in socks:
            s.close()
