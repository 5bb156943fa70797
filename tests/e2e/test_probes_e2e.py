"""Liveness of real worker and manager processes follows their loops.

A `taskmill worker` and a `taskmill manager` run against a scratch PostgreSQL database, each with
its metrics and health port. The test then takes an exclusive lock on the tasks table and holds
it: the worker's next claim and the manager's next tick wait on it, so both loops hang while the
processes (and their probe threads) stay up. Past the liveness window ``/health/live`` must answer
503 (a Kubernetes liveness probe restarts the pod); once the lock is released the loops pass again
and liveness comes back.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests

from taskmill.probes import LIVENESS_WINDOW
from tests.e2e.conftest import ROOT
from tests.e2e.conftest import free_port
from tests.services import postgres_url
from tests.services import scratch_database

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@contextmanager
def role(args: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "taskmill.cli", *args],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


def live(port: int) -> tuple[int, str]:
    r = requests.get(f"http://127.0.0.1:{port}/health/live", timeout=5)
    return r.status_code, r.json().get("reason", "")


def wait_for(what: str, check: object, timeout: float, logs: list[Path]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():  # type: ignore[operator]
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    tails = "\n".join(p.read_text()[-2000:] for p in logs if p.exists())
    raise AssertionError(f"{what} within {timeout}s\n{tails}")


@pytest.mark.timeout(LIVENESS_WINDOW * 2 + 180)
def test_a_hung_worker_loop_and_manager_loop_fail_liveness(tmp_path: Path) -> None:
    import psycopg2

    with scratch_database(postgres_url()) as url:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TASKMILL_")}
        env.update(
            {
                "PYTHONPATH": str(ROOT),
                "TASKMILL_DATABASE_URL": url,
                "TASKMILL_LOAD_PLUGINS": "taskmill",
                "TASKMILL_POLL_INTERVAL": "0.5",
                "TASKMILL_MANAGER_INTERVAL": "0.5",
            }
        )
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        assert (
            subprocess.run(
                [sys.executable, "-m", "taskmill.cli", "db", "upgrade"], env=env, capture_output=True
            ).returncode
            == 0
        )
        wport, mport = free_port(), free_port()
        wlog, mlog = tmp_path / "worker.log", tmp_path / "manager.log"
        logs = [wlog, mlog]
        with (
            role(["worker", "--concurrency", "1", "--metrics-port", str(wport)], env, wlog),
            role(["manager", "--metrics-port", str(mport)], env, mlog),
        ):
            for port in (wport, mport):
                wait_for(f"port {port} answers live", lambda p=port: live(p)[0] == 200, 120, logs)
            admin = psycopg2.connect(url)
            try:

                def registered() -> bool:
                    with admin.cursor() as cur:
                        cur.execute("SELECT count(*) FROM workers")
                        n = cur.fetchone()[0]
                    admin.rollback()
                    return n == 1

                wait_for("the worker registers", registered, 120, logs)
                time.sleep(2)  # both loops have passed a few times
                with admin.cursor() as cur:
                    cur.execute("LOCK TABLE tasks IN ACCESS EXCLUSIVE MODE")  # held: the loops hang
                    started = time.monotonic()
                    # the processes still answer, and are live while within the window
                    assert live(wport)[0] == 200 and live(mport)[0] == 200
                    for port, name in ((wport, "worker"), (mport, "manager")):
                        wait_for(
                            f"the hung {name} loop fails liveness",
                            lambda p=port: live(p)[0] == 503,
                            LIVENESS_WINDOW + 60,
                            logs,
                        )
                        status, reason = live(port)
                        assert status == 503 and "has not passed" in reason, reason
                    assert time.monotonic() - started >= LIVENESS_WINDOW - 1
                admin.rollback()  # the lock goes: the loops pass again
            finally:
                admin.close()
            for port in (wport, mport):
                wait_for(f"port {port} is live again", lambda p=port: live(p)[0] == 200, 60, logs)
