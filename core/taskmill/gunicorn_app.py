"""``taskmill api``: gunicorn serving ``taskmill.app:create_app()``."""

from __future__ import annotations

from typing import Any

from gunicorn.app.base import BaseApplication

from taskmill.config import Settings

__all__ = ["serve"]


def _child_exit(_server: Any, worker: Any) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


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

        return create_app(self.settings)


def serve(settings: Settings, metrics_dir: str) -> None:
    """Run gunicorn in the foreground until SIGTERM/SIGINT."""
    options = {
        "bind": f"{settings.host}:{settings.port}",
        "workers": settings.api_workers,
        "threads": settings.api_threads,
        "worker_class": "gthread" if settings.api_threads > 1 else "sync",
        "timeout": 60,
        "graceful_timeout": 10,
        "keepalive": 5,
        "control_socket_disable": True,  # gunicorn ≥ 25 would share ~/.gunicorn/gunicorn.ctl otherwise
        "child_exit": _child_exit,
        "loglevel": settings.log_level.lower(),
        "accesslog": None,
        "preload_app": False,
        "proc_name": "taskmill-api",
    }
    _App(settings, options).run()
