"""``taskmill dead-letters list|show|requeue|purge``: failed tasks, as the operator (see
:mod:`taskmill.cli_admin` for the shared options, output and exit codes)."""

from __future__ import annotations

import sys
from typing import Any

import click

from taskmill.cli_admin import _dump
from taskmill.cli_admin import _parse_id
from taskmill.cli_admin import _task_json
from taskmill.cli_admin import _task_row
from taskmill.cli_admin import _when
from taskmill.cli_admin import json_option
from taskmill.cli_admin import print_table
from taskmill.cli_admin import runtime
from taskmill.cli_admin import tenant_option

__all__ = ["dead_letters"]


# ---- dead letters ------------------------------------------------------------------------------------


def _dead_letter_query(
    tenant: str | None, type_: str | None, queue: str | None, after: str | None, before: str | None
):  # type: ignore[no-untyped-def]
    from taskmill.models import DeadLetterQuery

    return DeadLetterQuery(
        tenant=tenant,
        type=type_,
        queue=queue,
        failed_after=_when(after, "--failed-after"),
        failed_before=_when(before, "--failed-before"),
        limit=100_000,
    )


_dl_filters = [
    tenant_option,
    click.option("--type", "type_", default=None),
    click.option("--queue", default=None),
    click.option("--failed-after", "after", default=None, help="ISO 8601 time (inclusive)."),
    click.option("--failed-before", "before", default=None, help="ISO 8601 time (exclusive)."),
]


def _with_filters(fn: Any) -> Any:
    for option in reversed(_dl_filters):
        fn = option(fn)
    return fn


@click.group("dead-letters")
def dead_letters() -> None:
    """Failed tasks (retries exhausted): list, show, requeue, purge.

    \b
    Examples:
      taskmill dead-letters list --queue emails
      taskmill dead-letters requeue --type http.request --yes
    """


@dead_letters.command("list")
@_with_filters
@click.option("--limit", type=click.IntRange(1, 1000), default=50, show_default=True)
@click.option("--group", is_flag=True, help="Count them by error type instead of listing them.")
@json_option
def dead_letters_list(
    tenant: str | None,
    type_: str | None,
    queue: str | None,
    after: str | None,
    before: str | None,
    limit: int,
    group: bool,
    as_json: bool,
) -> None:
    """Failed tasks, newest first (or grouped by error type with --group)."""
    rt = runtime()
    ids = rt.storage.tasks.find_failed(_dead_letter_query(tenant, type_, queue, after, before))
    found = rt.storage.tasks.get_many(ids[: (100_000 if group else limit)])
    found.sort(key=lambda t: t.finished_at or t.created_at, reverse=True)
    if group:
        counts: dict[str, int] = {}
        for t in found:
            key = (t.error or {}).get("type") or "unknown"
            counts[key] = counts.get(key, 0) + 1
        rows = [{"error": k, "count": v} for k, v in sorted(counts.items(), key=lambda kv: -kv[1])]
        _dump(rows) if as_json else print_table(rows, ["error", "count"])
        return
    if as_json:
        _dump({"total": len(ids), "tasks": [_task_json(t) for t in found]})
        return
    print_table([_task_row(t) for t in found], ["id", "type", "queue", "tenant", "attempts", "error"])
    click.echo(f"({len(found)} of {len(ids)})")


@dead_letters.command("show")
@click.argument("task_id")
def dead_letters_show(task_id: str) -> None:
    """One failed task with its error and traceback."""
    rt = runtime()
    task = rt.lifecycle.get(_parse_id(task_id), None)
    if task.status.value != "failed":
        from taskmill.errors import TaskNotFound

        raise TaskNotFound(f"task {task.id} is {task.status.value}, not a dead letter")
    _dump(_task_json(task))


@dead_letters.command("requeue")
@click.argument("task_ids", nargs=-1)
@_with_filters
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def dead_letters_requeue(
    task_ids: tuple[str, ...],
    tenant: str | None,
    type_: str | None,
    queue: str | None,
    after: str | None,
    before: str | None,
    yes: bool,
) -> None:
    """Requeue the given failed tasks, or every one that matches the filters."""
    rt = runtime()
    if task_ids:
        ids = [_parse_id(t) for t in task_ids]
    else:
        ids = rt.storage.tasks.find_failed(_dead_letter_query(tenant, type_, queue, after, before))
    if not ids:
        click.echo("no dead letters match")
        return
    if not yes and not task_ids:
        click.confirm(f"Requeue {len(ids)} dead letter(s)?", abort=True)
    requeued = 0
    with click.progressbar(length=len(ids), label="requeueing", file=sys.stderr) as bar:
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            requeued += len(rt.lifecycle.requeue_dead_letters(chunk, tenant))
            bar.update(len(chunk))
    click.echo(f"{requeued} task(s) requeued")


@dead_letters.command("purge")
@_with_filters
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def dead_letters_purge(
    tenant: str | None, type_: str | None, queue: str | None, after: str | None, before: str | None, yes: bool
) -> None:
    """Delete the failed tasks that match the filters, for good (their events stay until pruned)."""
    rt = runtime()
    ids = rt.storage.tasks.find_failed(_dead_letter_query(tenant, type_, queue, after, before))
    if not ids:
        click.echo("no dead letters match")
        return
    if not yes:
        click.confirm(f"Delete {len(ids)} dead letter(s) for good?", abort=True)
    deleted = 0
    with click.progressbar(length=len(ids), label="deleting", file=sys.stderr) as bar:
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            deleted += rt.lifecycle.purge(chunk, tenant)
            bar.update(len(chunk))
    click.echo(f"{deleted} dead letter(s) deleted")
