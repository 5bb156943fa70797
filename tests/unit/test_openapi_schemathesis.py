"""schemathesis with every check, run as a new user would: ``schemathesis run --checks all``.

The auth-on app is served on a real local port (werkzeug, in a thread) and the schemathesis CLI
fuzzes every operation the document lists — core's and every plugin's, so endpoints added later
are covered the day they land — through all its phases (examples, coverage, fuzzing, stateful).
Every response must conform to the document, every schema-valid request must be accepted and
every schema-violating one refused, 405s must carry ``Allow``, nothing may be a 5xx.

What the run is told, and why (each is a property of the contract, not a gap in the document):
- ``use_after_free`` is off: ``DELETE /api/v1/tasks/{id}`` *cancels* (API.md); the task stays
  readable as ``cancelled``, so "still there after DELETE" is the contract.
- 413 counts as refusing a schema-violating request: a batch of 1,001 tasks can exceed
  ``TASKMILL_MAX_PAYLOAD_BYTES`` before its length is checked.
- Generated submissions are adjusted by a hook: ``depends_on`` is emptied (it must name existing
  tasks of the caller, which no document can list; the lifecycle tests cover references), and a
  body ``idempotency_key`` sent with an ``Idempotency-Key`` header is made equal to it (the two are
  one key, and differing is a 422; a document cannot tie a header to a body field).
- Generated workflows get distinct keys and no ``depends_on`` (keys must be unique and name each
  other or existing tasks: rules between array items; tests/unit/test_workflows.py covers them).
- Operations answering ``text/event-stream`` (the events stream) are left out: the connection
  stays open by design; tests/unit/test_client_events.py and the SSE tests cover it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from werkzeug.serving import make_server

from tests.unit.conftest import Secured
from tests.unit.conftest import build_secured_app

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parents[2]

MAX_EXAMPLES = 10
"""Generated requests per operation and phase (about a minute for 30 operations on 2 busy cores)."""

STREAMING = {"streamEvents"}
"""Operations that hold the connection open, in case the document does not say
``text/event-stream`` for them (operations that do are found by their content type)."""

HOOKS = """
import uuid

import schemathesis

SUBMITS = {"/api/v1/tasks", "/api/v1/tasks/batch"}


def _is_uuid(value):
    try:
        uuid.UUID(value)
    except (TypeError, ValueError, AttributeError):
        return False
    return True


def _is_key(value):
    return isinstance(value, str) and 1 <= len(value) <= 200


def _without_references(task):
    refs = task.get("depends_on") if isinstance(task, dict) else None
    if isinstance(refs, list) and len(refs) <= 1000 and all(_is_uuid(r) for r in refs):
        return {**task, "depends_on": []}
    return task


def _workflow(body):
    # A workflow's keys must be unique and name each other (or existing tasks): rules between
    # array items that a document cannot state. Keep the keys distinct, drop the references.
    tasks = body.get("tasks")
    if not isinstance(tasks, list):
        return body
    seen = set()
    out = []
    for i, task in enumerate(tasks):
        if not isinstance(task, dict):
            out.append(task)
            continue
        task = dict(task)
        if isinstance(task.get("depends_on"), list) and all(_is_key(d) for d in task["depends_on"]):
            task["depends_on"] = []
        key = task.get("key")
        if _is_key(key):  # a malformed key (not a string) is the negative phases' business
            if key in seen:
                task["key"] = (f"{i}-" + key)[:200]
            seen.add(task["key"])
        out.append(task)
    return {**body, "tasks": out}


@schemathesis.hook
def map_case(ctx, case):
    body = case.body
    if case.operation.path == "/api/v1/workflows" and isinstance(body, dict):
        case.body = _workflow(body)
        return case
    if case.operation.path not in SUBMITS or not isinstance(body, dict):
        return case
    body = _without_references(body)
    if isinstance(body.get("tasks"), list):
        body = {**body, "tasks": [_without_references(t) for t in body["tasks"]]}
    header = (case.headers or {}).get("Idempotency-Key")
    if _is_key(header) and _is_key(body.get("idempotency_key")):
        body = {**body, "idempotency_key": header}  # one key given twice must be the same key
    case.body = body
    return case
"""

CONFIG = """
[checks]
use_after_free.enabled = false
negative_data_rejection.expected-statuses = [400, 401, 403, 404, 405, 406, 409, 413, 415, 422, 428, 429]

# The coverage phase sends every case a schema defines (max-examples does not bound it): for
# createSchedule one per IANA zone of its timezone enum, 1,406 requests (104 s alone on the
# shared machine, half the run). Fuzzing and the stateful phase still send it valid and invalid
# schedules; tests/unit/test_schedules.py covers zones and cron.
[[operations]]
include-operation-id = "createSchedule"
phases.coverage.enabled = false
"""


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Secured]]:
    app = build_secured_app(tmp_path_factory.mktemp("st") / "st.db", max_payload_bytes=256 * 1024)
    secured = Secured(app)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", secured
    finally:
        server.shutdown()
        thread.join(timeout=10)
        secured.runtime.close()


def _streaming_operations(spec: dict[str, Any]) -> set[str]:
    found = set(STREAMING)
    for item in spec["paths"].values():
        for op in item.values():
            if not isinstance(op, dict):
                continue
            for response in op.get("responses", {}).values():
                if "text/event-stream" in (response.get("content") or {}):
                    found.add(op.get("operationId", ""))
    return found


def test_schemathesis_every_check_passes(served, tmp_path):
    base, secured = served
    spec = secured.client.get("/api/v1/openapi.json").get_json()
    (tmp_path / "taskmill_st_hooks.py").write_text(HOOKS)
    config = tmp_path / "schemathesis.toml"
    config.write_text(CONFIG)
    cmd = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "--config-file",
        str(config),
        "run",
        f"{base}/api/v1/openapi.json",
        "--checks",
        "all",
        "--exclude-checks",  # `--checks all` outranks the config file's use_after_free.enabled = false
        "use_after_free",
        "--max-examples",
        str(MAX_EXAMPLES),
        "--seed",
        "20261201",
        "--workers",
        "1",
        "--request-timeout",
        "20",
        "--no-color",
        "-H",
        secured.headers("admin")["Authorization"].join(["Authorization: ", ""]),
    ]
    for operation_id in sorted(_streaming_operations(spec)):
        cmd += ["--exclude-operation-id", operation_id]
    env = {
        **os.environ,
        "SCHEMATHESIS_HOOKS": "taskmill_st_hooks",
        "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]),
    }
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-20000:]
    assert "Tested: " in output and "failures" not in output.splitlines()[-1], output[-3000:]
