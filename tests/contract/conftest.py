"""The broker contract suite: one installation (api + manager, real ``taskmill`` processes) per
broker, and the workers each test starts. Every case runs on every entry of ``BROKERS``.

**Adding a broker is one line** in ``BROKERS`` (dramatiq's ``@pytest.fixture(params=[...])``)::

    BrokerKind("rabbitmq", rabbitmq_services, wire="TASKMILL_BROKER_URL", marks=INTEGRATION),

* ``services(tmp_path)``: a context manager that creates what one installation needs (a scratch
  database, a private redis-server, a vhost, ...), yields the ``TASKMILL_*`` variables pointing at
  it, and removes all of it on exit. That is the whole set-up and clean-up of a broker.
* ``wire``: the variable whose URL carries deliveries to a worker. The taken-but-not-started case
  cuts that TCP connection (``tests/contract/wire.py``) right after the broker handed the worker a
  task. ``None`` when there is no connection to cut (SQLite); that case is then skipped.
* ``worker_env``: extra variables for worker processes only (e.g. a worker class).
* ``pending``: ``{test name: reason}`` for cases this broker fails until a fix lands; they run as
  ``xfail(strict=False)``. Delete the entry in the commit that lands the fix.
* ``pools``: the worker pools (``taskmill worker --pool``) every case runs with on this broker;
  each case runs once per pool (``TASKMILL_CONTRACT_POOLS=prefork,threads`` narrows them). Redis
  keeps RQ's own loop, so it has no pool choice; the stub simulates a crash by killing prefork
  children.
* ``installation``: the class that starts the api, manager and workers. The default runs real
  processes (``taskmill api``, ``taskmill manager``, ``taskmill worker``) and talks HTTP to the
  api, so the suite sees only the public API and CLI. A broker living in one process (a stub)
  passes a class with the same methods as :class:`Installation`.

Short settings keep it fast: lease 3 s, manager tick 0.2 s, cancel grace 1 s, re-publish after 1 s.
Each test uses a queue of its own, and stops every worker it started.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Callable
from collections.abc import Iterator
from contextlib import AbstractContextManager
from contextlib import ExitStack
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.contract.stub_installation import StubInstallation
from tests.contract.stub_installation import stub_services
from tests.contract.wire import WireCutter
from tests.services import amqp_url
from tests.services import postgres_url
from tests.services import rabbitmq_vhost
from tests.services import redis_server
from tests.services import scratch_database
from tests.waiting import wait_for

ROOT = Path(__file__).resolve().parents[2]
FINAL = {"completed", "failed", "cancelled"}
INTEGRATION = (pytest.mark.integration,)

SETTINGS = {
    "TASKMILL_AUTH": "none",  # loopback only: the suite tests brokers, not credentials
    "TASKMILL_LOG_LEVEL": "WARNING",
    "TASKMILL_WORKER_LEASE": "3",
    "TASKMILL_MANAGER_INTERVAL": "0.2",
    "TASKMILL_CANCEL_GRACE": "1",
    "TASKMILL_REPUBLISH_AFTER": "1",
    "TASKMILL_SHUTDOWN_TIMEOUT": "10",
    "TASKMILL_LOAD_PLUGINS": "taskmill,taskmill-contract",  # built-ins + tests/contract/handlers.py
}


# ---- the services of each broker -------------------------------------------------------------------


@contextmanager
def sqlite_services(tmp: Path) -> Iterator[dict[str, str]]:
    yield {"TASKMILL_DATABASE_URL": f"sqlite:///{tmp / 'contract.db'}"}


@contextmanager
def postgresql_services(tmp: Path) -> Iterator[dict[str, str]]:
    with scratch_database(postgres_url()) as url:
        yield {"TASKMILL_DATABASE_URL": url}


@contextmanager
def redis_services(tmp: Path) -> Iterator[dict[str, str]]:
    with scratch_database(postgres_url()) as url, redis_server() as server:
        yield {"TASKMILL_DATABASE_URL": url, "TASKMILL_BROKER_URL": server.url}


@contextmanager
def rabbitmq_services(tmp: Path) -> Iterator[dict[str, str]]:
    with scratch_database(postgres_url()) as url, rabbitmq_vhost(amqp_url()) as vhost:
        yield {"TASKMILL_DATABASE_URL": url, "TASKMILL_BROKER_URL": vhost}


# ---- the registry ----------------------------------------------------------------------------------


POOLS = ("prefork", "threads", "asyncio")
SELECTED_POOLS = tuple(
    p for p in os.environ.get("TASKMILL_CONTRACT_POOLS", ",".join(POOLS)).split(",") if p in POOLS
)


@dataclasses.dataclass(frozen=True)
class BrokerKind:
    name: str
    services: Callable[[Path], AbstractContextManager[dict[str, str]]]
    wire: str | None = None
    worker_env: dict[str, str] = dataclasses.field(default_factory=dict)
    pending: dict[str, str] = dataclasses.field(default_factory=dict)
    marks: tuple[Any, ...] = ()
    installation: type[Installation] | None = None
    pools: tuple[str, ...] = POOLS


BROKERS = [
    BrokerKind("stub", stub_services, installation=StubInstallation, pools=("prefork",)),
    BrokerKind("sql-sqlite", sqlite_services),
    BrokerKind("sql-postgresql", postgresql_services, wire="TASKMILL_DATABASE_URL", marks=INTEGRATION),
    BrokerKind("redis", redis_services, wire="TASKMILL_BROKER_URL", marks=INTEGRATION, pools=("prefork",)),
    BrokerKind("rabbitmq", rabbitmq_services, wire="TASKMILL_BROKER_URL", marks=INTEGRATION),
]


# ---- real processes --------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _plugin_site(tmp: Path) -> Path:
    """A throw-away distribution declaring ``tests/contract/handlers.py`` as a taskmill plugin."""
    info = tmp / "site" / "taskmill_contract-0.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: taskmill-contract\nVersion: 0\n")
    (info / "entry_points.txt").write_text("[taskmill]\ncontract = tests.contract.handlers\n")
    return tmp / "site"


class Worker:
    """One ``taskmill worker`` process, in a process group of its own (its pool children too)."""

    def __init__(self, proc: subprocess.Popen[bytes], cutter: WireCutter | None = None) -> None:
        self.proc = proc
        self.cutter = cutter

    def signal(self, sig: int) -> None:
        """Send ``sig`` to the worker and all its children."""
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass

    def kill(self) -> None:
        """SIGKILL the worker and its children, and wait for it."""
        self.signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout=timeout)


class Installation:
    """The api and a manager on one broker's services; workers on demand; an HTTP client."""

    def __init__(self, kind: BrokerKind, services: dict[str, str], tmp: Path) -> None:
        self.kind = kind
        self.tmp = tmp
        clean = {k: v for k, v in os.environ.items() if not k.startswith("TASKMILL_")}
        clean.pop("PROMETHEUS_MULTIPROC_DIR", None)
        paths = [str(ROOT), str(_plugin_site(tmp)), clean.get("PYTHONPATH", "")]
        self.env = {
            **clean,
            **SETTINGS,
            **services,
            "PYTHONPATH": os.pathsep.join(p for p in paths if p),
            "PYTHONUNBUFFERED": "1",
            "TASKMILL_METRICS_DIR": str(tmp / "metrics"),
        }
        self.port = _free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.http = requests.Session()
        self.procs: list[subprocess.Popen[bytes]] = []
        self.workers: list[Worker] = []
        self.pool = "prefork"
        try:
            api = self._spawn("api", "--port", str(self.port), "--workers", "1")
            self.wait_for(lambda: api.poll() is not None or self._healthy(), 60, "the api to answer /health")
            assert api.poll() is None, f"the api exited:\n{self.logs()}"
            self._spawn("manager")
        except BaseException:
            self.close()
            raise

    # -- processes ----------------------------------------------------------------------------------
    def _spawn(self, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        with open(self.tmp / f"{args[0]}-{len(self.procs)}.log", "wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "taskmill.cli", *args],
                env={**self.env, **(env or {})},
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.procs.append(proc)
        return proc

    def worker(self, queue: str, *args: str, cut_wire: bool = False, wait: bool = True) -> Worker:
        """Start ``taskmill worker --queues queue --concurrency 1 *args`` and wait until it is listed
        by ``GET /api/v1/workers``. With ``cut_wire`` its ``kind.wire`` goes through a
        :class:`WireCutter` (``worker.cutter``)."""
        env = {**self.kind.worker_env, "TASKMILL_WORKER_POOL": self.pool}
        cutter = None
        if cut_wire:
            if self.kind.wire is None:
                pytest.skip(f"{self.kind.name} has no wire to cut")
            cutter = WireCutter(self.env[self.kind.wire])
            env[self.kind.wire] = cutter.url
        before = {w["id"] for w in self.workers_listed()}
        if "--concurrency" not in args:
            args = ("--concurrency", "1", *args)
        w = Worker(self._spawn("worker", "--queues", queue, *args, env=env), cutter)
        self.workers.append(w)
        if wait:
            self.wait_for(
                lambda: [x for x in self.workers_listed() if queue in x["queues"] and x["id"] not in before],
                30,
                "the worker to register",
            )
        return w

    def stop_workers(self) -> None:
        """SIGKILL what the test left running (a test's workers are disposable)."""
        for w in self.workers:
            w.signal(signal.SIGKILL)
            if w.cutter is not None:
                w.cutter.close()
        for w in self.workers:
            try:
                w.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        self.workers.clear()

    def close(self) -> None:
        self.stop_workers()
        for proc in self.procs:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for proc in self.procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                pass
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.http.close()

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in sorted(self.tmp.glob("*.log"))
        )

    # -- the HTTP API -------------------------------------------------------------------------------
    def _healthy(self) -> bool:
        try:
            return self.http.get(self.base + "/health", timeout=2).status_code == 200
        except requests.RequestException:
            return False

    def workers_listed(self) -> list[dict[str, Any]]:
        return self.http.get(self.base + "/api/v1/workers", timeout=10).json()

    def submit(self, type_: str, payload: dict[str, Any] | None = None, **fields: Any) -> dict[str, Any]:
        r = self.http.post(
            self.base + "/api/v1/tasks", json={"type": type_, "payload": payload or {}, **fields}, timeout=10
        )
        assert r.status_code == 201, r.text
        return r.json()

    def submit_batch(self, bodies: list[dict[str, Any]]) -> list[dict[str, Any]]:
        r = self.http.post(self.base + "/api/v1/tasks/batch", json={"tasks": bodies}, timeout=10)
        assert r.status_code == 201, r.text
        return r.json()["tasks"]

    def get(self, task_id: str) -> dict[str, Any]:
        r = self.http.get(f"{self.base}/api/v1/tasks/{task_id}", timeout=10)
        assert r.status_code == 200, r.text
        return r.json()

    def cancel(self, task_id: str) -> requests.Response:
        return self.http.delete(f"{self.base}/api/v1/tasks/{task_id}", timeout=10)

    def pause(self, queue: str) -> None:
        r = self.http.post(f"{self.base}/api/v1/queues/{queue}/pause", timeout=10)
        assert r.status_code == 200, r.text

    def resume(self, queue: str) -> None:
        r = self.http.post(f"{self.base}/api/v1/queues/{queue}/resume", timeout=10)
        assert r.status_code == 200, r.text

    def wait_for(self, predicate: Callable[[], Any], timeout: float, what: str) -> Any:
        return wait_for(predicate, timeout, what, context=self.logs)

    def wait_status(self, task_id: str, statuses: set[str], timeout: float = 20) -> dict[str, Any]:
        return self.wait_for(
            lambda: (t := self.get(task_id))["status"] in statuses and t, timeout, f"{task_id} in {statuses}"
        )


# ---- fixtures --------------------------------------------------------------------------------------


@pytest.fixture(scope="session", params=[pytest.param(k, id=k.name, marks=k.marks) for k in BROKERS])
def installation(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    kind: BrokerKind = request.param
    tmp = tmp_path_factory.mktemp(f"contract-{kind.name}")
    with ExitStack() as stack:
        services = stack.enter_context(kind.services(tmp))
        inst = (kind.installation or Installation)(kind, services, tmp)
        stack.callback(inst.close)
        yield inst


@pytest.fixture(params=SELECTED_POOLS)
def pool(request: pytest.FixtureRequest) -> str:
    """The worker pool of the case (``taskmill worker --pool``)."""
    return request.param


@pytest.fixture
def broker(installation: Any, pool: str, request: pytest.FixtureRequest) -> Iterator[Any]:
    """The installation of the broker under test; the workers a test starts are stopped after it.
    A case listed in the broker's ``pending`` is expected to fail (``xfail(strict=False)``)."""
    if pool not in installation.kind.pools:
        pytest.skip(f"{installation.kind.name} has no {pool} pool (its pools: {installation.kind.pools})")
    installation.pool = pool
    reason = installation.kind.pending.get(request.node.originalname)
    if reason:
        request.applymarker(pytest.mark.xfail(reason=reason, strict=False))
    try:
        yield installation
    finally:
        installation.stop_workers()


@pytest.fixture
def queue() -> str:
    """A queue name of the test's own."""
    return f"c{uuid.uuid4().hex[:10]}"
