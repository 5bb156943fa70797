"""Logs: JSON lines with task and request fields, secrets masked, library noise quiet."""

from __future__ import annotations

import io
import json
import logging
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from taskmill import logs
from taskmill.models import Task


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    root = logging.getLogger()
    before = (list(root.handlers), root.level)
    logs.configure("INFO", "json", secrets=["s3cret-jwt-key-value"], stream=stream)
    try:
        yield stream
    finally:
        for h in list(root.handlers):
            root.removeHandler(h)
        for h in before[0]:
            root.addHandler(h)
        root.setLevel(before[1])


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


def test_one_json_object_per_line_with_the_task_fields(captured: io.StringIO) -> None:
    task = Task(id=uuid.uuid4(), type="echo", queue="q1", tenant="acme", attempts=2)
    log = logging.getLogger("taskmill.test")
    with logs.task_context(task, worker="w-1"):
        log.info("ran %s", "it")
    log.info("outside")
    inside, outside = lines(captured)
    assert inside["msg"] == "ran it" and inside["level"] == "INFO" and inside["logger"] == "taskmill.test"
    assert inside["task_id"] == str(task.id)
    assert (inside["type"], inside["queue"], inside["attempt"], inside["worker"], inside["tenant"]) == (
        "echo",
        "q1",
        2,
        "w-1",
        "acme",
    )
    assert "task_id" not in outside
    assert inside["ts"].endswith("Z")


def test_secrets_are_masked_whoever_logs_them(captured: io.StringIO) -> None:
    log = logging.getLogger("somelib")
    log.warning("connecting to postgresql://app:hunter2-pw@db:5432/x")
    log.warning("key %s", "tm_ab12cd_0123456789abcdefXYZ")
    log.warning("header Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.e30.sig")
    log.warning("configured: s3cret-jwt-key-value")
    try:
        raise RuntimeError("boom with tm_ab12cd_0123456789abcdefXYZ")
    except RuntimeError:
        log.exception("failed")
    text = captured.getvalue()
    for secret in ("hunter2-pw", "0123456789abcdefXYZ", "eyJhbGciOiJIUzI1NiJ9", "s3cret-jwt-key-value"):
        assert secret not in text
    assert "postgresql://app:***@db" in text and "tm_ab12cd_***" in text


def test_library_chatter_is_quiet_at_info(captured: io.StringIO) -> None:
    logging.getLogger("alembic.runtime.migration").info("Context impl SQLiteImpl.")
    logging.getLogger("alembic.runtime.migration").warning("a real problem")
    assert [line["msg"] for line in lines(captured)] == ["a real problem"]


def test_text_on_a_terminal_json_otherwise() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    root = logging.getLogger()
    before = (list(root.handlers), root.level)
    try:
        tty = Tty()
        logs.configure("INFO", "auto", stream=tty)
        logging.getLogger("x").info("hello")
        assert "INFO x[" in tty.getvalue() and not tty.getvalue().startswith("{")
        plain = io.StringIO()
        logs.configure("INFO", "auto", stream=plain)
        logging.getLogger("x").info("hello")
        assert json.loads(plain.getvalue())["msg"] == "hello"
    finally:
        for h in list(root.handlers):
            root.removeHandler(h)
        for h in before[0]:
            root.addHandler(h)
        root.setLevel(before[1])


def test_every_api_answer_carries_a_request_id_and_its_log_lines_too(
    make_app: Any, captured: io.StringIO
) -> None:
    app = make_app()
    client = app.test_client()

    @app.get("/api/v1/_log_probe")
    def probe() -> Any:
        logging.getLogger("taskmill.api").info("inside the request")
        return {}

    from taskmill.api.auth import public

    app.view_functions["probe"] = public(probe)
    given = client.get("/api/v1/_log_probe", headers={"X-Request-ID": "req-42.a"})
    assert given.headers["X-Request-ID"] == "req-42.a"
    made = client.get("/health/live", headers={"X-Request-ID": "bad id with spaces"})
    assert len(made.headers["X-Request-ID"]) == 32 and " " not in made.headers["X-Request-ID"]
    probe_lines = [line for line in lines(captured) if line["msg"] == "inside the request"]
    assert probe_lines and probe_lines[0]["request_id"] == "req-42.a"


def test_a_handlers_own_log_lines_carry_its_task(make_app: Any, captured: io.StringIO) -> None:
    from taskmill import handler
    from taskmill import hookimpl
    from taskmill.execution import run_handler

    @handler("t.chatty")
    def chatty(ctx: Any, payload: dict[str, Any]) -> dict[str, Any]:
        ctx.logger.info("working on it")
        return {}

    class Chatty:
        @hookimpl
        def taskmill_handlers(self) -> list[Any]:
            return [chatty]

    rt = make_app(plugins=[Chatty()]).extensions["taskmill"]
    rt.worker_id = "w-9"
    task = Task(id=uuid.uuid4(), type="t.chatty", queue="q7", tenant="acme", attempts=1)
    assert run_handler(rt, task).kind == "completed"
    [line] = [x for x in lines(captured) if x["msg"] == "working on it"]
    assert (line["task_id"], line["queue"], line["tenant"], line["worker"], line["attempt"]) == (
        str(task.id),
        "q7",
        "acme",
        "w-9",
        1,
    )
