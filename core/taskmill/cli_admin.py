"""The operator's commands: ``taskmill tasks|queues|dead-letters|workers|stats|config …``.

They act on the database through the lifecycle and the resource stores (the same door the API
uses), as the operator: ``--tenant`` narrows to one tenant, and nothing is hidden otherwise.
Every read command prints a table for people and, with ``--json``, JSON for scripts. Exit codes
(:data:`EXIT_CODES`) are stable: scripts may rely on them.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
import time
import uuid
from collections.abc import Iterable
from collections.abc import Sequence
from typing import Any

import click

__all__ = [
    "tasks",
    "queues",
    "dead_letters",
    "workers",
    "stats",
    "config",
    "EXIT_CODES",
    "EXIT_NOT_FOUND",
    "EXIT_CONFLICT",
    "EXIT_TASK_FAILED",
    "print_table",
    "runtime",
]

EXIT_NOT_FOUND = 4
EXIT_CONFLICT = 5
EXIT_TASK_FAILED = 6
EXIT_CODES = {
    0: "success",
    1: "an error (a bad argument, a plugin error)",
    2: "invalid configuration (TASKMILL_* values)",
    3: "the database or the broker is unreachable",
    EXIT_NOT_FOUND: "no such task, queue, schedule or workflow",
    EXIT_CONFLICT: "the action does not fit the state (cancel a finished task, requeue a running one)",
    EXIT_TASK_FAILED: "`tasks submit --wait` / `tasks watch`: the task ended failed or cancelled",
}
"""What each exit code of ``taskmill`` means (docs/cli.md lists the same)."""

json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
tenant_option = click.option("--tenant", default=None, help="Only this tenant (default: every tenant).")


def runtime() -> Any:
    """The runtime of a CLI command (migrating the database first, as every role does)."""
    from taskmill.cli import _runtime

    return _runtime()


def print_table(rows: Sequence[dict[str, Any]], columns: Sequence[str], *, empty: str = "(none)") -> None:
    """A plain aligned table; values are shortened to keep lines readable."""
    if not rows:
        click.echo(empty)
        return
    cells = [[_cell(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    click.echo("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip())
    for r in cells:
        click.echo("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, list | tuple | set):
        return ",".join(str(v) for v in value) or "-"
    text = str(getattr(value, "value", value))
    return text if len(text) <= 60 else text[:57] + "..."


def _dump(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


def _parse_id(value: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise click.BadParameter(f"not a task id: {value!r}") from None


def _task_json(task: Any) -> dict[str, Any]:
    from taskmill.serialize import task_to_dict

    return task_to_dict(task)


def _task_row(t: Any) -> dict[str, Any]:
    return {
        "id": t.id,
        "status": t.status,
        "type": t.type,
        "queue": t.queue,
        "tenant": t.tenant,
        "attempts": t.attempts,
        "created": t.created_at,
        "error": (t.error or {}).get("type") if t.error else None,
    }


def _payload(text: str, what: str = "--payload") -> dict[str, Any]:
    try:
        body = json.loads(text)
    except ValueError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint=what) from None
    if not isinstance(body, dict):
        raise click.BadParameter("must be a JSON object", param_hint=what)
    return body


def _when(value: str | None, name: str) -> dt.datetime | None:
    if not value:
        return None
    try:
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise click.BadParameter(f"not an ISO 8601 time: {value!r}", param_hint=name) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def _wait_final(rt: Any, task: Any, *, show_progress: bool) -> Any:
    """Poll until the task ends; draw its progress when asked (``tasks watch``)."""
    if not show_progress:
        while not task.is_final:
            time.sleep(0.2)
            task = rt.lifecycle.get(task.id, None)
        return task
    with click.progressbar(length=100, label=f"{task.type} {task.id}", file=sys.stderr) as bar:
        shown = 0
        while True:
            target = 100 if task.is_final else int((task.progress or 0.0) * 100)
            if target > shown:
                bar.update(target - shown)
                shown = target
            if task.is_final:
                return task
            time.sleep(0.2)
            task = rt.lifecycle.get(task.id, None)


def _exit_for(task: Any) -> None:
    if task.status.value in ("failed", "cancelled"):
        sys.exit(EXIT_TASK_FAILED)


# ---- tasks -------------------------------------------------------------------------------------------


@click.group()
def tasks() -> None:
    """Submit, inspect, cancel, retry and follow tasks.

    \b
    Examples:
      taskmill tasks submit echo --payload '{"hello": "world"}' --wait
      taskmill tasks list --status failed --json
      taskmill tasks watch 0b6f5c1e-...
    """


@tasks.command("submit")
@click.argument("type_", metavar="TYPE", required=False)
@click.option("--payload", "-p", default="{}", help="JSON object passed to the handler.")
@click.option(
    "--file", "file_", type=click.File("r"), help="Submit every JSON line of this file (- for stdin)."
)
@click.option("--queue", default=None)
@click.option("--priority", type=click.IntRange(0, 9), default=None)
@click.option("--delay", type=click.FloatRange(min=0), default=None, help="Seconds to wait before running.")
@click.option("--max-retries", type=click.IntRange(0, 100), default=None)
@click.option("--timeout", type=click.IntRange(min=1), default=None)
@click.option("--tag", "tags", multiple=True)
@click.option("--tenant", default="default", show_default=True)
@click.option("--wait", "wait_", is_flag=True, help="Wait until the task ends and print it.")
def tasks_submit(
    type_: str | None,
    payload: str,
    file_: Any,
    queue: str | None,
    priority: int | None,
    delay: float | None,
    max_retries: int | None,
    timeout: int | None,
    tags: tuple[str, ...],
    tenant: str,
    wait_: bool,
) -> None:
    """Submit a task (or, with --file, one per JSON line) and print it as JSON.

    \b
    Examples:
      taskmill tasks submit sleep --payload '{"seconds": 2}' --wait
      taskmill tasks submit --file tasks.jsonl     # {"type": "echo", "payload": {...}} per line
    """
    if file_ is not None:
        _submit_file(file_, tenant)
        return
    if not type_:
        raise click.UsageError("give a TYPE, or --file with one task per line")
    data = {
        "type": type_,
        "payload": _payload(payload),
        "queue": queue,
        "priority": priority,
        "delay": delay,
        "max_retries": max_retries,
        "timeout": timeout,
        "tags": list(tags),
    }
    rt = runtime()
    [(task, _)] = rt.lifecycle.submit(
        [rt.lifecycle.build({k: v for k, v in data.items() if v is not None}, tenant)]
    )
    if wait_:
        task = _wait_final(rt, task, show_progress=False)
    _dump(_task_json(task))
    if wait_:
        _exit_for(task)


def _submit_file(lines: Iterable[str], tenant: str, batch: int = 500) -> None:
    """Submit JSON lines in batches of ``batch`` (each batch all or none), with a progress bar."""
    bodies = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        body = _payload(line, f"line {number}")
        if "type" not in body:
            raise click.BadParameter("each line needs a 'type'", param_hint=f"line {number}")
        bodies.append(body)
    rt = runtime()
    ids: list[str] = []
    with click.progressbar(length=len(bodies), label="submitting", file=sys.stderr) as bar:
        for start in range(0, len(bodies), batch):
            chunk = bodies[start : start + batch]
            results = rt.lifecycle.submit([rt.lifecycle.build(b, tenant) for b in chunk])
            ids.extend(str(t.id) for t, _ in results)
            bar.update(len(chunk))
    _dump({"submitted": len(ids), "ids": ids})


@tasks.command("show")
@click.argument("task_id")
def tasks_show(task_id: str) -> None:
    """Print one task as JSON.  Example: taskmill tasks show 0b6f5c1e-..."""
    rt = runtime()
    _dump(_task_json(rt.lifecycle.get(_parse_id(task_id), None)))


@tasks.command("list")
@click.option("--status", default=None, help="queued, running, completed, failed, …")
@click.option("--type", "type_", default=None)
@click.option("--queue", default=None)
@click.option("--tag", default=None)
@click.option("--workflow", "workflow_id", default=None, help="Tasks of one workflow.")
@tenant_option
@click.option("--limit", type=click.IntRange(1, 1000), default=20, show_default=True)
@json_option
def tasks_list(
    status: str | None,
    type_: str | None,
    queue: str | None,
    tag: str | None,
    workflow_id: str | None,
    tenant: str | None,
    limit: int,
    as_json: bool,
) -> None:
    """List tasks, newest first.  Example: taskmill tasks list --status failed --queue emails"""
    from taskmill.models import TaskQuery

    rt = runtime()
    query = TaskQuery(
        status=status,
        type=type_,
        queue=queue,
        tag=tag,
        tenant=tenant,
        workflow_id=_parse_id(workflow_id) if workflow_id else None,
        limit=limit,
    )
    items, total = rt.storage.tasks.list(query)
    if as_json:
        _dump({"total": total, "tasks": [_task_json(t) for t in items]})
        return
    print_table(
        [_task_row(t) for t in items], ["id", "status", "type", "queue", "tenant", "attempts", "created"]
    )
    click.echo(f"({len(items)} of {total})")


@tasks.command("cancel")
@click.argument("task_id")
def tasks_cancel(task_id: str) -> None:
    """Cancel a task (a running one is asked to stop, then stopped after the grace)."""
    rt = runtime()
    task, done = rt.lifecycle.cancel(_parse_id(task_id), None)
    click.echo(f"{task.id} {'cancelled' if done else 'cancel requested (running)'}")


@tasks.command("retry")
@click.argument("task_id")
def tasks_retry(task_id: str) -> None:
    """Run a failed or cancelled task again with a fresh retry budget."""
    rt = runtime()
    task = rt.lifecycle.retry(_parse_id(task_id), None)
    click.echo(f"{task.id} {task.status.value}")


@tasks.command("watch")
@click.argument("task_id")
def tasks_watch(task_id: str) -> None:
    """Follow a task until it ends, with a progress bar; print it; exit 6 if it did not complete."""
    rt = runtime()
    task = _wait_final(rt, rt.lifecycle.get(_parse_id(task_id), None), show_progress=True)
    _dump(_task_json(task))
    _exit_for(task)


# ---- queues ------------------------------------------------------------------------------------------


@click.group(invoke_without_command=True)
@click.pass_context
def queues(ctx: click.Context) -> None:
    """Queues: depth per state, pause, resume, purge (`taskmill queues` alone lists them)."""
    if ctx.invoked_subcommand is None:
        ctx.invoke(queues_list)


@queues.command("list")
@tenant_option
@json_option
def queues_list(tenant: str | None = None, as_json: bool = False) -> None:
    """Every queue with its depth per state, paused or not, and the broker's backlog."""
    rt = runtime()
    try:
        backlog = rt.broker.backlog()
    except Exception:  # noqa: BLE001 - the broker's view is extra; the database's is the truth
        backlog = {}
    rows = []
    for q in rt.storage.queues.stats(tenant):
        rows.append(
            {
                "name": q.name,
                "paused": q.paused,
                **{f"{k}": v for k, v in sorted(q.depth.items())},
                "oldest_queued_age": getattr(q, "oldest_queued_age", None),
                "broker_backlog": backlog.get(q.name),
            }
        )
    if as_json:
        _dump(rows)
        return
    states = sorted({k for r in rows for k in r} - {"name", "paused", "oldest_queued_age", "broker_backlog"})
    print_table(rows, ["name", "paused", *states, "oldest_queued_age", "broker_backlog"], empty="(no queues)")


def _set_paused(name: str, paused: bool) -> None:
    rt = runtime()
    if paused:
        rt.lifecycle.pause_queue(name)
    else:
        rt.lifecycle.resume_queue(name)
    click.echo(f"{name} {'paused' if paused else 'resumed'}")


@queues.command("pause")
@click.argument("name")
def queues_pause(name: str) -> None:
    """Stop workers taking tasks of a queue (it still accepts tasks)."""
    _set_paused(name, True)


@queues.command("resume")
@click.argument("name")
def queues_resume(name: str) -> None:
    """Let workers take tasks of a paused queue again."""
    _set_paused(name, False)


@queues.command("purge")
@click.argument("name")
@tenant_option
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def queues_purge(name: str, tenant: str | None, yes: bool) -> None:
    """Cancel every task of a queue that has not started (queued, scheduled, waiting).

    Running tasks are left alone. Example: taskmill queues purge emails --yes
    """
    from taskmill.models import TaskQuery

    rt = runtime()
    ids: list[uuid.UUID] = []
    for status in ("queued", "scheduled", "waiting"):
        offset = 0
        while True:
            page, _total = rt.storage.tasks.list(
                TaskQuery(queue=name, status=status, tenant=tenant, offset=offset, limit=1000)
            )
            ids.extend(t.id for t in page)
            if len(page) < 1000:
                break
            offset += 1000
    if not ids:
        click.echo(f"nothing to purge in {name}")
        return
    if not yes:
        click.confirm(f"Cancel {len(ids)} task(s) of queue {name!r}?", abort=True)
    cancelled = 0
    with click.progressbar(length=len(ids), label="cancelling", file=sys.stderr) as bar:
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            cancelled += len(rt.lifecycle.cancel_many(chunk, tenant))
            bar.update(len(chunk))
    click.echo(f"{cancelled} task(s) cancelled in {name}")


# ---- workers, stats ---------------------------------------------------------------------------------


@click.group(invoke_without_command=True)
@click.pass_context
def workers(ctx: click.Context) -> None:
    """Live workers (`taskmill workers` alone lists them)."""
    if ctx.invoked_subcommand is None:
        ctx.invoke(workers_list)


@workers.command("list")
@json_option
def workers_list(as_json: bool = False) -> None:
    """Live workers with their current task, heartbeat and counters."""
    rt = runtime()
    now = dt.datetime.now(dt.UTC)
    rows = [
        {
            "id": w.id,
            "host": w.host,
            "pid": w.pid,
            "queues": w.queues,
            "current_task": w.current_task,
            "processed": w.processed,
            "failed": w.failed,
            "heartbeat_age": None
            if w.last_heartbeat is None
            else round((now - w.last_heartbeat).total_seconds(), 1),
        }
        for w in rt.storage.workers.list()
    ]
    if as_json:
        _dump(rows)
        return
    print_table(
        rows, ["id", "queues", "current_task", "processed", "failed", "heartbeat_age"], empty="(no workers)"
    )


@click.command()
@tenant_option
@json_option
def stats(tenant: str | None, as_json: bool) -> None:
    """Totals: tasks per state, queues, live workers, and events of the last minute."""
    rt = runtime()
    totals: dict[str, int] = {}
    queue_rows = rt.storage.queues.stats(tenant)
    for q in queue_rows:
        for state, count in q.depth.items():
            totals[state] = totals.get(state, 0) + count
    data = {
        "tasks": dict(sorted(totals.items())),
        "queues": len(queue_rows),
        "paused_queues": sorted(q.name for q in queue_rows if q.paused),
        "workers": len(rt.storage.workers.list()),
    }
    if as_json:
        _dump(data)
        return
    for state, count in data["tasks"].items():
        click.echo(f"{state:<12} {count}")
    click.echo(f"queues       {data['queues']} ({len(data['paused_queues'])} paused)")
    click.echo(f"workers      {data['workers']}")


# the groups that live in modules of their own, exported from here for taskmill.cli
from taskmill.cli_config import config  # noqa: E402
from taskmill.cli_dead_letters import dead_letters  # noqa: E402
