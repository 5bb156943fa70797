"""taskmill.client against a real ``taskmill run`` (SQLite, the SQL broker, real workers)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from taskmill import client as tc
from tests.e2e.conftest import Installation
from tests.e2e.conftest import taskmill_run

pytestmark = [pytest.mark.slow, pytest.mark.e2e]


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installation]:
    db = tmp_path_factory.mktemp("client") / "taskmill.db"
    with taskmill_run(tmp_path_factory.mktemp("run"), {"TASKMILL_DATABASE_URL": f"sqlite:///{db}"}) as inst:
        yield inst


@pytest.fixture
def client(running: Installation) -> Iterator[tc.Client]:
    with tc.Client(running.base, api_key=running.key, timeout=10) as c:
        yield c


def test_submit_and_wait(client):
    task = client.submit("echo", {"hello": "world"})
    final = client.wait(task["id"], timeout=30)
    assert final["status"] == "completed" and final["result"] == {"hello": "world"}


def test_a_failure_is_returned_then_retried(client):
    task = client.submit("fail", {"message": "nope"}, max_retries=0)
    final = client.wait(task["id"], timeout=30)
    assert final["status"] == "failed"
    assert final["error"]["type"] == "RuntimeError" and final["error"]["message"] == "nope"
    assert client.retry(task["id"])["status"] == "queued"
    assert client.wait(task["id"], timeout=30)["status"] == "failed"
    with pytest.raises(tc.Conflict):
        client.cancel(task["id"])


def test_cancel_a_running_task(client):
    task = client.submit("sleep", {"seconds": 30})
    for _, name, _data in client.events(task_id=task["id"], last_event_id=0):
        if name == "task.started":
            break
    answer = client.cancel(task["id"])
    assert answer["cancel_requested"] is True or answer["status"] == "cancelled"
    assert client.wait(task["id"], timeout=30)["status"] == "cancelled"


def test_list_of_more_than_one_page(client):
    bodies = [{"type": "echo", "payload": {"i": i}, "tags": ["client-e2e"]} for i in range(25)]
    made = client.submit_many(bodies)
    listed = list(client.list(tag="client-e2e", page_size=10))
    assert sorted(t["id"] for t in listed) == sorted(t["id"] for t in made)


def test_errors_map_to_their_classes(client, running):
    with pytest.raises(tc.ValidationFailed) as info:
        client.submit("no-such-type")
    assert info.value.status == 422
    with pytest.raises(tc.NotFound):
        client.get("00000000-0000-4000-8000-000000000000")
    with pytest.raises(tc.Unauthorized):
        tc.Client(running.base, api_key="tm_wrong_key").get("00000000-0000-4000-8000-000000000000")


def test_a_workflow_runs_to_the_end(client):
    workflow = client.submit_workflow(
        [
            {"key": "a", "type": "echo", "payload": {"step": "a"}},
            {"key": "b", "type": "echo", "payload": {"step": "b"}, "depends_on": ["a"]},
        ],
        name="client-e2e",
    )
    last: dict[str, Any] = {}
    for task in workflow["tasks"]:
        last = client.wait(task["id"], timeout=30)
        assert last["status"] == "completed"
    assert client.get_workflow(workflow["id"])["status"] == "completed"
