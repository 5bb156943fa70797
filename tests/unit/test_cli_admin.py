"""The operator's CLI on SQLite, through click's CliRunner: tables, --json, exit codes, confirmations."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from click.testing import Result

from taskmill.cli import EXIT_CONFLICT
from taskmill.cli import EXIT_NOT_FOUND
from taskmill.cli import cli


@pytest.fixture
def run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("TASKMILL_DATABASE_URL", f"sqlite:///{tmp_path}/cli.db")
    monkeypatch.setenv("TASKMILL_LOAD_PLUGINS", "sql,handlers")
    monkeypatch.setenv("TASKMILL_LOG_LEVEL", "WARNING")
    runner = CliRunner()

    def invoke(*args: str, input: str | None = None, ok: bool = True) -> Result:
        result = runner.invoke(cli, list(args), input=input, catch_exceptions=False)
        if ok:
            assert result.exit_code == 0, result.output
        return result

    return invoke


def submit(run: Any, type_: str = "echo", payload: str = "{}", *extra: str) -> dict[str, Any]:
    return json.loads(run("tasks", "submit", type_, "--payload", payload, *extra).output)


def drain(run: Any) -> None:
    run("worker", "--burst", "--concurrency", "1", "--metrics-port", "0")


def test_submit_show_list_in_json_and_as_a_table(run: Any) -> None:
    task = submit(run, "echo", '{"n": 1}', "--queue", "q1", "--tag", "a")
    assert task["status"] == "queued" and task["queue"] == "q1" and task["payload"] == {"n": 1}
    shown = json.loads(run("tasks", "show", task["id"]).output)
    assert shown["id"] == task["id"]
    listed = json.loads(run("tasks", "list", "--queue", "q1", "--json").output)
    assert listed["total"] == 1 and listed["tasks"][0]["id"] == task["id"]
    table = run("tasks", "list").output
    assert table.splitlines()[0].split()[:3] == ["ID", "STATUS", "TYPE"] and task["id"] in table


def test_bad_input_is_a_clear_error_and_submits_nothing(run: Any) -> None:
    result = run("tasks", "submit", "echo", "--payload", "[1]", ok=False)
    assert result.exit_code == 2 and "must be a JSON object" in result.output
    result = run("tasks", "submit", "no.such.type", ok=False)
    assert result.exit_code == 1 and "unknown task type" in result.output
    assert json.loads(run("tasks", "list", "--json").output)["total"] == 0


def test_exit_codes_scripts_can_rely_on(run: Any) -> None:
    missing = run("tasks", "show", "0b6f5c1e-0000-4000-8000-000000000000", ok=False)
    assert missing.exit_code == EXIT_NOT_FOUND
    task = submit(run)
    assert "cancelled" in run("tasks", "cancel", task["id"]).output
    again = run("tasks", "cancel", task["id"], ok=False)
    assert again.exit_code == EXIT_CONFLICT
    assert run("tasks", "retry", task["id"]).output.strip().endswith("queued")


def test_submit_many_from_a_json_lines_file(run: Any, tmp_path: Path) -> None:
    lines = tmp_path / "tasks.jsonl"
    lines.write_text("\n".join(json.dumps({"type": "echo", "payload": {"i": i}}) for i in range(1200)) + "\n")
    result = run("tasks", "submit", "--file", str(lines))
    data = json.loads(result.stdout[result.stdout.index("{") :])
    assert data["submitted"] == 1200 and len(set(data["ids"])) == 1200
    assert json.loads(run("tasks", "list", "--json").output)["total"] == 1200
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"type": "echo"}\n{"payload": {}}\n')
    refused = run("tasks", "submit", "--file", str(bad), ok=False)
    assert refused.exit_code == 2 and "line 2" in refused.output


def test_wait_runs_to_the_end_and_a_failure_exits_6(run: Any) -> None:
    failing = submit(run, "fail", '{"message": "no"}', "--max-retries", "0")
    drain(run)
    watched = run("tasks", "watch", failing["id"], ok=False)
    assert watched.exit_code == 6
    assert json.loads(watched.stdout[watched.stdout.index("{") :])["status"] == "failed"


def test_queues_pause_resume_and_purge_with_confirmation(run: Any) -> None:
    for _ in range(3):
        submit(run, "echo", "{}", "--queue", "mail")
    rows = json.loads(run("queues", "list", "--json").output)
    mail = next(r for r in rows if r["name"] == "mail")
    assert mail["queued"] == 3 and mail["paused"] is False
    run("queues", "pause", "mail")
    assert next(r for r in json.loads(run("queues", "list", "--json").output) if r["name"] == "mail")[
        "paused"
    ]
    run("queues", "resume", "mail")
    aborted = run("queues", "purge", "mail", input="n\n", ok=False)
    assert aborted.exit_code == 1 and "Cancel 3 task(s)" in aborted.output
    assert "3 task(s) cancelled" in run("queues", "purge", "mail", "--yes").output
    mail = next(r for r in json.loads(run("queues", "list", "--json").output) if r["name"] == "mail")
    assert mail.get("queued", 0) == 0 and mail["cancelled"] == 3
    assert "mail" in run("queues").output  # the bare group lists


def test_dead_letters_list_group_requeue_and_purge(run: Any) -> None:
    ids = [submit(run, "fail", '{"message": "boom"}', "--max-retries", "0")["id"] for _ in range(3)]
    drain(run)
    listed = json.loads(run("dead-letters", "list", "--json").output)
    assert listed["total"] == 3 and {t["id"] for t in listed["tasks"]} == set(ids)
    grouped = json.loads(run("dead-letters", "list", "--group", "--json").output)
    assert grouped == [{"error": "RuntimeError", "count": 3}]
    assert json.loads(run("dead-letters", "show", ids[0]).output)["error"]["type"] == "RuntimeError"
    assert "1 task(s) requeued" in run("dead-letters", "requeue", ids[0]).output
    assert "Requeue 2 dead letter(s)?" in run("dead-letters", "requeue", input="n\n", ok=False).output
    assert "2 dead letter(s) deleted" in run("dead-letters", "purge", "--yes").output
    assert json.loads(run("dead-letters", "list", "--json").output)["total"] == 0
    assert json.loads(run("tasks", "show", ids[0]).output)["status"] == "queued"
    gone = run("tasks", "show", ids[1], ok=False)
    assert gone.exit_code == EXIT_NOT_FOUND


def test_workers_stats_and_aliases(run: Any) -> None:
    assert "(no workers)" in run("workers").output
    assert json.loads(run("workers", "list", "--json").output) == []
    task = submit(run)
    stats = json.loads(run("stats", "--json").output)
    assert stats["tasks"] == {"queued": 1} and stats["workers"] == 0
    # the first CLI's top-level commands still work
    assert json.loads(run("show", task["id"]).output)["id"] == task["id"]
    assert task["id"] in run("list").output
    assert "submit" not in run("--help").output.split("Commands:")[1].split()[:1]


def test_config_show_masks_secrets_and_says_what_was_set(run: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TASKMILL_SECRET_KEY", "do-not-print-this-secret")
    monkeypatch.setenv("TASKMILL_WEBHOOK_SECRET", "nor-this-webhook-secret")
    out = run("config", "show", "--json").output
    assert "do-not-print-this-secret" not in out and "nor-this-webhook-secret" not in out
    rows = {r["name"]: r for r in json.loads(out)}
    assert (
        rows["TASKMILL_SECRET_KEY"]["value"] == "********" and rows["TASKMILL_SECRET_KEY"]["source"] == "set"
    )
    assert rows["TASKMILL_WEBHOOK_SECRET"]["owner"] == "webhook"
    assert rows["TASKMILL_PORT"] == {
        "name": "TASKMILL_PORT",
        "value": 8000,
        "source": "default",
        "owner": "core",
    }


def test_db_current_and_prune(run: Any) -> None:
    run("db", "upgrade")
    assert run("db", "current").output.strip()
    assert "deleted 0 finished task(s)" in run("db", "prune").output
