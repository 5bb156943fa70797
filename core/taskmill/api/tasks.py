"""``/api/v1/tasks``: submit (one or a batch), list, get, cancel and retry tasks."""

from __future__ import annotations

import dataclasses
import json
import uuid
from typing import Any

from flask import Response
from flask import current_app
from flask import request
from flask.views import MethodView
from werkzeug.routing import BaseConverter

from taskmill.api.auth import audit
from taskmill.api.auth import audit_entry
from taskmill.api.auth import requires
from taskmill.api.auth import scope_tenant
from taskmill.api.auth import submit_tenant
from taskmill.api.blueprint import Blueprint
from taskmill.api.errors import documents_errors
from taskmill.api.schemas import BatchResultSchema
from taskmill.api.schemas import BatchSchema
from taskmill.api.schemas import IdempotencyHeaderSchema
from taskmill.api.schemas import TaskCreateSchema
from taskmill.api.schemas import TaskQueryArgsSchema
from taskmill.api.schemas import TaskSchema
from taskmill.app import get_runtime
from taskmill.errors import TaskNotFound
from taskmill.errors import ValidationError
from taskmill.models import Role
from taskmill.models import Task
from taskmill.models import TaskQuery
from taskmill.serialize import task_to_dict

__all__ = ["blp", "TaskIdConverter", "parse_task_id", "location_of", "page_bounds"]

blp = Blueprint(
    "tasks",
    __name__,
    url_prefix="/api/v1/tasks",
    description="Submit tasks, follow them, cancel and retry them.",
)

PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
MAX_OFFSET = 2**53
"""Largest offset sent to the database (a bigger page number is simply past the end): an offset
beyond 64 bits made SQLite fail with an OverflowError (found by schemathesis)."""


def page_bounds(pagination_parameters: Any) -> tuple[int, int]:
    """``(offset, limit)`` of a smorest page, the offset clamped to :data:`MAX_OFFSET`."""
    return min(pagination_parameters.first_item, MAX_OFFSET), pagination_parameters.page_size


class TaskIdConverter(BaseConverter):
    """A path segment that should be a task id. Anything matches, so that a malformed id reaches
    the view after authentication and answers 404 like an unknown one (never 422 or 500).
    ``batch`` is not one: ``/tasks/batch`` serves POST only (and a 405 says so)."""

    regex = r"(?!batch$)[^/]+"

    def to_python(self, value: str) -> uuid.UUID | str:
        try:
            return uuid.UUID(value)
        except ValueError:
            return value

    def to_url(self, value: Any) -> str:
        return str(value)


def parse_task_id(value: uuid.UUID | str) -> uuid.UUID:
    """The task id of a path, or TaskNotFound for a malformed one."""
    if isinstance(value, uuid.UUID):
        return value
    raise TaskNotFound(f"task {value} not found")


def location_of(task: Task) -> str:
    """The ``Location`` of a task resource."""
    return f"/api/v1/tasks/{task.id}"


def json_response(body: Any) -> Response:
    """A JSON response built without marshmallow, for the hot paths (submit, batch).

    ``task_to_dict`` gives exactly what ``TaskSchema`` dumps (a unit test holds them equal) at a
    quarter of the cost; the schemas still document the responses in OpenAPI.
    """
    return current_app.response_class(json.dumps(body, separators=(",", ":")), mimetype="application/json")


def task_response(task: Task) -> Response:
    return json_response(task_to_dict(task))


def _merge_key(data: dict[str, Any], header_key: str | None) -> dict[str, Any]:
    """Put the ``Idempotency-Key`` header into the body; both and different is a 422."""
    if header_key is None:
        return data
    body_key = data.get("idempotency_key")
    if body_key is not None and body_key != header_key:
        raise ValidationError(
            "the Idempotency-Key header and the idempotency_key field differ",
            {"idempotency_key": ["differs from the Idempotency-Key header"]},
        )
    return {**data, "idempotency_key": header_key}


@blp.route("")
class Tasks(MethodView):
    @requires(Role.VIEWER)
    @blp.doc(operationId="listTasks")
    @blp.arguments(TaskQueryArgsSchema(), location="query")
    @blp.response(200, TaskSchema(many=True))
    @blp.paginate(page_size=PAGE_SIZE, max_page_size=MAX_PAGE_SIZE)
    @documents_errors(blp, 401, 403, 503)
    def get(self, filters: dict[str, Any], pagination_parameters: Any) -> list[Task]:
        """List tasks, newest first

        Filters combine; ``created_after`` is inclusive, ``created_before`` exclusive.
        """
        offset, limit = page_bounds(pagination_parameters)
        query = TaskQuery(**filters, tenant=scope_tenant(), offset=offset, limit=limit)
        items, total = get_runtime().storage.tasks.list(query)
        pagination_parameters.item_count = total
        return items

    @requires(Role.SUBMITTER)
    @blp.doc(operationId="submitTask")
    @blp.arguments(TaskCreateSchema())
    @blp.arguments(IdempotencyHeaderSchema(), location="headers", as_kwargs=True)
    @blp.response(201, TaskSchema, headers={"Location": {"schema": {"type": "string"}}})
    @blp.alt_response(
        200, schema=TaskSchema, description="An idempotent repeat: the first task.", success=True
    )
    @documents_errors(blp, 400, 401, 403, 409, 413, 422, 429, 503)
    def post(self, data: dict[str, Any], idempotency_key: str | None = None) -> tuple[Response, int, dict]:
        """Submit a task

        An ``Idempotency-Key`` header (or ``idempotency_key`` field) makes the submission safe to
        repeat: the same body answers 200 with the first task, another body 409.
        """
        body = _merge_key(data, idempotency_key)
        runtime = get_runtime()
        lifecycle = runtime.lifecycle
        new = lifecycle.build(body, submit_tenant())
        if new.idempotency_key is None and runtime.storage.audits_with_tasks:
            # always a new task: its audit entry is written in the insert (one round trip)
            new = dataclasses.replace(new, id=uuid.uuid4())
            entry = audit_entry("task.submit", new.id, type=new.type, queue=new.queue, created=True)
            ((task, created),) = lifecycle.submit([new], audit=entry)
        else:
            ((task, created),) = lifecycle.submit([new])
            audit("task.submit", task.id, type=task.type, queue=task.queue, created=created)
        return task_response(task), 201 if created else 200, {"Location": location_of(task)}


@blp.route("/batch")
class TaskBatch(MethodView):
    @requires(Role.SUBMITTER)
    @blp.doc(operationId="submitTaskBatch")
    @blp.arguments(BatchSchema())
    @blp.response(201, BatchResultSchema)
    @documents_errors(blp, 400, 401, 403, 409, 413, 422, 429, 503)
    def post(self, data: dict[str, Any]) -> tuple[Response, int]:
        """Submit up to 1,000 tasks, all or none

        Each task is validated like a single submission and may carry its own
        ``idempotency_key``; errors name the index (``{"tasks": {"3": {...}}}``). An
        ``Idempotency-Key`` header is refused (422): it would not say which task it keys.
        """
        if request.headers.get("Idempotency-Key") is not None:
            raise ValidationError(
                "a batch takes an idempotency_key per task, not an Idempotency-Key header",
                {"Idempotency-Key": ["not accepted on a batch; give each task its own idempotency_key"]},
            )
        lifecycle = get_runtime().lifecycle
        tenant = submit_tenant()
        built = []
        errors: dict[str, Any] = {}
        for index, item in enumerate(data["tasks"]):
            try:
                built.append(lifecycle.build(item, tenant))
            except ValidationError as exc:
                errors[str(index)] = exc.errors or {"_schema": [exc.message]}
        if errors:
            raise ValidationError(
                f"{len(errors)} of {len(data['tasks'])} tasks are invalid", {"tasks": errors}
            )
        results = lifecycle.submit(built)
        tasks = [task for task, _ in results]
        audit(
            "task.submit_batch",
            f"batch of {len(tasks)}",
            count=len(tasks),
            created=sum(1 for _, created in results if created),
            ids=[str(t.id) for t in tasks],
        )
        return json_response({"tasks": [task_to_dict(t) for t in tasks]}), 201


@blp.route("/<taskid:task_id>")
class TaskItem(MethodView):
    @requires(Role.VIEWER)
    @blp.doc(operationId="getTask")
    @blp.response(200, TaskSchema)
    @documents_errors(blp, 401, 403, 404, 503)
    def get(self, task_id: uuid.UUID | str) -> Task:
        """Get a task"""
        return get_runtime().lifecycle.get(parse_task_id(task_id), scope_tenant())

    @requires(Role.SUBMITTER)
    @blp.doc(operationId="cancelTask")
    @blp.response(200, TaskSchema, description="Cancelled (it had not started).")
    @blp.alt_response(
        202, schema=TaskSchema, description="Running: asked to stop (cancel_requested).", success=True
    )
    @documents_errors(blp, 401, 403, 404, 409, 503)
    def delete(self, task_id: uuid.UUID | str) -> tuple[Task, int]:
        """Cancel a task

        A task that has not started is cancelled at once (200); a running one is asked to stop
        (202); a finished one is a 409.
        """
        task, done = get_runtime().lifecycle.cancel(parse_task_id(task_id), scope_tenant())
        audit("task.cancel", task.id, tenant=task.tenant, running=not done)
        return task, 200 if done else 202


@blp.route("/<taskid:task_id>/retry")
class TaskRetry(MethodView):
    @requires(Role.SUBMITTER)
    @blp.doc(operationId="retryTask")
    @blp.response(200, TaskSchema)
    @documents_errors(blp, 401, 403, 404, 409, 503)
    def post(self, task_id: uuid.UUID | str) -> Task:
        """Retry a failed or cancelled task

        It is queued again with a fresh retry budget (``attempts`` keeps counting).
        """
        task = get_runtime().lifecycle.retry(parse_task_id(task_id), scope_tenant())
        audit("task.retry", task.id, tenant=task.tenant)
        return task
