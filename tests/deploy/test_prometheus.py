"""Alert rules and the Prometheus configuration, checked with promtool (Debian's ``prometheus``
package; the server is never started), and every dashboard query parsed the same way."""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from tests.deploy.tools import DEPLOY
from tests.deploy.tools import dashboard_expressions
from tests.deploy.tools import executable
from tests.deploy.tools import grafana_to_promql
from tests.deploy.tools import run
from tests.deploy.tools import scaledobject_queries

PROM = DEPLOY / "prometheus"
HINT = "apt-get install -y prometheus"


def test_rules_are_valid():
    out = run([executable("promtool", HINT), "check", "rules", str(PROM / "rules" / "taskmill.yml")])
    assert out.returncode == 0, out.stdout + out.stderr


def test_rules_unit_tests_pass():
    out = run([executable("promtool", HINT), "test", "rules", str(PROM / "tests" / "taskmill_test.yml")])
    assert out.returncode == 0, out.stdout + out.stderr


def test_every_alert_has_a_unit_test_a_severity_and_a_runbook_entry():
    rules = yaml.safe_load((PROM / "rules" / "taskmill.yml").read_text())
    alerts = {r["alert"]: r for g in rules["groups"] for r in g["rules"] if "alert" in r}
    tests = yaml.safe_load((PROM / "tests" / "taskmill_test.yml").read_text())
    tested = {
        case["alertname"]
        for t in tests["tests"]
        for case in t.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    assert set(alerts) <= tested, set(alerts) - tested
    runbook = (DEPLOY.parent / "docs" / "operations.md").read_text()
    for name, rule in alerts.items():
        assert rule["labels"]["severity"] in ("critical", "warning", "info"), name
        assert {"summary", "description"} <= set(rule["annotations"]), name
        assert f"`{name}`" in runbook, f"docs/operations.md does not explain {name}"


def test_the_unit_tests_can_fail(tmp_path: Path):
    """A rule whose threshold moved makes promtool test rules fail."""
    (tmp_path / "rules").mkdir()
    (tmp_path / "tests").mkdir()
    text = (
        (PROM / "rules" / "taskmill.yml")
        .read_text()
        .replace(
            '(taskmill_queue_depth{status="queued"}) > 1000', '(taskmill_queue_depth{status="queued"}) > 5000'
        )
    )
    (tmp_path / "rules" / "taskmill.yml").write_text(text)
    shutil.copy(PROM / "tests" / "taskmill_test.yml", tmp_path / "tests")
    out = run([executable("promtool", HINT), "test", "rules", str(tmp_path / "tests" / "taskmill_test.yml")])
    assert out.returncode != 0


def test_prometheus_config_is_valid(tmp_path: Path):
    """The compose stack's prometheus.yml (its rule_files path made relative to a copy)."""
    shutil.copytree(PROM, tmp_path / "prometheus")
    config = tmp_path / "prometheus" / "prometheus.yml"
    config.write_text(config.read_text().replace("/etc/prometheus/rules/", "rules/"))
    out = run([executable("promtool", HINT), "check", "config", str(config)])
    assert out.returncode == 0, out.stdout + out.stderr
    jobs = {j["job_name"] for j in yaml.safe_load(config.read_text())["scrape_configs"]}
    assert {"taskmill-api", "taskmill-worker", "taskmill-manager"} <= jobs


def test_dashboard_and_autoscaler_queries_parse(tmp_path: Path):
    """Every Grafana query and the KEDA query, wrapped as recording rules for promtool."""
    exprs = [grafana_to_promql(e) for e in dashboard_expressions()] + scaledobject_queries()
    rules = {
        "groups": [
            {"name": "queries", "rules": [{"record": f"q:{i}", "expr": e} for i, e in enumerate(exprs)]}
        ]
    }
    path = tmp_path / "queries.yml"
    path.write_text(yaml.safe_dump(rules))
    out = run([executable("promtool", HINT), "check", "rules", str(path)])
    assert out.returncode == 0, out.stdout + out.stderr
    path.write_text(
        yaml.safe_dump({"groups": [{"name": "q", "rules": [{"record": "q:bad", "expr": "sum(rate(x[5m])"}]}]})
    )
    assert run([executable("promtool", HINT), "check", "rules", str(path)]).returncode != 0
