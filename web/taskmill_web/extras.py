"""Pages over parts of taskmill that an installation may not have yet: the events journal (the
attempts timeline), schedules and workflows. Each function answers ``None`` when the part is
missing, and the page shows an empty state that says so."""

from __future__ import annotations

import logging
import uuid
from typing import Any

from taskmill.plugin_api import Task

__all__ = ["timeline", "schedules", "workflows", "workflow_graph", "schedule_service", "layout"]

logger = logging.getLogger("taskmill.web")

NODE_W = 150
NODE_H = 44
GAP_X = 60
GAP_Y = 24
PAD = 16


def timeline(runtime: Any, task: Task, limit: int = 500) -> list[Any] | None:
    """The task's journal events, oldest first (``ix_events_task``), or None without a journal."""
    events = getattr(runtime.storage, "events", None)
    if events is None or not hasattr(events, "read"):
        return None
    try:
        from taskmill.plugin_api import EventQuery
    except ImportError:  # pragma: no cover - a core without the journal
        return None
    return events.read(0, EventQuery(task_ids=(task.id,)), limit)


def schedule_service(runtime: Any) -> Any:
    """The schedule service, or None when this core has no schedules."""
    try:
        from taskmill.plugin_api import ScheduleService
    except ImportError:
        return None
    return ScheduleService(runtime)


def schedules(runtime: Any, tenant: str | None, limit: int = 500) -> list[Any] | None:
    """The tenant's schedules (an admin: every tenant's), or None without schedules."""
    service = schedule_service(runtime)
    if service is None:
        return None
    items, _total = service.store.list(tenant=tenant, offset=0, limit=limit)
    return items


def _workflow_service(runtime: Any) -> Any:
    try:
        from taskmill.plugin_api import WorkflowService
    except ImportError:
        return None
    return WorkflowService(runtime)


def workflows(runtime: Any, tenant: str | None, limit: int = 100) -> list[Any] | None:
    """The newest workflows of the tenant, or None without workflows."""
    service = _workflow_service(runtime)
    if service is None:
        return None
    items, _total = service.list(tenant=tenant, status=None, offset=0, limit=limit)
    return items


def layout(nodes: list[tuple[str, Task]]) -> dict[str, Any]:
    """Place a workflow's nodes in columns by dependency depth (roots on the left).

    Returns ``{"width", "height", "nodes": [{key, task, x, y}], "edges": [{x1, y1, x2, y2}]}``.
    """
    by_id = {str(task.id): key for key, task in nodes}
    deps = {key: [by_id[d] for d in map(str, task.depends_on) if d in by_id] for key, task in nodes}
    depth: dict[str, int] = {}
    order = [key for key, _ in nodes]
    for _ in range(len(order) + 1):  # longest-path layering; the graph is acyclic (checked at submit)
        changed = False
        for key in order:
            d = 1 + max((depth.get(p, 0) for p in deps[key]), default=-1)
            if depth.get(key) != d:
                depth[key] = d
                changed = True
        if not changed:
            break
    columns: dict[int, list[str]] = {}
    for key in order:
        columns.setdefault(depth[key], []).append(key)
    pos: dict[str, tuple[int, int]] = {}
    for col, keys in columns.items():
        for row, key in enumerate(keys):
            pos[key] = (PAD + col * (NODE_W + GAP_X), PAD + row * (NODE_H + GAP_Y))
    tasks = dict(nodes)
    placed = [{"key": key, "task": tasks[key], "x": pos[key][0], "y": pos[key][1]} for key in order]
    edges = []
    for key in order:
        x2, y2 = pos[key]
        for parent in deps[key]:
            x1, y1 = pos[parent]
            edges.append({"x1": x1 + NODE_W, "y1": y1 + NODE_H // 2, "x2": x2, "y2": y2 + NODE_H // 2})
    width = PAD * 2 + (max(columns, default=0) + 1) * (NODE_W + GAP_X) - GAP_X
    height = PAD * 2 + max((len(v) for v in columns.values()), default=1) * (NODE_H + GAP_Y) - GAP_Y
    return {"width": width, "height": height, "nodes": placed, "edges": edges, "w": NODE_W, "h": NODE_H}


def workflow_graph(runtime: Any, workflow_id: str, tenant: str | None) -> dict[str, Any] | None:
    """A workflow with its laid-out graph, or None (no workflows here, a malformed id, or not
    found in the tenant: the page answers 404 for all three)."""
    service = _workflow_service(runtime)
    if service is None:
        return None
    try:
        parsed = uuid.UUID(workflow_id)
    except ValueError:
        return None
    from taskmill.plugin_api import NotFound

    try:
        workflow = service.get(parsed, tenant)
    except NotFound:
        return None
    return {"workflow": workflow, **layout(list(workflow.tasks))}
