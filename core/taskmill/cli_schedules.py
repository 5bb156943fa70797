"""``taskmill schedules …`` and ``taskmill workflows …``: the operator's commands, on the database.

Attached to the ``taskmill`` group by :mod:`taskmill.cli` (``cli.add_command(schedules)`` and
``cli.add_command(workflows)``). They act on the storage directly, like ``taskmill list`` does,
in the tenant given with ``--tenant`` (default ``default``). Errors are taskmill errors, which the
``taskmill`` group turns into one line and an exit code.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import click

from taskmill.errors import NotFound
from taskmill.serialize import format_time

__all__ = ["schedules", "workflows"]


def _runtime() -> Any:
    from taskmill.config import load_settings
    from taskmill.runtime import build_runtime

    return build_runtime(load_settings(), upgrade=True)


def _schedule_json(schedule: Any) -> dict[str, Any]:
    return {
        "id": str(schedule.id),
        "name": schedule.name,
        "tenant": schedule.tenant,
        "cron": schedule.cron,
        "interval": schedule.interval,
        "timezone": schedule.timezone,
        **schedule.task,
        "paused": schedule.paused,
        "next_run_at": format_time(schedule.next_run_at),
        "last_run_at": format_time(schedule.last_run_at),
        "last_task_id": None if schedule.last_task_id is None else str(schedule.last_task_id),
    }


def _line(schedule: Any) -> str:
    when = schedule.cron or f"every {schedule.interval}s"
    state = "paused" if schedule.paused else "active"
    nxt = format_time(schedule.next_run_at) or "-"
    return f"{schedule.tenant}/{schedule.name:<30} {state:<7} {when:<20} {schedule.timezone:<20} next={nxt}"


tenant_option = click.option("--tenant", default="default", show_default=True, help="The schedule's tenant.")
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")


@click.group()
def schedules() -> None:
    """Periodic tasks: cron (five fields, in a time zone) or an interval."""


@schedules.command("list")
@click.option("--tenant", default=None, help="Only this tenant's (default: every tenant).")
@json_option
def schedules_list(tenant: str | None, as_json: bool) -> None:
    """Every schedule, by name."""
    rt = _runtime()
    try:
        items, _ = rt.storage.schedules.list(tenant=tenant, offset=0, limit=10_000)
    finally:
        rt.close()
    if as_json:
        click.echo(json.dumps([_schedule_json(s) for s in items], indent=2))
        return
    for s in items:
        click.echo(_line(s))


@schedules.command("show")
@click.argument("name")
@tenant_option
def schedules_show(name: str, tenant: str) -> None:
    """One schedule, as JSON."""
    from taskmill.schedules import ScheduleService

    rt = _runtime()
    try:
        click.echo(json.dumps(_schedule_json(ScheduleService(rt).get(name, tenant)), indent=2))
    finally:
        rt.close()


@schedules.command("create")
@click.argument("name")
@click.argument("type_", metavar="TYPE")
@click.option("--cron", default=None, help='Five fields, e.g. "30 2 * * *".')
@click.option("--interval", type=click.IntRange(min=1), default=None, help="Seconds between runs.")
@click.option("--timezone", default="UTC", show_default=True, help="IANA time zone of --cron.")
@click.option("--payload", "-p", default="{}", help="JSON object passed to the handler.")
@click.option("--queue", default=None)
@click.option("--priority", type=click.IntRange(0, 9), default=None)
@click.option("--max-retries", type=click.IntRange(0, 100), default=None)
@click.option("--timeout", type=click.IntRange(min=1), default=None)
@click.option("--tag", "tags", multiple=True)
@tenant_option
def schedules_create(
    name: str,
    type_: str,
    cron: str | None,
    interval: int | None,
    timezone: str,
    payload: str,
    queue: str | None,
    priority: int | None,
    max_retries: int | None,
    timeout: int | None,
    tags: tuple[str, ...],
    tenant: str,
) -> None:
    """Create schedule NAME submitting tasks of TYPE (exactly one of --cron or --interval)."""
    from taskmill.schedules import ScheduleService

    try:
        body = json.loads(payload)
    except ValueError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint="--payload") from None
    data = {
        "name": name,
        "type": type_,
        "cron": cron,
        "interval": interval,
        "timezone": timezone,
        "payload": body,
        "queue": queue,
        "priority": priority,
        "max_retries": max_retries,
        "timeout": timeout,
        "tags": list(tags) or None,
    }
    rt = _runtime()
    try:
        schedule = ScheduleService(rt).create({k: v for k, v in data.items() if v is not None}, tenant)
    finally:
        rt.close()
    click.echo(json.dumps(_schedule_json(schedule), indent=2))


def _act(name: str, tenant: str, action: str) -> None:
    from taskmill.schedules import ScheduleService

    rt = _runtime()
    try:
        service = ScheduleService(rt)
        if action == "delete":
            service.delete(name, tenant)
            click.echo(f"deleted {tenant}/{name}")
            return
        schedule = service.pause(name, tenant) if action == "pause" else service.resume(name, tenant)
    finally:
        rt.close()
    click.echo(_line(schedule))


@schedules.command("delete")
@click.argument("name")
@tenant_option
def schedules_delete(name: str, tenant: str) -> None:
    """Delete a schedule (the tasks it submitted stay)."""
    _act(name, tenant, "delete")


@schedules.command("pause")
@click.argument("name")
@tenant_option
def schedules_pause(name: str, tenant: str) -> None:
    """Stop a schedule from submitting until resumed."""
    _act(name, tenant, "pause")


@schedules.command("resume")
@click.argument("name")
@tenant_option
def schedules_resume(name: str, tenant: str) -> None:
    """Resume a schedule from its next due time after now."""
    _act(name, tenant, "resume")


# ---- workflows ----------------------------------------------------------------------------------------


@click.group()
def workflows() -> None:
    """DAGs of tasks submitted in one request."""


def _workflow_id(value: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise NotFound(f"workflow {value} not found") from None


@workflows.command("list")
@click.option("--tenant", default=None, help="Only this tenant's (default: every tenant).")
@click.option("--status", type=click.Choice(["running", "completed", "failed"]), default=None)
@click.option("--limit", type=click.IntRange(1, 1000), default=20, show_default=True)
def workflows_list(tenant: str | None, status: str | None, limit: int) -> None:
    """Workflows, newest first."""
    rt = _runtime()
    try:
        items, total = rt.storage.workflows.list(tenant=tenant, status=status, offset=0, limit=limit)
    finally:
        rt.close()
    for w in items:
        click.echo(
            f"{w.id}  {w.status:<9} {w.tenant}/{w.name or '-':<24} tasks={w.task_count} "
            f"created={format_time(w.created_at)}"
        )
    if total > len(items):
        click.echo(f"… {total - len(items)} more")


@workflows.command("show")
@click.argument("workflow_id")
def workflows_show(workflow_id: str) -> None:
    """One workflow with every task, as JSON."""
    from taskmill.api.workflows import workflow_to_dict
    from taskmill.workflows import WorkflowService

    rt = _runtime()
    try:
        workflow = WorkflowService(rt).get(_workflow_id(workflow_id), None)
    finally:
        rt.close()
    click.echo(json.dumps(workflow_to_dict(workflow), indent=2))


@workflows.command("cancel")
@click.argument("workflow_id")
def workflows_cancel(workflow_id: str) -> None:
    """Cancel every task of a workflow that has not ended."""
    from taskmill.workflows import WorkflowService

    rt = _runtime()
    try:
        workflow = WorkflowService(rt).cancel(_workflow_id(workflow_id), None)
    finally:
        rt.close()
    open_tasks = sum(1 for _, t in workflow.tasks if not t.is_final)
    click.echo(f"{workflow.id} cancelled; {open_tasks} running task(s) asked to stop")
