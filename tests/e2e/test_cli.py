"""The `taskmill` command as a user runs it: plugins, submit/show/list/cancel/retry, Ctrl-C."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import ROOT
from tests.e2e.conftest import taskmill_run

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def cli(*args: str, env: dict[str, str], cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "taskmill.cli", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def base_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    clean = {
        k: v for k, v in os.environ.items() if not k.startswith("TASKMILL_") or k.startswith("TASKMILL_TEST_")
    }
    return {
        **clean,
        "PYTHONPATH": str(ROOT),
        "TASKMILL_DATABASE_URL": f"sqlite:///{tmp_path}/cli.db",
        **extra,
    }


def test_a_third_party_handler_package_is_discovered_and_runs(tmp_path: Path) -> None:
    target = tmp_path / "site"
    source = tmp_path / "src"
    shutil.copytree(
        ROOT / "tests" / "thirdparty" / "taskmill-example-plugin", source
    )  # builds stay out of the repo
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(target),
            str(source),
        ],
        check=True,
        cwd=tmp_path,
        capture_output=True,
    )
    env = base_env(tmp_path, PYTHONPATH=f"{target}{os.pathsep}{ROOT}")
    listed = cli("plugins", "--json", env=env, cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    data = json.loads(listed.stdout)
    assert data["handlers"]["example.reverse"]["distribution"].startswith("taskmill-example-plugin")
    assert data["handlers"]["echo"]["distribution"].startswith("taskmill ")
    assert data["storages"]["sqlite"]["class"] == "SqlStorage"
    submitted = cli("submit", "example.reverse", "--payload", '{"text": "abc"}', env=env, cwd=tmp_path)
    assert submitted.returncode == 0, submitted.stderr
    task_id = json.loads(submitted.stdout)["id"]
    worker = cli("worker", "--burst", "--concurrency", "1", env=env, cwd=tmp_path)
    assert worker.returncode == 0, worker.stderr
    shown = json.loads(cli("show", task_id, env=env, cwd=tmp_path).stdout)
    assert shown["status"] == "completed" and shown["result"] == {"reversed": "cba"}
    # without the package on the path, the same installation no longer knows the handler
    gone = cli("submit", "example.reverse", "--payload", "{}", env=base_env(tmp_path), cwd=tmp_path)
    assert gone.returncode != 0 and "unknown task type" in gone.stderr


def test_task_commands(tmp_path: Path) -> None:
    env = base_env(tmp_path, TASKMILL_LOAD_PLUGINS="sql,handlers")
    out = cli("submit", "fail", "--payload", '{"message": "x"}', "--max-retries", "0", env=env, cwd=tmp_path)
    task_id = json.loads(out.stdout)["id"]
    assert cli("worker", "--burst", env=env, cwd=tmp_path).returncode == 0
    assert json.loads(cli("show", task_id, env=env, cwd=tmp_path).stdout)["status"] == "failed"
    listing = cli("list", "--status", "failed", env=env, cwd=tmp_path).stdout
    assert task_id in listing and "(1 of 1)" in listing
    assert cli("retry", task_id, env=env, cwd=tmp_path).stdout.strip() == f"{task_id} queued"
    assert cli("cancel", task_id, env=env, cwd=tmp_path).stdout.strip() == f"{task_id} cancelled"
    again = cli("cancel", task_id, env=env, cwd=tmp_path)
    assert again.returncode == 5 and "cannot be cancelled" in again.stderr
    bad = cli("show", "not-a-uuid", env=env, cwd=tmp_path)
    assert bad.returncode == 2 and "not a task id" in bad.stderr
    badcfg = cli("list", env={**env, "TASKMILL_WORKER_LEASE": "soon"}, cwd=tmp_path)
    assert badcfg.returncode == 2 and "TASKMILL_WORKER_LEASE" in badcfg.stderr


def test_ctrl_c_stops_every_process(tmp_path: Path) -> None:
    with taskmill_run(tmp_path, {"TASKMILL_DATABASE_URL": f"sqlite:///{tmp_path}/run.db"}) as inst:
        assert any("taskmill is running at http://127.0.0.1:" in line for line in inst.lines)
        pgid = os.getpgid(inst.proc.pid)
        code = inst.stop()
    assert code == 0
    time.sleep(0.5)
    with pytest.raises(ProcessLookupError):
        os.killpg(pgid, 0)  # no process of the group is left
    _ = signal
