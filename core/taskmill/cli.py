"""The ``taskmill`` command: roles (api, worker, manager, run) and operator commands.

Imports are kept inside the commands: ``taskmill api`` and ``taskmill run`` must set
``PROMETHEUS_MULTIPROC_DIR`` before prometheus_client is imported.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from typing import Any

import click

from taskmill import cli_admin as _cli_admin
from taskmill import cli_schedules as _cli_schedules
from taskmill.errors import BrokerUnavailable
from taskmill.errors import ConfigError
from taskmill.errors import Conflict
from taskmill.errors import InvalidTransition
from taskmill.errors import NotFound
from taskmill.errors import StorageUnavailable
from taskmill.errors import TaskmillError

__all__ = ["main", "cli", "EXIT_CONFIG", "EXIT_UNAVAILABLE", "EXIT_NOT_FOUND", "EXIT_CONFLICT"]

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_CONFIG = 2
EXIT_UNAVAILABLE = 3
EXIT_NOT_FOUND = _cli_admin.EXIT_NOT_FOUND
EXIT_CONFLICT = _cli_admin.EXIT_CONFLICT


def _setup_logging(settings: Any) -> None:
    """JSON lines (or text on a terminal), secrets masked; see :mod:`taskmill.logs`."""
    from taskmill.config import secret_values
    from taskmill.logs import configure

    configure(settings.log_level, settings.log_format, secrets=secret_values(settings))


class _Group(click.Group):
    """Turns taskmill errors into one clear line and a named exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ConfigError as exc:
            click.echo(f"Error: {exc}", err=True)
            ctx.exit(EXIT_CONFIG)
        except (StorageUnavailable, BrokerUnavailable) as exc:
            click.echo(f"Error: {exc}", err=True)
            ctx.exit(EXIT_UNAVAILABLE)
        except NotFound as exc:
            click.echo(f"Error: {exc}", err=True)
            ctx.exit(EXIT_NOT_FOUND)
        except (InvalidTransition, Conflict) as exc:
            click.echo(f"Error: {exc}", err=True)
            ctx.exit(EXIT_CONFLICT)
        except TaskmillError as exc:
            click.echo(f"Error: {exc}", err=True)
            ctx.exit(EXIT_ERROR)


def _settings(**overrides: Any) -> Any:
    from taskmill.config import load_settings

    return load_settings(overrides={k: v for k, v in overrides.items() if v is not None})


def _runtime(settings: Any = None, upgrade: bool = True) -> Any:
    from taskmill.runtime import build_runtime

    settings = settings or _settings()
    _setup_logging(settings)
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
    _setup_logging(settings)
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
    "--pool",
    type=click.Choice(["prefork", "threads", "asyncio"]),
    default=None,
    help="How handlers run (TASKMILL_WORKER_POOL; default prefork).",
)
@click.option(
    "--max-tasks-per-child",
    type=int,
    default=None,
    help="Prefork: replace a child after this many tasks (TASKMILL_WORKER_MAX_TASKS_PER_CHILD; 0 never).",
)
@click.option(
    "--metrics-port",
    type=int,
    default=None,
    help="Port of /metrics and /health/* (TASKMILL_METRICS_PORT; 0: off).",
)
def worker(
    queues: str,
    concurrency: int | None,
    prefetch: int | None,
    burst: bool,
    pool: str | None,
    max_tasks_per_child: int | None,
    metrics_port: int | None,
) -> None:
    """Take tasks from the broker and run their handlers."""
    settings = _settings(
        worker_concurrency=concurrency,
        worker_prefetch=prefetch,
        worker_pool=pool,
        worker_max_tasks_per_child=max_tasks_per_child,
    )
    rt = _runtime(settings)
    from taskmill.worker import WorkerOptions
    from taskmill.worker import set_current_runtime

    names = [q.strip() for q in queues.split(",") if q.strip()]
    options = WorkerOptions(
        queues=names,
        concurrency=settings.concurrency,
        prefetch=settings.worker_prefetch,
        burst=burst,
        pool=settings.worker_pool,
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
    click.echo(f"Dashboard: http://{settings.host}:{settings.port}/")
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


@db.command("current")
def db_current() -> None:
    """Print the schema revision of the database (and whether it is the newest)."""
    rt = _runtime(upgrade=False)
    try:
        click.echo(rt.storage.revision())
    finally:
        rt.close()


@db.command("downgrade")
@click.argument("revision")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def db_downgrade(revision: str, yes: bool) -> None:
    """Undo migrations down to REVISION (e.g. 0003). Data of newer tables is lost."""
    if not yes:
        click.confirm(f"Downgrade the database schema to {revision}? Newer tables are dropped.", abort=True)
    rt = _runtime(upgrade=False)
    try:
        rt.storage.downgrade(revision)
        click.echo(f"database downgraded to {rt.storage.revision()}")
    finally:
        rt.close()


@db.command("prune")
@click.option("--older-than", type=click.FloatRange(min=0), default=None, help="Seconds (default: the TTLs).")
def db_prune(older_than: float | None) -> None:
    """Delete finished tasks past TASKMILL_RESULT_TTL and events past TASKMILL_EVENTS_RETENTION now
    (the manager does it continuously; this is for a one-off clean-up)."""
    import datetime as dt

    rt = _runtime()
    try:
        now = dt.datetime.now(dt.UTC)
        tasks_before = now - dt.timedelta(
            seconds=older_than if older_than is not None else rt.settings.result_ttl
        )
        events_before = now - dt.timedelta(
            seconds=older_than if older_than is not None else rt.settings.events_retention
        )
        deleted = events = 0
        while n := rt.storage.tasks.delete_finished(tasks_before, 1000):
            deleted += n
        while n := rt.storage.events.prune(events_before, 10_000):
            events += n
        click.echo(f"deleted {deleted} finished task(s) and {events} event(s)")
    finally:
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


# ---- operator commands on tasks, queues, dead letters, workers (taskmill.cli_admin) ---------------------

for _group in (
    _cli_admin.tasks,
    _cli_admin.queues,
    _cli_admin.dead_letters,
    _cli_admin.workers,
    _cli_admin.stats,
    _cli_admin.config,
):
    cli.add_command(_group)

# The first CLI's top-level task commands, kept as hidden aliases of ``taskmill tasks …``.
for _alias, _command in (
    ("submit", _cli_admin.tasks_submit),
    ("show", _cli_admin.tasks_show),
    ("list", _cli_admin.tasks_list),
    ("cancel", _cli_admin.tasks_cancel),
    ("retry", _cli_admin.tasks_retry),
):
    cli.add_command(
        click.Command(
            _alias,
            callback=_command.callback,
            params=_command.params,
            help=f"Alias of `taskmill tasks {_alias}`.",
            hidden=True,
        )
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
