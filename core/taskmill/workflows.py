"""Workflows: a DAG of tasks submitted in one request, all or none.

The client names each task with a ``key``; ``depends_on`` names keys of the same workflow or ids
of existing tasks of the tenant. :func:`check_graph` rejects a duplicate key, an unknown key and a
cycle with a 422 naming the key. Every task then gets its id before anything is written, the
dependencies become ordinary task dependencies, and the lifecycle inserts the tasks, their edges
and the workflow's rows in one transaction. From there the tasks are ordinary tasks: released when
their dependencies complete, cancelled (``DependencyFailed``) when one fails or is cancelled, so a
workflow always ends.

A workflow's status is derived from its tasks: ``running`` while any is not final, then
``completed`` when all completed, else ``failed``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING
from typing import Any

from taskmill.errors import InvalidTransition
from taskmill.errors import NotFound
from taskmill.errors import ValidationError
from taskmill.models import FINAL_STATES
from taskmill.models import Task
from taskmill.models import TaskStatus
from taskmill.models import utcnow

if TYPE_CHECKING:  # pragma: no cover
    from taskmill.runtime import Runtime

__all__ = [
    "MAX_TASKS",
    "WORKFLOW_STATES",
    "Workflow",
    "NewWorkflow",
    "WorkflowNotFound",
    "check_graph",
    "derive_status",
    "WorkflowService",
]

MAX_TASKS = 1000
"""Most tasks in one workflow (API.md)."""

WORKFLOW_STATES = ("running", "completed", "failed")


class WorkflowNotFound(NotFound):
    """No workflow of that id in the caller's tenant."""


@dataclasses.dataclass
class NewWorkflow:
    """A validated workflow ready to insert: its id, and each task's key by task id."""

    id: uuid.UUID
    tenant: str
    name: str | None
    keys: list[tuple[str, uuid.UUID]]
    """``(key, task id)`` in request order."""
    created_at: dt.datetime


@dataclasses.dataclass
class Workflow:
    """A stored workflow with its tasks (request order) and derived status."""

    id: uuid.UUID
    tenant: str
    name: str | None
    created_at: dt.datetime
    status: str = "running"
    finished_at: dt.datetime | None = None
    tasks: list[tuple[str, Task]] = dataclasses.field(default_factory=list)
    task_count: int = 0


def derive_status(statuses: Sequence[TaskStatus]) -> str:
    """``running`` while any task is not final, ``completed`` when all completed, else ``failed``."""
    if any(s not in FINAL_STATES for s in statuses):
        return "running"
    if all(s is TaskStatus.COMPLETED for s in statuses):
        return "completed"
    return "failed"


def _key_error(index: int, field: str, message: str) -> dict[str, Any]:
    return {"tasks": {str(index): {field: [message]}}}


def check_graph(items: Sequence[dict[str, Any]]) -> tuple[list[str], dict[str, list[str]], set[uuid.UUID]]:
    """Check the keys and edges of a workflow request.

    Args:
        items: the request's tasks, each with ``key`` and optional ``depends_on`` (keys or ids).

    Returns:
        ``(keys in order, key → keys it depends on inside the workflow, ids of outside tasks)``.

    Raises:
        ValidationError: no task or more than :data:`MAX_TASKS`; a duplicate key; a dependency
            that is neither a key of the workflow nor a task id; a cycle. The message and
            ``errors["tasks"][index]`` name the key.
    """
    if not items:
        raise ValidationError("a workflow needs at least one task", {"tasks": ["give 1 to 1,000 tasks"]})
    if len(items) > MAX_TASKS:
        raise ValidationError(
            f"a workflow has at most {MAX_TASKS} tasks ({len(items)} given)",
            {"tasks": [f"at most {MAX_TASKS} tasks"]},
        )
    index_of: dict[str, int] = {}
    for i, item in enumerate(items):
        key = item["key"]
        if key in index_of:
            raise ValidationError(f"duplicate key {key!r}", _key_error(i, "key", f"duplicate key {key!r}"))
        index_of[key] = i
    inner: dict[str, list[str]] = {}
    outer: set[uuid.UUID] = set()
    for i, item in enumerate(items):
        key = item["key"]
        deps: list[str] = []
        for dep in item.get("depends_on") or []:
            if dep in index_of:
                if dep not in deps:
                    deps.append(dep)
                continue
            try:
                outer.add(uuid.UUID(str(dep)))
            except ValueError:
                raise ValidationError(
                    f"task {key!r} depends on unknown key {dep!r}",
                    _key_error(i, "depends_on", f"unknown key {dep!r}"),
                ) from None
        inner[key] = deps
    cycle = _find_cycle(list(index_of), inner)
    if cycle:
        path = " → ".join(cycle)
        first = cycle[0]
        raise ValidationError(
            f"the dependencies of key {first!r} form a cycle: {path}",
            _key_error(index_of[first], "depends_on", f"cycle: {path}"),
        )
    return list(index_of), inner, outer


def _find_cycle(keys: list[str], deps: dict[str, list[str]]) -> list[str] | None:
    """A cycle as a path ``[a, b, …, a]``, or None. Iterative DFS (1,000 keys deep is fine)."""
    white, grey, black = 0, 1, 2
    color = dict.fromkeys(keys, white)
    for root in keys:
        if color[root] != white:
            continue
        stack: list[tuple[str, int]] = [(root, 0)]
        path: list[str] = [root]
        color[root] = grey
        while stack:
            node, i = stack[-1]
            children = deps.get(node, [])
            if i < len(children):
                stack[-1] = (node, i + 1)
                child = children[i]
                if color[child] == grey:
                    return path[path.index(child) :] + [child]
                if color[child] == white:
                    color[child] = grey
                    stack.append((child, 0))
                    path.append(child)
            else:
                color[node] = black
                stack.pop()
                path.pop()
    return None


class WorkflowService:
    """Submit, read and cancel workflows. The store is ``runtime.storage.workflows``."""

    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime

    @property
    def store(self) -> Any:
        return self.rt.storage.workflows

    def submit(self, data: dict[str, Any], tenant: str) -> Workflow:
        """Validate and insert a workflow, all or none.

        Raises:
            ValidationError: see :func:`check_graph`, a task failing the single-task rules (its
                errors under ``tasks.<index>``), or an outside dependency that does not exist.
            RateLimited: the tenant's quota of unfinished tasks would be exceeded.
        """
        items = data["tasks"]
        keys, inner, _outer = check_graph(items)
        for i, item in enumerate(items):
            if item.get("idempotency_key") is not None:
                raise ValidationError(
                    f"task {item['key']!r}: a workflow's tasks take no idempotency_key",
                    {"tasks": {str(i): {"idempotency_key": ["not accepted in a workflow"]}}},
                )
        ids = {key: uuid.uuid4() for key in keys}
        lifecycle = self.rt.lifecycle
        built = []
        errors: dict[str, Any] = {}
        first_bad: str | None = None
        for i, item in enumerate(items):
            body = {k: v for k, v in item.items() if k != "key"}
            deps = [str(ids[d]) if d in ids else str(d) for d in item.get("depends_on") or []]
            body["depends_on"] = list(dict.fromkeys(deps))
            try:
                new = lifecycle.build(body, tenant)
            except ValidationError as exc:
                errors[str(i)] = exc.errors or {"_schema": [exc.message]}
                first_bad = first_bad or item["key"]
                continue
            new.id = ids[item["key"]]
            built.append(new)
        if errors:
            raise ValidationError(
                f"task {first_bad!r} is invalid ({len(errors)} of {len(items)} tasks are)", {"tasks": errors}
            )
        workflow = NewWorkflow(
            id=uuid.uuid4(),
            tenant=tenant,
            name=data.get("name"),
            keys=[(key, ids[key]) for key in keys],
            created_at=utcnow(),
        )
        for new in built:
            new.workflow_id = workflow.id
        try:
            results = lifecycle.submit(built, workflow=workflow)
        except ValidationError as exc:
            raise self._name_outside(exc, items) from None
        tasks = [task for task, _ in results]
        return Workflow(
            id=workflow.id,
            tenant=tenant,
            name=workflow.name,
            created_at=workflow.created_at,
            status=derive_status([t.status for t in tasks]),
            tasks=list(zip(keys, tasks, strict=True)),
            task_count=len(tasks),
        )

    @staticmethod
    def _name_outside(exc: ValidationError, items: Sequence[dict[str, Any]]) -> ValidationError:
        """Re-word the lifecycle's "depends_on names unknown tasks" with the keys that named them."""
        missing = " ".join(str(v) for v in (exc.errors or {}).get("depends_on", []))
        errors: dict[str, Any] = {}
        first: str | None = None
        for i, item in enumerate(items):
            bad = [d for d in item.get("depends_on") or [] if str(d) in missing]
            if bad:
                errors[str(i)] = {"depends_on": [f"no such task: {d}" for d in bad]}
                first = first or item["key"]
        if not errors:
            return exc
        return ValidationError(f"task {first!r} depends on a task that does not exist", {"tasks": errors})

    def get(self, workflow_id: uuid.UUID, tenant: str | None) -> Workflow:
        workflow = self.store.get(workflow_id, tenant=tenant)
        if workflow is None:
            raise WorkflowNotFound(f"workflow {workflow_id} not found")
        return workflow

    def list(
        self, *, tenant: str | None, status: str | None, offset: int, limit: int
    ) -> tuple[list[Workflow], int]:
        return self.store.list(tenant=tenant, status=status, offset=offset, limit=limit)

    def cancel(self, workflow_id: uuid.UUID, tenant: str | None) -> Workflow:
        """Cancel every task of the workflow that is not final (running ones are asked to stop,
        as a task cancel does).

        Raises:
            WorkflowNotFound: no such workflow in the tenant.
            InvalidTransition: every task was already final.
        """
        workflow = self.get(workflow_id, tenant)
        open_ids = [t.id for _, t in workflow.tasks if t.status not in FINAL_STATES]
        if not open_ids:
            raise InvalidTransition(f"workflow {workflow_id} has ended; nothing to cancel")
        self.rt.lifecycle.cancel_many(open_ids, workflow.tenant)
        return self.get(workflow_id, tenant)
