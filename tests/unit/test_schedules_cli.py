"""``taskmill schedules …`` and ``taskmill workflows …`` through the real ``taskmill`` group (SQLite)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from taskmill.cli import cli


@pytest.fixture
def run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("TASKMILL_DATABASE_URL", f"sqlite:///{tmp_path}/cli.db")
    monkeypatch.setenv("TASKMILL_LOAD_PLUGINS", "sql,handlers")
    runner = CliRunner()

    def invoke(*args: str) -> Any:
        return runner.invoke(cli, list(args), catch_exceptions=False)

    return invoke


def test_schedule_commands(run: Any) -> None:
    r = run(
        "schedules",
        "create",
        "nightly",
        "echo",
        "--cron",
        "30 2 * * *",
        "--timezone",
        "Europe/Paris",
        "--payload",
        '{"a": 1}',
        "--tenant",
        "acme",
    )
    assert r.exit_code == 0, r.output
    created = json.loads(r.output)
    assert created["timezone"] == "Europe/Paris" and created["payload"] == {"a": 1} and created["next_run_at"]
    assert "acme/nightly" in run("schedules", "list").output
    assert json.loads(run("schedules", "list", "--json", "--tenant", "acme").output)[0]["name"] == "nightly"
    assert "paused" in run("schedules", "pause", "nightly", "--tenant", "acme").output
    assert "active" in run("schedules", "resume", "nightly", "--tenant", "acme").output
    assert json.loads(run("schedules", "show", "nightly", "--tenant", "acme").output)["cron"] == "30 2 * * *"
    dup = run("schedules", "create", "nightly", "echo", "--interval", "5", "--tenant", "acme")
    assert dup.exit_code != 0 and "exists" in dup.output
    bad = run("schedules", "create", "x", "echo", "--cron", "61 * * * *")
    assert bad.exit_code != 0 and "cron" in bad.output
    assert run("schedules", "delete", "nightly", "--tenant", "acme").exit_code == 0
    missing = run("schedules", "show", "nightly", "--tenant", "acme")
    assert missing.exit_code != 0 and "not found" in missing.output


def test_workflow_commands(run: Any) -> None:
    from taskmill.config import load_settings
    from taskmill.runtime import build_runtime
    from taskmill.workflows import WorkflowService

    rt = build_runtime(load_settings(), upgrade=True)
    try:
        tasks = [{"key": "a", "type": "echo"}, {"key": "b", "type": "echo", "depends_on": ["a"]}]
        wf = WorkflowService(rt).submit({"name": "pair", "tasks": tasks}, "acme")
    finally:
        rt.close()
    assert str(wf.id) in run("workflows", "list").output
    shown = json.loads(run("workflows", "show", str(wf.id)).output)
    assert [t["key"] for t in shown["tasks"]] == ["a", "b"]
    assert run("workflows", "cancel", str(wf.id)).exit_code == 0
    assert "failed" in run("workflows", "list", "--status", "failed").output
    again = run("workflows", "cancel", str(wf.id))
    assert again.exit_code != 0 and "ended" in again.output
    assert run("workflows", "show", "nope").exit_code != 0
