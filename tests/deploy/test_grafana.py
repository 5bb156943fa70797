"""The Grafana dashboard (no offline validator exists): its structure, and that the compose
stack provisions it."""

from __future__ import annotations

import yaml

from tests.deploy.tools import DEPLOY
from tests.deploy.tools import dashboard

SUBJECTS = {
    "queue depth": "taskmill_queue_depth",
    "throughput": "taskmill_tasks_finished_total",
    "latency": "taskmill_task_wait_seconds_bucket",
    "run time": "taskmill_task_duration_seconds_bucket",
    "failures": 'status="failed"',
    "workers": "taskmill_workers",
    "worker memory": "taskmill_worker_resident_memory_bytes",
    "worker cpu": "taskmill_worker_cpu_seconds_total",
}


def test_panels_are_well_formed():
    d = dashboard()
    assert d["uid"] and d["title"] and d["schemaVersion"] >= 36
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for p in d["panels"]:
        pos = p["gridPos"]
        assert 0 <= pos["x"] and pos["x"] + pos["w"] <= 24, p["title"]
        if p["type"] == "row":
            continue
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        assert p["targets"], p["title"]
        ref_ids = [t["refId"] for t in p["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), p["title"]
    names = {v["name"] for v in d["templating"]["list"]}
    assert {"datasource", "queue"} <= names


def test_it_shows_every_subject_the_issue_names():
    exprs = " ".join(t["expr"] for p in dashboard()["panels"] for t in p.get("targets", []))
    for subject, needle in SUBJECTS.items():
        assert needle in exprs, subject


def test_cluster_gauges_are_never_summed_across_targets():
    """Every role exports the cluster gauges: a query takes max over targets first."""
    for p in dashboard()["panels"]:
        for t in p.get("targets", []):
            for gauge in ("taskmill_queue_depth", "taskmill_dead_letters", "taskmill_workers"):
                if gauge in t["expr"] and "max" not in t["expr"]:
                    raise AssertionError(f"{p['title']}: {t['expr']}")


def test_compose_provisions_the_dashboard():
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    mounts = compose["services"]["grafana"]["volumes"]
    assert "./grafana/dashboards:/var/lib/grafana/dashboards:ro" in mounts
    assert "./grafana/provisioning:/etc/grafana/provisioning:ro" in mounts
    provider = yaml.safe_load(
        (DEPLOY / "grafana" / "provisioning" / "dashboards" / "taskmill.yml").read_text()
    )
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
    source = yaml.safe_load(
        (DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text()
    )
    assert source["datasources"][0]["type"] == "prometheus"
