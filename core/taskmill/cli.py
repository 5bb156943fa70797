"""The ``taskmill`` command: roles (api, worker, manager, run) and operator commands.

Imports are kept inside the commands: ``taskmill api`` and ``taskmill run`` must set
``PROMETHEUS_MULTIPROC_DIR`` before prometheus_client is imported.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import tempfile
import time
import uuid
from typing import Any

import click

from taskmill import cli_schedules as _cli_schedules
from taskmill.errors import ConfigError
from taskmill.errors import StorageUnavailable
from taskmill.errors import TaskmillError
from taskmill.models import TaskQuery

__all__ = ["main", "cli", "EXIT_CONFIG", "EXIT_UNAVAILABLE"]

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_CONFIG = 2
EXIT_UNAVAILABLE = 3


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s",
        stream=sys.stderr,
    )


class _Group(click.Group):
    """Turns taskmill errors into one clear line and a named exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ConfigError as exc:
            click.echo(f"Error: {exc}", err=True)
            ctx.exit(EXIT_CONFIG)
        except StorageUnavailable as exc:
            click.echo(f"Error: {exc}", err=True)
            ctx.exit(EXIT_UNAVAILABLE)
        except TaskmillError as exc:
            click.echo(f"Error: {exc}", err=True)
            ctx.exit(EXIT_ERROR)


def _settings(**overrides: Any) -> Any:
    from taskmill.config import load_settings

    return load_settings(overrides={k: v for k, v in overrides.items() if v is not None})


def _runtime(settings: Any = None, upgrade: bool = True) -> Any:
    from taskmill.runtime import build_runtime

    settings = settings or _settings()
    _setup_logging(settings.log_level)
    return build_runtime(settings, upgrade=upgrade)


def _ensure_metrics_dir(settings: Any) -> str:
    """Give every process of this installation one prometheus multiprocess directory."""
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or settings.metrics_dir
    if not path:
        path = tempfile.mkdtemp(prefix="taskmill-metrics-")
    os.makedirs(path, exist_ok=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
    return path


@click.group(cls=_Group)
@click.version_option(package_name="taskmill")
def cli() -> None:
    """taskmill: a distributed task queue with a REST API.

    Every setting comes from TASKMILL_* environment variables (see the README).
    """


# ---- roles -----------------------------------------------------------------------------------------


@cli.command()
@click.option("--host", default=None, help="Address to bind (TASKMILL_HOST, default 127.0.0.1).")
@click.option("--port", type=int, default=None, help="Port (TASKMILL_PORT, default 8000).")
@click.option("--workers", type=int, default=None, help="gunicorn workers (TASKMILL_API_WORKERS).")
def api(host: str | None, port: int | None, workers: int | None) -> None:
    """Serve the REST API under gunicorn."""
    settings = _settings(host=host, port=port, api_workers=workers)
    _setup_logging(settings.log_level)
    metrics_dir = _ensure_metrics_dir(settings)
    from taskmill.runtime import build_runtime

    build_runtime(settings, upgrade=True).close()
    from taskmill.gunicorn_app import serve

    serve(settings, metrics_dir)


@cli.command()
@click.option(
    "--queues", "-q", default="default", show_default=True, help="Comma-separated queues to take from."
)
@click.option("--concurrency", "-c", type=int, default=None, help="Processes running tasks (default: CPUs).")
@click.option("--prefetch", type=int, default=None, help="Tasks claimed beyond free processes.")
@click.option("--burst", is_flag=True, help="Exit when there is nothing left to do.")
@click.option(
    "--metrics-port",
    type=int,
    default=None,
    help="Port of /metrics and /health/* (TASKMILL_METRICS_PORT; 0: off).",
)
def worker(
    queues: str, concurrency: int | None, prefetch: int | None, burst: bool, metrics_port: int | None
) -> None:
    """Take tasks from the broker and run their handlers."""
    settings = _settings(worker_concurrency=concurrency, worker_prefetch=prefetch)
    rt = _runtime(settings)
    from taskmill.worker import WorkerOptions
    from taskmill.worker import set_current_runtime

    names = [q.strip() for q in queues.split(",") if q.strip()]
    options = WorkerOptions(
        queues=names, concurrency=settings.concurrency, prefetch=settings.worker_prefetch, burst=burst
    )
    set_current_runtime(rt)
    rt.worker_id = options.worker_id
    from taskmill.probes import serve_role

    serve_role(rt, "worker", metrics_port)  # TASKMILL_METRICS_PORT unless --metrics-port
    try:
        rt.broker.run_worker(options)
    finally:
        rt.close()


@cli.command()
@click.option("--once", is_flag=True, help="Run one tick and exit.")
@click.option(
    "--metrics-port",
    type=int,
    default=None,
    help="Port of /metrics and /health/* (TASKMILL_METRICS_PORT; 0: off).",
)
def manager(once: bool, metrics_port: int | None) -> None:
    """Release delayed tasks, recover dead workers' tasks, re-publish, expire."""
    rt = _runtime()
    from taskmill.manager import Manager
    from taskmill.probes import serve_role

    serve_role(rt, "manager", metrics_port)  # TASKMILL_METRICS_PORT unless --metrics-port
    try:
        m = Manager(rt)
        if once:
            click.echo(json.dumps(m.tick()))
        else:
            m.run()
    finally:
        rt.close()


@cli.command()
@click.option("--host", default=None, help="Address of the API (default 127.0.0.1).")
@click.option("--port", type=int, default=None, help="Port of the API (default 8000).")
@click.option("--concurrency", "-c", type=int, default=None, help="Worker processes (default: CPUs).")
@click.option("--queues", "-q", default="default", show_default=True, help="Queues the worker takes from.")
def run(host: str | None, port: int | None, concurrency: int | None, queues: str) -> None:
    """Run api, worker and manager together on this machine (Ctrl-C stops them all)."""
    settings = _settings(host=host, port=port, worker_concurrency=concurrency)
    metrics_dir = _ensure_metrics_dir(settings)
    rt = _runtime(settings)
    for line in rt.host.bootstrap(rt):
        click.echo(line)
    rt.close()
    from taskmill.supervisor import Supervisor

    env = dict(os.environ)
    env["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    base = [sys.executable, "-m", "taskmill.cli"]
    roles = {
        "api": base + ["api", "--host", settings.host, "--port", str(settings.port)],
        "worker": base
        + ["worker", "--queues", queues, "--concurrency", str(settings.concurrency), "--metrics-port", "0"],
        "manager": base + ["manager", "--metrics-port", "0"],  # the api's /metrics shows theirs
    }
    sup = Supervisor(roles, env)
    click.echo(
        f"taskmill is running at http://{settings.host}:{settings.port}  (docs: /api/v1/docs; Ctrl-C to stop)"
    )
    sys.stdout.flush()
    code = sup.run()
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR_KEEP"):
        shutil.rmtree(metrics_dir, ignore_errors=True) if metrics_dir.startswith(
            tempfile.gettempdir()
        ) else None
    sys.exit(code)


# ---- operator commands -------------------------------------------------------------------------------


@cli.group()
def db() -> None:
    """Database commands."""


@db.command("upgrade")
def db_upgrade() -> None:
    """Apply the storage migrations (idempotent)."""
    rt = _runtime(upgrade=True)
    for line in rt.host.bootstrap(rt):
        click.echo(line)
    click.echo("database is up to date")
    rt.close()


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def plugins(as_json: bool) -> None:
    """List plugins, brokers, storages, auth backends and handlers, with their distributions."""
    rt = _runtime(upgrade=False)
    from taskmill.plugins import describe_plugins

    reg = rt.registries
    data = {
        "plugins": describe_plugins(rt.pm),
        "brokers": {
            s: {"class": c.__name__, "plugin": p, "distribution": rt.host.distribution_of(p)}
            for s, (p, c) in sorted(reg.brokers.items())
        },
        "storages": {
            s: {"class": c.__name__, "plugin": p, "distribution": rt.host.distribution_of(p)}
            for s, (p, c) in sorted(reg.storages.items())
        },
        "auth_backends": [
            {"class": c.__name__, "plugin": p, "distribution": rt.host.distribution_of(p)}
            for p, c in reg.auth_backends
        ],
        "handlers": {
            n: {"plugin": h.plugin, "distribution": rt.host.distribution_of(h.plugin)}
            for n, h in sorted(reg.handlers.items())
        },
    }
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    click.echo("Plugins:")
    for p in data["plugins"]:
        click.echo(f"  {p['name']:<20} {p['distribution']:<32} hooks: {', '.join(p['hooks'])}")
    for title, key in (("Brokers", "brokers"), ("Storages", "storages")):
        click.echo(f"{title}:")
        for scheme, d in data[key].items():
            click.echo(f"  {scheme + '://':<20} {d['class']:<20} from {d['plugin']} ({d['distribution']})")
    click.echo("Auth backends:")
    for d in data["auth_backends"]:
        click.echo(f"  {d['class']:<20} from {d['plugin']} ({d['distribution']})")
    click.echo("Handlers:")
    for name, d in data["handlers"].items():
        click.echo(f"  {name:<20} from {d['plugin']} ({d['distribution']})")


def _task_json(task: Any) -> dict[str, Any]:
    from taskmill.serialize import task_to_dict

    return task_to_dict(task)


def _parse_id(value: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise click.BadParameter(f"not a task id: {value!r}") from None


@cli.command()
@click.argument("type_", metavar="TYPE")
@click.option("--payload", "-p", default="{}", help="JSON object passed to the handler.")
@click.option("--queue", default=None)
@click.option("--priority", type=click.IntRange(0, 9), default=None)
@click.option("--delay", type=click.FloatRange(min=0), default=None, help="Seconds to wait before running.")
@click.option("--max-retries", type=click.IntRange(0, 100), default=None)
@click.option("--timeout", type=click.IntRange(min=1), default=None)
@click.option("--tag", "tags", multiple=True)
@click.option("--tenant", default="default", show_default=True)
@click.option("--wait", "wait_", is_flag=True, help="Wait until the task ends and print it.")
def submit(
    type_: str,
    payload: str,
    queue: str | None,
    priority: int | None,
    delay: float | None,
    max_retries: int | None,
    timeout: int | None,
    tags: tuple[str, ...],
    tenant: str,
    wait_: bool,
) -> None:
    """Submit a task and print it as JSON."""
    try:
        body = json.loads(payload)
    except ValueError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint="--payload") from None
    if not isinstance(body, dict):
        raise click.BadParameter("must be a JSON object", param_hint="--payload")
    rt = _runtime()
    data = {
        "type": type_,
        "payload": body,
        "queue": queue,
        "priority": priority,
        "delay": delay,
        "max_retries": max_retries,
        "timeout": timeout,
        "tags": list(tags),
    }
    [(task, _)] = rt.lifecycle.submit(
        [rt.lifecycle.build({k: v for k, v in data.items() if v is not None}, tenant)]
    )
    if wait_:
        while not task.is_final:
            time.sleep(0.2)
            task = rt.lifecycle.get(task.id, None)
    click.echo(json.dumps(_task_json(task), indent=2))


@cli.command()
@click.argument("task_id")
def show(task_id: str) -> None:
    """Print one task as JSON."""
    rt = _runtime()
    click.echo(json.dumps(_task_json(rt.lifecycle.get(_parse_id(task_id), None)), indent=2))


@cli.command("list")
@click.option("--status", default=None)
@click.option("--type", "type_", default=None)
@click.option("--queue", default=None)
@click.option("--tenant", default=None)
@click.option("--limit", type=click.IntRange(1, 1000), default=20, show_default=True)
def list_(status: str | None, type_: str | None, queue: str | None, tenant: str | None, limit: int) -> None:
    """List tasks, newest first."""
    rt = _runtime()
    query = TaskQuery(status=status, type=type_, queue=queue, tenant=tenant, limit=limit)
    items, total = rt.storage.tasks.list(query)
    click.echo(f"{'id':<36}  {'status':<10} {'type':<20} {'queue':<12} {'attempts':>8}  created")
    for t in items:
        click.echo(
            f"{t.id!s:<36}  {t.status.value:<10} {t.type:<20} {t.queue:<12} {t.attempts:>8}  "
            f"{t.created_at:%Y-%m-%d %H:%M:%S}"
        )
    click.echo(f"({len(items)} of {total})")


@cli.command()
@click.argument("task_id")
def cancel(task_id: str) -> None:
    """Cancel a task (a running one is asked to stop)."""
    rt = _runtime()
    task, done = rt.lifecycle.cancel(_parse_id(task_id), None)
    click.echo(f"{task.id} {'cancelled' if done else 'cancel requested (running)'}")


@cli.command()
@click.argument("task_id")
def retry(task_id: str) -> None:
    """Run a failed or cancelled task again."""
    rt = _runtime()
    task = rt.lifecycle.retry(_parse_id(task_id), None)
    click.echo(f"{task.id} {task.status.value}")


@cli.command()
def queues() -> None:
    """Queues with their depth per state (and the broker's backlog)."""
    rt = _runtime()
    backlog = rt.broker.backlog()
    for q in rt.storage.queues.stats(None):
        depth = ", ".join(f"{k}={v}" for k, v in sorted(q.depth.items())) or "empty"
        extra = f"  broker backlog={backlog.get(q.name, 0)}" if backlog else ""
        click.echo(f"{q.name:<20} {'paused' if q.paused else 'active':<7} {depth}{extra}")


@cli.command()
def workers() -> None:
    """Live workers."""
    rt = _runtime()
    for w in rt.storage.workers.list():
        click.echo(
            f"{w.id:<40} queues={','.join(w.queues)} processed={w.processed} failed={w.failed} "
            f"last_heartbeat={w.last_heartbeat:%H:%M:%S} current={w.current_task or '-'}"
        )


cli.add_command(_cli_schedules.schedules)
cli.add_command(_cli_schedules.workflows)


def main() -> None:
    """Console entry point: adds plugin commands, then runs the CLI."""
    try:
        from taskmill.config import load_settings
        from taskmill.plugins import PluginHost
        from taskmill.plugins import get_plugin_manager

        PluginHost(get_plugin_manager(load_settings())).extend_cli(cli)
    except ConfigError as exc:
        if len(sys.argv) > 1 and sys.argv[1] not in ("--help", "--version"):
            click.echo(f"Error: {exc}", err=True)
            sys.exit(EXIT_CONFIG)
    cli(prog_name="taskmill")


if __name__ == "__main__":
    main()
