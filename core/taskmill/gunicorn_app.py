"""``taskmill api``: gunicorn serving ``taskmill.app:create_app()``."""

from __future__ import annotations

from typing import Any

from gunicorn.app.base import BaseApplication
from gunicorn.glogging import Logger

from taskmill.config import Settings

__all__ = ["serve"]

STREAM_HEADROOM = 32
"""Threads per API process beyond its cap of event streams: what ordinary requests always have."""


def _child_exit(_server: Any, worker: Any) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


class TaskmillLogger(Logger):
    """gunicorn's logger, sending its error log through taskmill's handler (JSON lines, secrets
    masked) instead of a handler of its own; the access log stays off (the app logs requests)."""

    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        self.error_log.handlers = []
        self.error_log.propagate = True


class _App(BaseApplication):
    def __init__(self, settings: Settings, options: dict[str, Any]) -> None:
        self.settings = settings
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        from taskmill.app import create_app
        from taskmill.config import secret_values
        from taskmill.logs import configure

        configure(self.settings.log_level, self.settings.log_format, secrets=secret_values(self.settings))

        return create_app(self.settings)


def serve(settings: Settings, metrics_dir: str) -> None:
    """Run gunicorn in the foreground until SIGTERM/SIGINT.

    The worker class is ``gthread``: a server-sent events stream holds one thread for its life
    (a ``sync`` worker would be held whole, and killed at ``timeout``), so each process runs its
    cap of streams plus :data:`STREAM_HEADROOM` threads, and streams can never take every thread.
    """
    from taskmill.api.events import DEFAULT_MAX_STREAMS

    streams = int(getattr(settings, "events_max_streams", 0) or DEFAULT_MAX_STREAMS)
    options = {
        "bind": f"{settings.host}:{settings.port}",
        "workers": settings.api_workers,
        "threads": max(settings.api_threads, streams + STREAM_HEADROOM),
        "worker_class": "gthread",
        "timeout": 60,
        "graceful_timeout": 10,
        "keepalive": 5,
        "control_socket_disable": True,  # gunicorn ≥ 25 would share ~/.gunicorn/gunicorn.ctl otherwise
        "child_exit": _child_exit,
        "loglevel": settings.log_level.lower(),
        "accesslog": None,
        "preload_app": False,
        "proc_name": "taskmill-api",
        "logger_class": TaskmillLogger,
    }
    _App(settings, options).run()
