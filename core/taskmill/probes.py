"""Health probes of every role, and the metrics port of the worker and manager roles.

- :func:`component_status` checks storage and broker, each with a short timeout (a check that
  hangs, say on a black-holed database host, is reported as a timeout; it never holds the probe).
  Results are kept :data:`CHECK_CACHE_SECONDS`, so probes and scrapes cost at most one check per
  component per period.
- :func:`beat` is called by a role's main loop once per pass; liveness fails when the loop has
  not passed for :data:`LIVENESS_WINDOW` seconds (a hung loop), or when the main thread ended.
- :func:`serve_role` starts, in a daemon thread, the HTTP server of ``taskmill worker`` and
  ``taskmill manager`` on ``TASKMILL_METRICS_PORT``: ``/metrics``, ``/health/live`` (liveness),
  ``/health/ready`` and ``/health`` (readiness: storage and broker answer). The manager also
  refreshes the cluster statistics there; a worker samples its CPU and memory.
"""

from __future__ import annotations

import atexit
import hmac
import json
import logging
import os
import threading
import time
import weakref
from concurrent.futures import Future
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from http.server import BaseHTTPRequestHandler
from http.server import ThreadingHTTPServer
from typing import TYPE_CHECKING
from typing import Any

if TYPE_CHECKING:  # pragma: no cover
    from taskmill.runtime import Runtime

__all__ = [
    "CHECK_TIMEOUT",
    "LIVENESS_WINDOW",
    "RoleServer",
    "beat",
    "component_status",
    "liveness",
    "serve_role",
]

logger = logging.getLogger("taskmill.probes")

CHECK_TIMEOUT = 2.0
"""Seconds a storage or broker check may take before the probe reports it as failed."""

CHECK_CACHE_SECONDS = 2.0
"""How long one check result is reused by probes and scrapes of this process."""

LIVENESS_WINDOW = 60.0
"""Seconds without a pass of the role's loop after which the process is not live."""


# ---- storage and broker checks --------------------------------------------------------------------

_pool: tuple[int, ThreadPoolExecutor] | None = None
_checks_lock = threading.Lock()
_inflight: dict[tuple[int, str], tuple[float, Future[None]]] = {}
_results: weakref.WeakKeyDictionary[Any, dict[str, tuple[float, str]]] = weakref.WeakKeyDictionary()


def _executor() -> ThreadPoolExecutor:
    """The check threads of this process (a forked child makes its own)."""
    global _pool
    if _pool is None or _pool[0] != os.getpid():
        _pool = (os.getpid(), ThreadPoolExecutor(max_workers=4, thread_name_prefix="taskmill-check"))
        _inflight.clear()
    return _pool[1]


def _start_check(key: tuple[int, str], check: Any) -> tuple[float, Future[None]]:
    """The running check of ``key``, or a new one (a check is never running twice)."""
    with _checks_lock:
        executor = _executor()
        running = _inflight.get(key)
        if running is None:
            future = executor.submit(check)
            running = _inflight[key] = (time.monotonic(), future)
            future.add_done_callback(lambda _f, k=key: _inflight.pop(k, None))
        return running


def _outcome(started: float, future: Future[None], timeout: float) -> str:
    left = started + timeout - time.monotonic()
    try:
        future.result(timeout=max(0.0, left))
    except FutureTimeout:
        return f"timed out after {timeout:g}s"
    except Exception as exc:  # noqa: BLE001 - any failure makes the probe report it
        return str(exc) or type(exc).__name__
    return "ok"


def component_status(
    runtime: Runtime, timeout: float = CHECK_TIMEOUT, max_age: float = CHECK_CACHE_SECONDS
) -> dict[str, str]:
    """``{"storage": "ok"|error, "broker": "ok"|error}`` within ``timeout`` seconds in all.

    The checks run at once, each in a thread; a check still running from an earlier call is not
    started again, and one that has run longer than ``timeout`` is reported as timed out at once.
    """
    out: dict[str, str] = {}
    now = time.monotonic()
    with _checks_lock:
        results = _results.setdefault(runtime, {})
    pending = {}
    for name, check in (("storage", runtime.storage.check), ("broker", runtime.broker.check)):
        cached = results.get(name)
        if cached is not None and now - cached[0] < max_age:
            out[name] = cached[1]
        else:
            pending[name] = _start_check((id(runtime), name), check)
    for name, (started, future) in pending.items():
        out[name] = _outcome(started, future, timeout)
        results[name] = (time.monotonic(), out[name])
    return {name: out[name] for name in ("storage", "broker")}


# ---- liveness ---------------------------------------------------------------------------------------

_last_beat: float | None = None


def beat(busy_for: float = 0.0) -> None:
    """Record one pass of this process's main loop (cheap: one clock read).

    Args:
        busy_for: the loop is busy for up to this many more seconds by design (a task that
            runs in the loop's own thread, bounded by its timeout, as in RQ's SimpleWorker).
    """
    global _last_beat
    _last_beat = time.monotonic() + busy_for


def liveness(window: float = LIVENESS_WINDOW) -> tuple[bool, str]:
    """(live, reason): the main thread runs and, once the loop has beaten, beat recently."""
    if not threading.main_thread().is_alive():
        return False, "the main thread has ended"
    if _last_beat is not None:
        age = time.monotonic() - _last_beat
        if age > window:
            return False, f"the main loop has not passed for {age:.0f}s"
    return True, "ok"


# ---- the role's HTTP server -------------------------------------------------------------------------


def metrics_setting(runtime: Runtime, key: str, default: Any) -> Any:
    """A setting of the ``metrics`` group (``TASKMILL_METRICS_<KEY>``)."""
    getter = getattr(runtime, "plugin_setting", None)
    if getter is not None:
        return getter("metrics", key, default)
    return getattr(runtime.settings, f"metrics_{key}", default)  # pragma: no cover - older runtimes


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
        path = self.path.split("?", 1)[0].rstrip("/") or "/"
        rt = self.server.runtime
        if path == "/metrics":
            self._metrics(rt)
        elif path == "/health/live":
            live, reason = liveness()
            self._json(200 if live else 503, {"status": "ok" if live else "unavailable", "reason": reason})
        elif path in ("/health", "/health/ready"):
            checks = component_status(rt)
            ok = all(v == "ok" for v in checks.values())
            self._json(200 if ok else 503, {"status": "ok" if ok else "unavailable", "checks": checks})
        else:
            self._json(404, {"code": 404, "status": "Not Found", "message": f"no such path: {path}"})

    def _metrics(self, rt: Runtime) -> None:
        from prometheus_client import CONTENT_TYPE_LATEST
        from prometheus_client import generate_latest

        from taskmill.metrics import scrape_registry

        token = metrics_setting(rt, "token", "")
        if token:
            scheme, _, given = self.headers.get("Authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
                self._json(401, {"code": 401, "status": "Unauthorized", "message": "bearer token needed"})
                return
        body = generate_latest(scrape_registry(rt))
        self._send(200, CONTENT_TYPE_LATEST, body)

    def _json(self, status: int, data: dict[str, Any]) -> None:
        self._send(status, "application/json", json.dumps(data).encode())

    def _send(self, status: int, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Content-Type-Options", "nosniff")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the signature of http.server
        logger.debug("metrics port: " + format, *args)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], runtime: Runtime) -> None:
        self.runtime = runtime
        super().__init__(address, _Handler)


class RoleServer:
    """What :func:`serve_role` started: the HTTP server (if any) and the background threads."""

    def __init__(self, runtime: Runtime, role: str) -> None:
        self.runtime = runtime
        self.role = role
        self.stop_event = threading.Event()
        self.httpd: _Server | None = None
        self.threads: list[threading.Thread] = []

    @property
    def port(self) -> int | None:
        return self.httpd.server_address[1] if self.httpd is not None else None

    def close(self) -> None:
        """Stop the threads and the server (idempotent)."""
        self.stop_event.set()
        if self.httpd is not None:
            self.httpd.shutdown()
            self.httpd.server_close()
            self.httpd = None


def serve_role(runtime: Runtime, role: str, port: int | None = None, host: str | None = None) -> RoleServer:
    """Start the background duties of ``role`` ("worker" or "manager") and, when ``port`` is not
    0, its metrics and health server (``port`` defaults to ``TASKMILL_METRICS_PORT``).

    Raises:
        OSError: the port is taken.
    """
    from taskmill.metrics import ResourceSampler
    from taskmill.metrics import cluster_stats

    port = int(metrics_setting(runtime, "port", 0)) if port is None else port
    server = RoleServer(runtime, role)
    if role == "manager":
        server.threads.append(cluster_stats(runtime).run_refresher(server.stop_event))
    if role == "worker":
        server.threads.append(ResourceSampler(runtime).run(server.stop_event))
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        atexit.register(_mark_dead, os.getpid())
    if port:
        server.httpd = _Server((host or runtime.settings.host, port), runtime)
        thread = threading.Thread(target=server.httpd.serve_forever, name="taskmill-metrics", daemon=True)
        thread.start()
        server.threads.append(thread)
        logger.info("%s metrics and health on http://%s:%s/metrics", role, *server.httpd.server_address[:2])
    return server


def _mark_dead(pid: int) -> None:
    """Drop this process's live gauges from the shared directory when it exits."""
    if pid != os.getpid():
        return  # a forked child inherited the handler
    try:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)
    except Exception:  # noqa: BLE001 - exiting anyway  # pragma: no cover
        pass
