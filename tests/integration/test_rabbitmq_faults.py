"""The RabbitMQ broker under faults, with real ``taskmill run`` processes over HTTP.

* RabbitMQ unreachable for one installation (its vhost's permissions withdrawn and its
  connections closed): the API keeps answering 201, ``/health`` says the broker is down, and
  once RabbitMQ is back every accepted task completes, on the same worker process.
* The RabbitMQ node restarted mid-run (``rabbitmqctl stop_app``/``start_app``, restored in
  ``finally``): no task accepted with 2xx is lost. It stops RabbitMQ for everyone on the machine,
  so it runs in CI (``CI=true``) or with ``TASKMILL_TEST_RABBITMQ_RESTART=1``.
* A task running four times the AMQP heartbeat keeps its worker's connection and runs once.
* A task that exhausts its retries also reaches the dead-letter exchange.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pika
import pytest
from taskmill_rabbitmq import topology

from tests.e2e.conftest import Installation
from tests.e2e.conftest import taskmill_run
from tests.services import amqp_url
from tests.services import postgres_url
from tests.services import rabbitmq_vhost
from tests.services import scratch_database

pytestmark = [pytest.mark.integration, pytest.mark.e2e, pytest.mark.slow]


def rabbitmqctl(*args: str, check: bool = True) -> str:
    return subprocess.run(
        ["rabbitmqctl", "-q", *args], check=check, capture_output=True, text=True, timeout=120
    ).stdout


def vhost_of(url: str) -> str:
    return pika.URLParameters(url).virtual_host


@pytest.fixture
def services() -> Iterator[dict[str, str]]:
    with ExitStack() as stack:
        db = stack.enter_context(scratch_database(postgres_url()))
        vhost = stack.enter_context(rabbitmq_vhost(amqp_url()))
        yield {"TASKMILL_DATABASE_URL": db, "TASKMILL_BROKER_URL": vhost, "TASKMILL_REPUBLISH_AFTER": "2"}


def wait_until(predicate: Any, timeout: float, what: str, inst: Installation) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}:\n" + "\n".join(inst.lines[-40:]))


def health(inst: Installation) -> tuple[int, dict[str, Any]]:
    r = inst.get("/health")
    return r.status_code, r.json()


def statuses(inst: Installation, ids: list[str]) -> dict[str, str]:
    return {i: inst.get(f"/api/v1/tasks/{i}").json()["status"] for i in ids}


def worker_ids(inst: Installation) -> set[str]:
    return {w["id"] for w in inst.get("/api/v1/workers").json()}


def test_an_unreachable_rabbitmq_keeps_the_api_answering_and_loses_nothing(
    services: dict[str, str], tmp_path: Path
) -> None:
    vhost = vhost_of(services["TASKMILL_BROKER_URL"])
    with taskmill_run(tmp_path, services) as inst:
        before = [
            inst.post("/api/v1/tasks", {"type": "echo", "payload": {"i": i}}).json()["id"] for i in range(10)
        ]
        wait_until(lambda: set(statuses(inst, before).values()) == {"completed"}, 30, "the first tasks", inst)
        workers = worker_ids(inst)
        rabbitmqctl("clear_permissions", "-p", vhost, "guest")
        try:
            rabbitmqctl("close_all_connections", "-p", vhost, "test: outage")
            code, body = wait_until(
                lambda: (h := health(inst))[0] == 503 and h, 20, "/health to report the broker down", inst
            )
            assert body["checks"]["broker"] != "ok" and body["checks"]["storage"] == "ok"
            during = []
            for i in range(20):
                r = inst.post("/api/v1/tasks", {"type": "echo", "payload": {"i": i}})
                assert r.status_code == 201, r.text  # the database holds it
                during.append(r.json()["id"])
        finally:
            rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
        wait_until(lambda: health(inst)[0] == 200, 30, "/health to recover", inst)
        wait_until(
            lambda: set(statuses(inst, during).values()) == {"completed"}, 60, "the tasks of the outage", inst
        )
        assert worker_ids(inst) == workers  # reconnected without a process restart


def _restart_allowed() -> bool:
    return os.environ.get("CI", "") == "true" or os.environ.get("TASKMILL_TEST_RABBITMQ_RESTART") == "1"


@pytest.mark.skipif(
    not _restart_allowed(), reason="stops the machine's RabbitMQ: CI=true or TASKMILL_TEST_RABBITMQ_RESTART=1"
)
def test_rabbitmq_restarted_mid_run_loses_no_accepted_task(services: dict[str, str], tmp_path: Path) -> None:
    with taskmill_run(tmp_path, services) as inst:
        accepted: list[str] = []
        refused: list[int] = []
        stop = threading.Event()

        def submit() -> None:
            i = 0
            while not stop.is_set():
                try:
                    r = inst.post("/api/v1/tasks", {"type": "echo", "payload": {"i": i}})
                    (
                        accepted.append(r.json()["id"])
                        if r.status_code == 201
                        else refused.append(r.status_code)
                    )
                except Exception:  # noqa: BLE001 - a refused request is not an accepted task
                    refused.append(0)
                i += 1
                time.sleep(0.01)

        thread = threading.Thread(target=submit, daemon=True)
        thread.start()
        try:
            time.sleep(2)
            rabbitmqctl("stop_app")
            try:
                time.sleep(3)
                assert health(inst)[0] == 503
            finally:
                rabbitmqctl("start_app")
                rabbitmqctl("await_startup", check=False)
            time.sleep(3)
        finally:
            stop.set()
            thread.join(timeout=30)
        assert len(accepted) > 100
        wait_until(
            lambda: set(statuses(inst, accepted).values()) == {"completed"}, 120, "every accepted task", inst
        )


def _worker_connections(vhost: str) -> set[str]:
    out = rabbitmqctl("list_connections", "-p", vhost, "name", "client_properties")
    return {line.split("\t", 1)[0] for line in out.splitlines() if "taskmill worker" in line}


def test_a_task_running_four_heartbeats_keeps_its_connection_and_runs_once(
    services: dict[str, str], tmp_path: Path
) -> None:
    vhost = vhost_of(services["TASKMILL_BROKER_URL"])
    env = {**services, "TASKMILL_RABBITMQ_HEARTBEAT": "2"}
    with taskmill_run(tmp_path, env, concurrency=1) as inst:
        connections = _worker_connections(vhost)
        assert connections
        task = inst.post("/api/v1/tasks", {"type": "sleep", "payload": {"seconds": 8}}).json()
        done = inst.wait_task(task["id"], {"completed", "failed"}, timeout=40)
        assert done["status"] == "completed" and done["attempts"] == 1
        assert _worker_connections(vhost) == connections
        again = inst.post("/api/v1/tasks", {"type": "echo", "payload": {}}).json()
        assert inst.wait_task(again["id"], {"completed"})["attempts"] == 1


def test_exhausted_retries_reach_the_dead_letter_exchange(services: dict[str, str], tmp_path: Path) -> None:
    url = services["TASKMILL_BROKER_URL"]
    with taskmill_run(tmp_path, services) as inst:
        body = {"type": "fail", "payload": {"message": "nope"}, "max_retries": 1, "retry_backoff": 0.1}
        task = inst.post("/api/v1/tasks", body).json()
        assert inst.wait_task(task["id"], {"failed"})["attempts"] == 2

        def record() -> dict[str, Any] | None:
            conn = pika.BlockingConnection(pika.URLParameters(url))
            try:
                ch = conn.channel()
                while True:
                    method, props, raw = ch.basic_get(topology.DEAD_LETTER_QUEUE, auto_ack=True)
                    if method is None:
                        return None
                    data = json.loads(raw)
                    if data.get("id") == task["id"]:
                        assert props.content_type == "application/json" and props.delivery_mode == 2
                        return data
            finally:
                conn.close()

        data = wait_until(record, 20, "the dead-letter record", inst)
        assert data["error"]["type"] == "RuntimeError" and data["attempts"] == 2 and data["type"] == "fail"
