"""Workflows: graph checks, all-or-none submission, DAG order, failure propagation, cancel, lists."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from taskmill.errors import ValidationError
from taskmill.manager import Manager
from taskmill.models import Outcome
from taskmill.workflows import check_graph
from tests.unit.conftest import count_tasks


def t(key: str, *deps: str, **fields: Any) -> dict[str, Any]:
    return {"key": key, "type": "t.echo", "payload": {"k": key}, "depends_on": list(deps), **fields}


# ---- the graph --------------------------------------------------------------------------------------


def test_graph_of_keys_and_outside_ids() -> None:
    outside = str(uuid.uuid4())
    keys, inner, outer = check_graph([t("a"), t("b", "a", outside), t("c", "a", "b", "a")])
    assert keys == ["a", "b", "c"]
    assert inner == {"a": [], "b": ["a"], "c": ["a", "b"]}
    assert outer == {uuid.UUID(outside)}


@pytest.mark.parametrize(
    ("items", "key", "needle"),
    [
        ([t("a"), t("a")], "1", "duplicate key 'a'"),
        ([t("a", "nope")], "0", "unknown key 'nope'"),
        ([t("a", "a")], "0", "cycle"),
        ([t("a", "c"), t("b", "a"), t("c", "b")], "0", "a → c → b → a"),
    ],
)
def test_graph_errors_name_the_key(items: list[dict[str, Any]], key: str, needle: str) -> None:
    with pytest.raises(ValidationError) as info:
        check_graph(items)
    assert needle in info.value.message or needle in str(info.value.errors)
    assert key in info.value.errors["tasks"]


def test_a_long_chain_has_no_recursion_limit() -> None:
    items = [t("n0")] + [t(f"n{i}", f"n{i - 1}") for i in range(1, 1000)]
    keys, _, _ = check_graph(items)
    assert len(keys) == 1000
    items[0]["depends_on"] = ["n999"]
    with pytest.raises(ValidationError):
        check_graph(items)


# ---- the API ----------------------------------------------------------------------------------------


def run_all(runtime: Any, kinds: dict[str, str] | None = None, rounds: int = 20) -> list[str]:
    """Run the workflow's tasks as a worker would, in dependency order; returns keys in run order."""
    kinds = kinds or {}
    manager = Manager(runtime)
    order: list[str] = []
    for _ in range(rounds):
        manager.tick()
        claimed = runtime.lifecycle.claim(["default"], 1000, "unit-worker")
        if not claimed:
            continue
        results = []
        for task in claimed:
            key = task.payload.get("k")
            order.append(key)
            kind = kinds.get(key, "completed")
            if kind == "failed":
                out = Outcome(
                    task.id, "failed", error={"type": "RuntimeError", "message": "x"}, no_retry=True
                )
            else:
                out = Outcome(task.id, "completed", result={"k": key})
            results.append((task, out))
        runtime.lifecycle.finish(results, "unit-worker")
    manager.tick()
    return order


def test_submit_get_and_run_in_dependency_order(client: Any, runtime: Any) -> None:
    body = {"name": "etl", "tasks": [t("extract"), t("transform", "extract"), t("load", "transform"), t("x")]}
    r = client.post("/api/v1/workflows", json=body)
    assert r.status_code == 201, r.json
    wf = r.json
    assert r.headers["Location"] == f"/api/v1/workflows/{wf['id']}"
    assert wf["status"] == "running" and wf["name"] == "etl" and wf["task_count"] == 4
    by_key = {x["key"]: x for x in wf["tasks"]}
    assert [x["key"] for x in wf["tasks"]] == ["extract", "transform", "load", "x"]
    assert by_key["extract"]["status"] == "queued" and by_key["transform"]["status"] == "waiting"
    assert by_key["transform"]["depends_on"] == [by_key["extract"]["id"]]
    assert all(x["workflow_id"] == wf["id"] for x in wf["tasks"])
    order = run_all(runtime)
    assert order.index("extract") < order.index("transform") < order.index("load")
    got = client.get(f"/api/v1/workflows/{wf['id']}").json
    assert got["status"] == "completed" and got["finished_at"] is not None
    assert {x["status"] for x in got["tasks"]} == {"completed"}
    single = client.get(f"/api/v1/tasks/{by_key['load']['id']}").json
    assert single["status"] == "completed"


def test_a_failure_cancels_dependents_and_the_workflow_fails(client: Any, runtime: Any) -> None:
    body = {"tasks": [t("a"), t("b", "a"), t("c", "b"), t("d", "a"), t("free")]}
    wf = client.post("/api/v1/workflows", json=body).json
    order = run_all(runtime, {"b": "failed"})
    assert "c" not in order
    got = client.get(f"/api/v1/workflows/{wf['id']}").json
    status = {x["key"]: x["status"] for x in got["tasks"]}
    assert status == {
        "a": "completed",
        "b": "failed",
        "c": "cancelled",
        "d": "completed",
        "free": "completed",
    }
    c = next(x for x in got["tasks"] if x["key"] == "c")
    assert c["error"]["type"] == "DependencyFailed"
    assert got["status"] == "failed"
    listed = client.get("/api/v1/workflows?status=failed").json
    assert [w["id"] for w in listed] == [wf["id"]]


def test_depends_on_an_existing_task_of_the_tenant(client: Any, runtime: Any) -> None:
    before = client.post("/api/v1/tasks", json={"type": "t.echo", "payload": {"k": "before"}}).json
    wf = client.post("/api/v1/workflows", json={"tasks": [t("after", before["id"])]}).json
    assert wf["tasks"][0]["status"] == "waiting"
    order = run_all(runtime)
    assert order == ["before", "after"]


@pytest.mark.parametrize(
    ("tasks", "needle"),
    [
        ([t("a"), t("a")], "'a'"),
        ([t("a", "ghost")], "'ghost'"),
        ([t("a", "b"), t("b", "a")], "cycle"),
        ([t("a"), {"key": "b", "type": "t.strict", "payload": {"n": 99}}], "'b'"),
        ([t("a"), {"key": "b", "type": "no.such.type"}], "'b'"),
        ([t("a", str(uuid.uuid4()))], "'a'"),
    ],
)
def test_bad_workflows_are_422_naming_the_key_and_create_nothing(
    client: Any, runtime: Any, tasks: list[dict[str, Any]], needle: str
) -> None:
    r = client.post("/api/v1/workflows", json={"tasks": tasks})
    assert r.status_code == 422, r.json
    assert needle in r.json["message"], r.json
    assert count_tasks(runtime) == 0
    assert client.get("/api/v1/workflows").json == []


def test_a_workflow_task_takes_no_idempotency_key(client: Any, runtime: Any) -> None:
    r = client.post("/api/v1/workflows", json={"tasks": [t("a", idempotency_key="k")]})
    assert r.status_code == 422 and "idempotency_key" in r.json["errors"]["tasks"]["0"]
    assert count_tasks(runtime) == 0


def test_more_than_a_thousand_tasks_is_422(client: Any, runtime: Any) -> None:
    r = client.post("/api/v1/workflows", json={"tasks": [t(f"k{i}") for i in range(1001)]})
    assert r.status_code == 422 and "tasks" in r.json["errors"]
    assert count_tasks(runtime) == 0
    assert client.post("/api/v1/workflows", json={"tasks": []}).status_code == 422
    assert client.post("/api/v1/workflows", json={"tasks": [{"type": "t.echo"}]}).status_code == 422


def test_cancel_cancels_what_is_not_final_and_then_409(client: Any, runtime: Any) -> None:
    wf = client.post("/api/v1/workflows", json={"tasks": [t("a"), t("b", "a"), t("c", "b")]}).json
    [a] = runtime.lifecycle.claim(["default"], 10, "w")  # a is running
    r = client.delete(f"/api/v1/workflows/{wf['id']}")
    assert r.status_code == 200, r.json
    status = {x["key"]: (x["status"], x["cancel_requested"]) for x in r.json["tasks"]}
    assert status == {"a": ("running", True), "b": ("cancelled", False), "c": ("cancelled", False)}
    runtime.lifecycle.finish([(a, Outcome(a.id, "cancelled"))], "w")
    assert client.get(f"/api/v1/workflows/{wf['id']}").json["status"] == "failed"
    assert client.delete(f"/api/v1/workflows/{wf['id']}").status_code == 409


def test_unknown_and_malformed_ids_are_404(client: Any) -> None:
    assert client.get(f"/api/v1/workflows/{uuid.uuid4()}").status_code == 404
    assert client.get("/api/v1/workflows/not-an-id").status_code == 404
    assert client.delete("/api/v1/workflows/not-an-id").status_code == 404


def test_list_is_newest_first_paginated_and_filtered(client: Any, runtime: Any) -> None:
    ids = [client.post("/api/v1/workflows", json={"tasks": [t("a")]}).json["id"] for _ in range(3)]
    r = client.get("/api/v1/workflows?page_size=2")
    assert [w["id"] for w in r.json] == ids[::-1][:2]
    assert '"total": 3' in r.headers["X-Pagination"]
    assert client.get("/api/v1/workflows?status=running").json[0]["status"] == "running"
    assert client.get("/api/v1/workflows?status=completed").json == []
    assert client.get("/api/v1/workflows?status=bogus").status_code == 422
    run_all(runtime)
    assert runtime.storage.workflows.finalize() == 0  # the manager's tick already wrote them
    assert len(client.get("/api/v1/workflows?status=completed").json) == 3


def test_workflows_are_tenant_scoped(secured: Any) -> None:
    c = secured.client
    wf = c.post("/api/v1/workflows", json={"tasks": [t("a")]}, headers=secured.headers("submitter"))
    assert wf.status_code == 201
    wid = wf.json["id"]
    assert (
        c.post("/api/v1/workflows", json={"tasks": [t("a")]}, headers=secured.headers("viewer")).status_code
        == 403
    )
    other = secured.headers("submitter", "other")
    assert c.get(f"/api/v1/workflows/{wid}", headers=other).status_code == 404
    assert c.delete(f"/api/v1/workflows/{wid}", headers=other).status_code == 404
    assert c.get("/api/v1/workflows", headers=other).json == []
    # an outside dependency must be the caller's own tenant's task
    foreign = secured.submit("acme")
    r = c.post("/api/v1/workflows", json={"tasks": [t("a", str(foreign.id))]}, headers=other)
    assert r.status_code == 422
    assert c.get(f"/api/v1/workflows/{wid}", headers=secured.headers("viewer")).status_code == 200
    assert c.get(f"/api/v1/workflows/{wid}", headers=secured.headers("admin")).status_code == 200
