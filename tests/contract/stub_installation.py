"""The stub broker's installation for the contract suite: everything in the test process.

``taskmill.testing.StubBroker`` lives in one process, so api, manager and workers share it here:
the api is the Flask app's test client, the manager a thread, and each worker core's loop in a
thread (with its prefork pool's children), all on one SQLite file and one ``stub://`` URL. A
worker's SIGTERM/SIGINT is ``stop()`` (warm, then forced); its SIGKILL abandons it as a crash
would: its children are killed, nothing is handed back or unregistered, and its unacked
deliveries return to the stub (a closed connection). There is no wire to cut.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import uuid
from collections.abc import Callable
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from taskmill.testing import make_runtime
from taskmill.worker import WorkerOptions
from taskmill.worker.loop import WorkerLoop
from tests.contract import handlers as contract_handlers
from tests.waiting import wait_for

SETTINGS: dict[str, Any] = {
    "auth": "none",
    "worker_lease": 3.0,
    "manager_interval": 0.2,
    "cancel_grace": 1.0,
    "republish_after": 1.0,
    "shutdown_timeout": 10.0,
}


@contextlib.contextmanager
def stub_services(tmp: Path) -> Iterator[dict[str, str]]:
    yield {"url": f"stub://{uuid.uuid4().hex}", "dir": str(tmp)}


class _Response:
    def __init__(self, status_code: int, body: Any) -> None:
        self.status_code = status_code
        self._body = body
        self.text = str(body)

    def json(self) -> Any:
        return self._body


class StubWorker:
    """Core's loop in a thread, stopped the way a signal would stop a worker process."""

    def __init__(self, loop: WorkerLoop, runtime: Any) -> None:
        self.loop = loop
        self.runtime = runtime
        self.cutter = None
        self.crashed = False
        self.thread = threading.Thread(target=self._run, daemon=True, name="stub-worker")
        self.thread.start()

    def _run(self) -> None:
        try:
            self.loop.run()
        except _Crash:
            pass

    def signal(self, sig: int) -> None:
        if sig == signal.SIGKILL:
            self.kill()
        else:
            self.loop.stop()

    def kill(self) -> None:
        """As SIGKILL: children die, nothing is handed back, the row stays until the lease."""
        if self.thread.is_alive():
            self.crashed = True
            self.loop.force = True
            self.thread.join(timeout=10)
        self.loop.consumer.close()  # a dead process's connection: unacked deliveries go back

    def wait(self, timeout: float) -> int:
        self.thread.join(timeout)
        return 0 if not self.thread.is_alive() else 1


class _Crash(BaseException):  # noqa: N818 - it ends a crashed worker's thread
    pass


class StubInstallation:
    """The same methods as ``tests.contract.conftest.Installation``, in one process."""

    def __init__(self, kind: Any, services: dict[str, str], tmp: Path) -> None:
        from taskmill.app import create_app
        from taskmill.manager import Manager

        self.kind = kind
        self.url = services["url"]
        self.dir = Path(services["dir"])
        self.runtimes: list[Any] = []
        self.api_rt = self._runtime()
        self.client = create_app(runtime=self.api_rt).test_client()
        self.manager = Manager(self._runtime())
        self.manager_thread = threading.Thread(target=self.manager.run, daemon=True, name="stub-manager")
        self.manager_thread.start()
        self.workers: list[StubWorker] = []

    def _runtime(self) -> Any:
        rt = make_runtime(
            self.dir,
            broker=self.url,
            plugins=[contract_handlers],
            load_plugins=("sql", "handlers"),
            **SETTINGS,
        )
        self.runtimes.append(rt)
        return rt

    # -- workers ----------------------------------------------------------------------------------
    def worker(self, queue: str, *args: str, cut_wire: bool = False, wait: bool = True) -> StubWorker:
        if cut_wire:
            pytest.skip(f"{self.kind.name} has no wire to cut")
        opts = dict(zip(args[::2], args[1::2], strict=False))
        options = WorkerOptions(
            queues=[queue],
            concurrency=int(opts.get("--concurrency", 1)),
            prefetch=int(opts.get("--prefetch", -1)),
        )
        rt = self._runtime()
        consumer = rt.broker.consumer(options.queues, options.worker_id, options.prefetch)
        loop = WorkerLoop(rt, options, consumer)
        w = StubWorker(loop, rt)
        original = loop._shutdown

        def shutdown() -> None:
            if w.crashed:
                for slot in getattr(loop.pool, "slots", []):
                    with contextlib.suppress(OSError, AttributeError):
                        slot.process.kill()
                return
            original()

        loop._shutdown = shutdown  # type: ignore[method-assign] - a crash skips the clean exit
        self.workers.append(w)
        if wait:
            self.wait_for(
                lambda: [x for x in self.workers_listed() if x["id"] == options.worker_id], 30, "the worker"
            )
        return w

    def stop_workers(self) -> None:
        for w in self.workers:
            w.kill()
        self.workers.clear()

    def close(self) -> None:
        self.stop_workers()
        self.manager.stop()
        self.manager_thread.join(timeout=10)
        for rt in self.runtimes:
            rt.close()

    def logs(self) -> str:
        return "(stub installation: everything runs in the test process)"

    # -- the API ----------------------------------------------------------------------------------
    def _json(self, method: str, path: str, body: Any = None) -> _Response:
        r = self.client.open(path, method=method, json=body)
        return _Response(r.status_code, r.get_json(silent=True))

    def workers_listed(self) -> list[dict[str, Any]]:
        return self._json("GET", "/api/v1/workers").json()

    def submit(self, type_: str, payload: dict[str, Any] | None = None, **fields: Any) -> dict[str, Any]:
        r = self._json("POST", "/api/v1/tasks", {"type": type_, "payload": payload or {}, **fields})
        assert r.status_code == 201, r.text
        return r.json()

    def submit_batch(self, bodies: list[dict[str, Any]]) -> list[dict[str, Any]]:
        r = self._json("POST", "/api/v1/tasks/batch", {"tasks": bodies})
        assert r.status_code == 201, r.text
        return r.json()["tasks"]

    def get(self, task_id: str) -> dict[str, Any]:
        r = self._json("GET", f"/api/v1/tasks/{task_id}")
        assert r.status_code == 200, r.text
        return r.json()

    def cancel(self, task_id: str) -> _Response:
        return self._json("DELETE", f"/api/v1/tasks/{task_id}")

    def pause(self, queue: str) -> None:
        assert self._json("POST", f"/api/v1/queues/{queue}/pause").status_code == 200

    def resume(self, queue: str) -> None:
        assert self._json("POST", f"/api/v1/queues/{queue}/resume").status_code == 200

    def wait_for(self, predicate: Callable[[], Any], timeout: float, what: str) -> Any:
        return wait_for(predicate, timeout, what, context=self.logs)

    def wait_status(self, task_id: str, statuses: set[str], timeout: float = 20) -> dict[str, Any]:
        return self.wait_for(
            lambda: (t := self.get(task_id))["status"] in statuses and t, timeout, f"{task_id} in {statuses}"
        )
