"""The dashboard's pages (GET): they read through the lifecycle, the storage's reads and
:mod:`taskmill.insights` (``storage.insights``), always within ``scope_tenant()``."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from flask import abort
from flask import redirect
from flask import request
from flask import url_for

from taskmill.plugin_api import Role
from taskmill.plugin_api import TaskFilter
from taskmill.plugin_api import TaskNotFound
from taskmill.plugin_api import TaskStatus
from taskmill.plugin_api import get_runtime
from taskmill.plugin_api import payload_json_schema
from taskmill.plugin_api import requires
from taskmill.plugin_api import scope_tenant
from taskmill_web import extras
from taskmill_web.blueprint import bp
from taskmill_web.blueprint import render
from taskmill_web.blueprint import state
from taskmill_web.forms import fields_of

__all__ = ["PAGE_SIZE"]

PAGE_SIZE = 50
STATUSES = [s.value for s in TaskStatus]


def _parse_time(value: str | None) -> dt.datetime | None:
    if not value:
        return None
    try:
        when = dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)


def _task_or_404(task_id: str) -> Any:
    try:
        parsed = uuid.UUID(task_id)
    except ValueError:
        raise TaskNotFound(f"task {task_id[:64]} not found") from None
    return get_runtime().lifecycle.get(parsed, scope_tenant())


@bp.get("/")
@requires(Role.VIEWER)
def overview() -> Any:
    """Queues, throughput, workers and the per-minute chart."""
    data = state()["overview"].view(scope_tenant())
    return render("overview.html", data=data, page="overview")


@bp.get("/tasks")
@requires(Role.VIEWER)
def tasks() -> Any:
    """The task list: filters, search by id or payload value, keyset pages."""
    args = request.args
    query = (args.get("q") or "").strip()
    if query:
        try:
            return redirect(url_for("dashboard.task", task_id=str(uuid.UUID(query))))
        except ValueError:
            pass
    status = args.get("status") or None
    if status not in STATUSES:
        status = None
    f = TaskFilter(
        tenant=scope_tenant(),
        status=status,
        type=(args.get("type") or "").strip()[:200] or None,
        queue=(args.get("queue") or "").strip()[:200] or None,
        tag=(args.get("tag") or "").strip()[:200] or None,
        workflow=(args.get("workflow") or "").strip()[:64] or None,
        created_after=_parse_time(args.get("created_after")),
        created_before=_parse_time(args.get("created_before")),
        payload=query[:500] or None,
    )
    page = state()["reads"].tasks_page(f, cursor=args.get("after"), limit=PAGE_SIZE)
    keep = {k: v for k, v in args.items() if k != "after" and v}
    return render(
        "tasks.html",
        page="tasks",
        result=page,
        filters=keep,
        statuses=STATUSES,
        handlers=sorted(get_runtime().registries.handlers),
        has_workflows=state()["reads"].has_workflows,
        first=not args.get("after"),
    )


@bp.get("/tasks/<task_id>")
@requires(Role.VIEWER)
def task(task_id: str) -> Any:
    """One task: payload, result, error, progress, attempts, neighbours, deliveries."""
    runtime = get_runtime()
    item = _task_or_404(task_id)
    tenant = scope_tenant()
    deps = []
    if item.depends_on:
        ids = []
        for value in item.depends_on:
            try:
                ids.append(uuid.UUID(str(value)))
            except ValueError:
                continue
        found = {str(t.id): t for t in runtime.storage.tasks.get_many(ids, tenant=tenant)}
        deps = [(str(i), found.get(str(i))) for i in ids]
    reads = state()["reads"]
    return render(
        "task.html",
        page="tasks",
        task=item,
        dependencies=deps,
        dependents=reads.dependents(item.id, tenant),
        deliveries=reads.deliveries(item),
        timeline=extras.timeline(runtime, item),
        can_cancel=not item.is_final,
        can_retry=item.status in (TaskStatus.FAILED, TaskStatus.CANCELLED),
    )


@bp.get("/dead-letters")
@requires(Role.OPERATOR)
def dead_letters() -> Any:
    """Failed tasks grouped by error type, and the list of one group."""
    args = request.args
    tenant = scope_tenant()
    type_ = (args.get("type") or "").strip()[:200] or None
    queue = (args.get("queue") or "").strip()[:200] or None
    error_type = (args.get("error_type") or "").strip()[:200] or None
    reads = state()["reads"]
    groups = reads.dead_letter_groups(tenant, type_=type_, queue=queue)
    page = reads.dead_letters(
        tenant, type_=type_, queue=queue, error_type=error_type, cursor=args.get("after"), limit=PAGE_SIZE
    )
    keep = {k: v for k, v in args.items() if k != "after" and v}
    return render(
        "dead_letters.html",
        page="dead_letters",
        groups=groups,
        result=page,
        filters=keep,
        first=not args.get("after"),
    )


@bp.get("/dead-letters/requeue")
@requires(Role.OPERATOR)
def confirm_requeue() -> Any:
    """Say how many failed tasks match the filter before requeueing them."""
    from taskmill_web.actions import REQUEUE_CAP

    args = request.args
    filters = {k: (args.get(k) or "").strip()[:200] for k in ("type", "queue", "error_type")}
    filters = {k: v for k, v in filters.items() if v}
    count = state()["reads"].count_failed(
        scope_tenant(),
        type_=filters.get("type"),
        queue=filters.get("queue"),
        error_type=filters.get("error_type"),
        cap=REQUEUE_CAP,
    )
    return render("confirm_requeue.html", page="dead_letters", filters=filters, count=count, cap=REQUEUE_CAP)


@bp.get("/queues")
@requires(Role.VIEWER)
def queues() -> Any:
    """Queues with their depth and pause switch."""
    data = state()["overview"].view(scope_tenant())
    paused = state()["reads"].known_queues()  # the switch shows the flag as it is now (one tiny table)
    for queue in data["queues"]:
        queue["paused"] = paused.get(queue["name"], False)
    return render("queues.html", page="queues", queues=data["queues"])


@bp.get("/workers")
@requires(Role.VIEWER)
def workers() -> Any:
    """Live workers, their running tasks and heartbeat age."""
    data = state()["overview"].view(scope_tenant())
    return render("workers.html", page="workers", workers=data["workers"])


@bp.get("/handlers")
@requires(Role.VIEWER)
def handlers() -> Any:
    """Registered handlers with their payload schemas."""
    specs = sorted(get_runtime().registries.handlers.values(), key=lambda s: s.name)
    rows = [(spec, payload_json_schema(spec)) for spec in specs]
    return render("handlers.html", page="handlers", rows=rows)


@bp.get("/handlers/<name>")
@requires(Role.VIEWER)
def handler(name: str) -> Any:
    """One handler: its schema and the form that submits a task of its type."""
    spec = get_runtime().registries.handler(name)
    if spec is None:
        abort(404, description=f"no handler named {name[:200]!r}")
    schema = payload_json_schema(spec)
    fields, free = fields_of(schema)
    context = {"spec": spec, "schema": schema, "fields": fields, "free": free, "errors": {}, "form": {}}
    return render("handler.html", page="handlers", **context)


@bp.get("/schedules")
@requires(Role.OPERATOR)
def schedules() -> Any:
    """Schedules with their next and last run (once schedules exist in this installation)."""
    items = extras.schedules(get_runtime(), scope_tenant())
    return render("schedules.html", page="schedules", schedules=items, available=items is not None)


@bp.get("/workflows")
@requires(Role.VIEWER)
def workflows() -> Any:
    """Workflows (once workflows exist in this installation)."""
    items = extras.workflows(get_runtime(), scope_tenant())
    return render("workflows.html", page="workflows", workflows=items, available=items is not None)


@bp.get("/workflows/<workflow_id>")
@requires(Role.VIEWER)
def workflow(workflow_id: str) -> Any:
    """One workflow as a graph of its nodes, each with its state."""
    graph = extras.workflow_graph(get_runtime(), workflow_id, scope_tenant())
    if graph is None:
        abort(404, description="no such workflow")
    return render("workflow.html", page="workflows", graph=graph)
