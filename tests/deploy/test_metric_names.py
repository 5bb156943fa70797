"""Every metric name the alert rules, the dashboard and the autoscaler read is one taskmill
exports: the names come from a live scrape of an api and of a worker's metrics port (this
process's registry), and each scrape passes ``promtool check metrics``."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from taskmill.app import create_app
from tests.deploy.tools import dashboard_expressions
from tests.deploy.tools import executable
from tests.deploy.tools import grafana_to_promql
from tests.deploy.tools import promql_metric_names
from tests.deploy.tools import rule_expressions
from tests.deploy.tools import run
from tests.deploy.tools import scaledobject_queries

SYNTHETIC = {"up"}
"""Series Prometheus makes itself for every target."""

SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_count", "_sum", "_created")}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    db = tmp_path_factory.mktemp("names") / "t.db"
    app = create_app({"database_url": f"sqlite:///{db}", "auth": "none", "secret_key": "names-test"})
    yield app
    app.extensions["taskmill"].close()


@pytest.fixture(scope="module")
def scrapes(app: Any) -> dict[str, str]:
    from taskmill.metrics import ResourceSampler
    from taskmill.probes import serve_role

    client = app.test_client()
    assert client.post("/api/v1/tasks", json={"type": "echo", "payload": {}}).status_code == 201
    api = client.get("/metrics").get_data(as_text=True)
    rt = app.extensions["taskmill"]
    rt.worker_id = "names-test-worker"
    ResourceSampler(rt).sample()
    server = serve_role(rt, "worker", _free_port(), host="127.0.0.1")
    try:
        worker = requests.get(f"http://127.0.0.1:{server.port}/metrics", timeout=10).text
    finally:
        server.close()
    return {"api": api, "worker": worker}


def exported(text: str) -> set[str]:
    names = set()
    for family in text_string_to_metric_families(text):
        names.add(family.name)
        names.update(family.name + s for s in SUFFIXES.get(family.type, ()))
        names.update(sample.name for sample in family.samples)
    return names


def test_scrapes_pass_promtool(scrapes: dict[str, str]):
    promtool = executable("promtool", "apt-get install -y prometheus")
    for role, text in scrapes.items():
        out = run([promtool, "check", "metrics"], input=text)
        assert out.returncode == 0, f"{role}: {out.stdout}{out.stderr}"


def test_every_metric_of_the_contract_is_exported(scrapes: dict[str, str]):
    """API.md's metrics, and the ones the alerts need, appear in the api's and a worker's scrape."""
    contract = {
        "taskmill_tasks_submitted_total",
        "taskmill_tasks_finished_total",
        "taskmill_task_duration_seconds_bucket",
        "taskmill_task_wait_seconds_bucket",
        "taskmill_queue_depth",
        "taskmill_queue_oldest_age_seconds",
        "taskmill_dead_letters",
        "taskmill_workers",
        "taskmill_storage_up",
        "taskmill_broker_up",
        "taskmill_worker_cpu_seconds_total",
        "taskmill_worker_resident_memory_bytes",
    }
    for role, text in scrapes.items():
        assert contract <= exported(text), (role, contract - exported(text))
    assert "flask_http_request_duration_seconds_bucket" in exported(scrapes["api"])
    assert 'taskmill_worker_resident_memory_bytes{worker="names-test-worker"}' in scrapes["worker"]


def test_rules_dashboard_and_autoscaler_read_only_exported_names(scrapes: dict[str, str]):
    known = exported(scrapes["api"]) | exported(scrapes["worker"]) | SYNTHETIC
    used: dict[str, set[str]] = {}
    for source, exprs in (
        ("rules", rule_expressions()),
        ("dashboard", [grafana_to_promql(e) for e in dashboard_expressions()]),
        ("autoscaler", scaledobject_queries()),
    ):
        for expr in exprs:
            for name in promql_metric_names(expr):
                used.setdefault(name, set()).add(source)
    assert len(used) > 15
    unknown = {name: sorted(src) for name, src in used.items() if name not in known}
    assert not unknown, unknown


def test_the_name_check_can_fail():
    assert promql_metric_names(
        'sum by (queue) (rate(taskmill_tasks_finishd_total{status="failed"}[5m]))'
    ) == {"taskmill_tasks_finishd_total"}
    assert promql_metric_names("max by (queue) (a) unless on (queue) b > 0") == {"a", "b"}
