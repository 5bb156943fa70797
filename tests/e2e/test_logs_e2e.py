"""A whole `taskmill run` session's logs: JSON lines with task and request fields, no secrets.

One session on SQLite and one on PostgreSQL (a database URL with a password, for a role created
for the test), each with auth on, a JWT secret, a webhook secret, a metrics token and a server
secret. Tasks go through the API with the admin key (one completes, one fails with a traceback,
one ``http.request`` and a webhook meet a refused port); then the run is stopped and its whole
stdout and stderr are read.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from contextlib import contextmanager
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jwt
import pytest
import requests

from tests.e2e.conftest import ROOT
from tests.e2e.conftest import Installation
from tests.e2e.conftest import free_port
from tests.services import postgres_url
from tests.services import scratch_database

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

TASK_FIELDS = ("task_id", "type", "queue", "attempt", "worker", "tenant")
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def refused_port() -> int:
    """A loopback port nothing listens on (connections to it are refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Session:
    stdout: list[str]
    stderr: list[str]
    secrets: dict[str, str]
    task_ids: set[str] = field(default_factory=set)
    request_id: str = ""


@contextmanager
def password_role(base_url: str) -> Iterator[str]:
    """A scratch database owned by a new role that logs in with a password; the URL of it.
    The database and the role are dropped afterwards."""
    import psycopg2

    with scratch_database(base_url) as url:
        role = f"taskmill_logs_{secrets.token_hex(4)}"
        password = "pw" + secrets.token_hex(12)
        name = urlsplit(url).path.lstrip("/")
        admin = psycopg2.connect(base_url.replace("postgresql+psycopg2://", "postgresql://"))
        admin.autocommit = True
        try:
            with admin.cursor() as cur:
                cur.execute(f"CREATE ROLE \"{role}\" LOGIN PASSWORD '{password}'")
                cur.execute(f'ALTER DATABASE "{name}" OWNER TO "{role}"')
            parts = urlsplit(url)
            host = f"{parts.hostname}:{parts.port or 5432}"
            yield parts._replace(netloc=f"{role}:{password}@{host}").geturl()
        finally:
            with admin.cursor() as cur:
                cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                cur.execute(f'DROP ROLE IF EXISTS "{role}"')
            admin.close()


def _drain(stream: Any, into: list[str]) -> None:
    for line in stream:
        into.append(line.rstrip("\n"))


def run_session(workdir: Path, database_url: str) -> Session:
    """Start `taskmill run`, drive it through the API, stop it; everything it wrote."""
    values = {
        "TASKMILL_SECRET_KEY": "srv-" + secrets.token_hex(16),
        "TASKMILL_JWT_SECRET": "jwt-" + secrets.token_hex(20),
        "TASKMILL_WEBHOOK_SECRET": "whk-" + secrets.token_hex(16),
        "TASKMILL_METRICS_TOKEN": "met-" + secrets.token_hex(16),
    }
    password = urlsplit(database_url).password
    port = free_port()
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TASKMILL_")}
    env = {
        **clean,
        "PYTHONPATH": str(ROOT),
        "PYTHONUNBUFFERED": "1",
        "TASKMILL_LOAD_PLUGINS": "taskmill",
        "TASKMILL_MANAGER_INTERVAL": "0.2",
        "TASKMILL_DATABASE_URL": database_url,
        "TASKMILL_AUTH": "apikey",
        "TASKMILL_HTTP_ALLOW_PRIVATE": "1",
        "TASKMILL_WEBHOOK_ALLOW_PRIVATE": "1",
        **values,
    }
    for key in ("TASKMILL_LOG_LEVEL", "TASKMILL_LOG_FORMAT", "PROMETHEUS_MULTIPROC_DIR"):
        env.pop(key, None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "taskmill.cli", "run", "--port", str(port), "--concurrency", "2"],
        cwd=workdir,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    stderr: list[str] = []
    reader = threading.Thread(target=_drain, args=(proc.stderr, stderr), daemon=True)
    reader.start()
    inst = Installation(proc, f"http://127.0.0.1:{port}", env)
    session = Session(stdout=inst.lines, stderr=stderr, secrets=dict(values))
    if password:
        session.secrets["database password"] = password
    try:
        inst.wait_ready()
        assert inst.key, "taskmill run printed no admin key"
        session.secrets["admin API key"] = inst.key
        _drive(inst, session, port)
    finally:
        try:
            inst.stop()
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            reader.join(timeout=5)
            if proc.stderr is not None:
                proc.stderr.close()
    return session


def _drive(inst: Installation, session: Session, port: int) -> None:
    closed = refused_port()
    header_token = "hdr-" + secrets.token_hex(16)
    session.secrets["http.request header token"] = header_token
    session.request_id = "logs-e2e-" + secrets.token_hex(4)

    # a second key, created through the API (an API line with a request id)
    r = inst.post(
        "/api/v1/api-keys",
        {"tenant": "acme", "role": "submitter", "name": "logs"},
        headers={"X-Request-ID": session.request_id},
    )
    assert r.status_code == 201, r.text
    assert r.headers["X-Request-ID"] == session.request_id
    session.secrets["created API key"] = r.json()["key"]

    # a JWT credential, signed with the configured secret
    token = jwt.encode(
        {
            "sub": "svc",
            "tenant": "acme",
            "role": "submitter",
            "exp": dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5),
        },
        session.secrets["TASKMILL_JWT_SECRET"],
        algorithm="HS256",
    )
    session.secrets["JWT"] = token
    hook = f"http://127.0.0.1:{closed}/hook"
    submitted = [
        inst.post("/api/v1/tasks", {"type": "echo", "payload": {"hello": "logs"}}),
        inst.post("/api/v1/tasks", {"type": "fail", "payload": {"message": "on purpose"}, "max_retries": 0}),
        inst.post(
            "/api/v1/tasks",
            {
                "type": "http.request",
                "payload": {
                    "url": f"http://127.0.0.1:{closed}/refused",
                    "headers": {"Authorization": f"Bearer {header_token}"},
                    "timeout": 2,
                },
                "max_retries": 0,
                "callback_url": hook,
            },
        ),
        inst.post(
            "/api/v1/tasks", {"type": "sleep", "payload": {"seconds": 30}, "timeout": 1, "max_retries": 0}
        ),
        requests.post(
            inst.base + "/api/v1/tasks",
            json={"type": "echo", "payload": {"via": "jwt"}},
            headers={"Authorization": f"Bearer {token}"},
            timeout=10,
        ),
    ]
    for r in submitted:
        assert r.status_code == 201, r.text
    ids = [r.json()["id"] for r in submitted]
    session.task_ids.update(ids)
    inst.wait_task(ids[0], {"completed"})
    failed = inst.wait_task(ids[1], {"failed"})
    assert "Traceback" in (failed["error"].get("traceback") or "")
    inst.wait_task(ids[2], {"failed"})
    timed_out = inst.wait_task(ids[3], {"failed"})
    assert timed_out["error"]["type"] == "TimeoutError"
    r = requests.get(
        inst.base + f"/api/v1/tasks/{ids[4]}", headers={"Authorization": f"Bearer {token}"}, timeout=10
    )
    assert r.status_code == 200
    # the metrics token, as a scraper sends it
    scrape = requests.get(
        inst.base + "/metrics",
        headers={"Authorization": f"Bearer {session.secrets['TASKMILL_METRICS_TOKEN']}"},
        timeout=10,
    )
    assert scrape.status_code == 200
    time.sleep(2)  # the webhook's first attempt to the refused port, and its log line


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def session(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Session]:
    workdir = tmp_path_factory.mktemp("logs")
    with ExitStack() as stack:
        if request.param == "sqlite":
            url = f"sqlite:///{workdir}/taskmill.db"
        else:
            url = stack.enter_context(password_role(postgres_url()))
        yield run_session(workdir, url)


def _records(session: Session) -> list[dict[str, Any]]:
    out = []
    for n, line in enumerate(session.stderr, 1):
        try:
            record = json.loads(line)
        except ValueError:
            pytest.fail(f"stderr line {n} is not JSON: {line!r}")
        assert isinstance(record, dict), f"stderr line {n} is not an object: {line!r}"
        out.append(record)
    return out


def test_no_secret_appears_except_the_bootstrap_line(session: Session) -> None:
    key = session.secrets["admin API key"]
    shown = [line for line in session.stdout if key in line]
    assert shown == [f"Admin API key: {key}"]
    for what, value in session.secrets.items():
        pieces = {value}
        if value.startswith("tm_"):
            # the secret part of a key, alone: ``tm_<prefix>_<secret>``, where the 43-character
            # secret may itself hold ``_`` (splitting at the last one gave a few characters that
            # matched ordinary log lines)
            pieces.add(value.split("_", 2)[2])
        for piece in pieces:
            for stream, lines in (("stderr", session.stderr), ("stdout", session.stdout)):
                leaks = [line for line in lines if piece in line and line != f"Admin API key: {key}"]
                assert not leaks, f"{what} appears on {stream}: {leaks[:3]}"


def test_every_stderr_line_is_a_json_object(session: Session) -> None:
    records = _records(session)
    assert records, "taskmill run logged nothing"
    for record in records:
        assert {"ts", "level", "logger", "msg"} <= record.keys(), record


def test_lines_about_a_task_carry_its_fields(session: Session) -> None:
    about = [
        r
        for r in _records(session)
        if "task_id" in r or any(i in r.get("msg", "") + r.get("exc", "") for i in session.task_ids)
    ]
    assert about, "no log line about a task"
    messages = "\n".join(r["msg"] for r in about)
    assert "failed: RuntimeError: on purpose" in messages, messages
    assert "ran past its timeout" in messages, messages
    assert any("Traceback" in r.get("traceback", "") for r in about)
    for record in about:
        missing = [f for f in TASK_FIELDS if record.get(f) in (None, "")]
        assert not missing, f"a line about a task lacks {missing}: {record}"


def test_api_lines_carry_a_request_id(session: Session) -> None:
    records = _records(session)
    api = [r for r in records if r["logger"].startswith(("taskmill.api", "taskmill.auth"))]
    created = [r for r in api if "created for tenant acme" in r["msg"]]
    assert created, "the API key creation was not logged"
    assert created[0].get("request_id") == session.request_id
    for record in api:
        if "request_id" not in record:
            # set-up lines of an api process, outside any request
            assert not UUID.search(record["msg"]) or "bootstrap" in record["msg"], record


def test_alembic_chatter_is_silent_at_the_default_level(session: Session) -> None:
    noisy = [r for r in _records(session) if r["logger"].startswith("alembic")]
    assert not noisy, noisy[:3]
    everything = "\n".join(session.stderr + session.stdout)
    assert "Context impl" not in everything and "Will assume" not in everything
