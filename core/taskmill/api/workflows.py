"""``/api/v1/workflows``: a DAG of tasks in one request; its graph and derived status; cancel."""

from __future__ import annotations

import uuid
from typing import Any

from flask import Response
from flask.views import MethodView
from marshmallow import EXCLUDE
from marshmallow import Schema
from marshmallow import fields
from marshmallow import validate

from taskmill.api.auth import audit
from taskmill.api.auth import requires
from taskmill.api.auth import scope_tenant
from taskmill.api.auth import submit_tenant
from taskmill.api.blueprint import Blueprint
from taskmill.api.errors import documents_errors
from taskmill.api.schemas import TaskCreateSchema
from taskmill.api.schemas import TaskSchema
from taskmill.api.schemas import UtcDateTime
from taskmill.api.tasks import MAX_PAGE_SIZE
from taskmill.api.tasks import PAGE_SIZE
from taskmill.api.tasks import json_response
from taskmill.api.tasks import page_bounds
from taskmill.app import get_runtime
from taskmill.models import Role
from taskmill.serialize import format_time
from taskmill.serialize import task_to_dict
from taskmill.workflows import MAX_TASKS
from taskmill.workflows import WORKFLOW_STATES
from taskmill.workflows import Workflow
from taskmill.workflows import WorkflowNotFound
from taskmill.workflows import WorkflowService

__all__ = ["blp", "WorkflowSchema", "WorkflowCreateSchema", "workflow_to_dict"]

blp = Blueprint(
    "workflows",
    __name__,
    url_prefix="/api/v1/workflows",
    description="DAGs of tasks submitted all or none; failure of a task cancels its dependents.",
)

KEY = validate.Length(min=1, max=200)


class WorkflowTaskCreateSchema(TaskCreateSchema):
    """One task of a workflow: the task fields plus the client's ``key``; ``depends_on`` names keys
    of this workflow or ids of existing tasks of the tenant."""

    class Meta:
        exclude = ("idempotency_key",)  # one per task would mean nothing in a workflow

    key = fields.String(required=True, validate=KEY, metadata={"description": "Unique in the workflow."})
    depends_on = fields.List(
        fields.String(validate=KEY),
        validate=validate.Length(max=MAX_TASKS),
        metadata={"description": "Keys of this workflow, or ids of existing tasks."},
    )


class WorkflowCreateSchema(Schema):
    """1 to 1,000 tasks (a larger workflow is a 422 and creates nothing)."""

    name = fields.String(validate=validate.Length(min=1, max=200))
    tasks = fields.List(
        fields.Nested(WorkflowTaskCreateSchema),
        required=True,
        validate=validate.Length(min=1, max=MAX_TASKS),
    )


class WorkflowTaskSchema(TaskSchema):
    """A task of a workflow: the task resource with its key."""

    key = fields.String()
    workflow_id = fields.UUID()


class WorkflowSchema(Schema):
    """A workflow with every task, in request order."""

    id = fields.UUID()
    name = fields.String(allow_none=True)
    status = fields.String(metadata={"description": "running, completed or failed (derived)."})
    tenant = fields.String()
    task_count = fields.Integer()
    tasks = fields.List(fields.Nested(WorkflowTaskSchema))
    created_at = UtcDateTime()
    finished_at = UtcDateTime(allow_none=True)


class WorkflowSummarySchema(Schema):
    """A workflow in a list (without its tasks)."""

    id = fields.UUID()
    name = fields.String(allow_none=True)
    status = fields.String()
    tenant = fields.String()
    task_count = fields.Integer()
    created_at = UtcDateTime()
    finished_at = UtcDateTime(allow_none=True)


class WorkflowQueryArgsSchema(Schema):
    class Meta:
        unknown = EXCLUDE

    status = fields.String(validate=validate.OneOf(WORKFLOW_STATES))


def workflow_to_dict(workflow: Workflow, *, with_tasks: bool = True) -> dict[str, Any]:
    """The workflow resource as JSON-ready values (what :class:`WorkflowSchema` dumps)."""
    body: dict[str, Any] = {
        "id": str(workflow.id),
        "name": workflow.name,
        "status": workflow.status,
        "tenant": workflow.tenant,
        "task_count": workflow.task_count,
        "created_at": format_time(workflow.created_at),
        "finished_at": format_time(workflow.finished_at),
    }
    if with_tasks:
        body["tasks"] = [
            {"key": key, **task_to_dict(task), "workflow_id": str(workflow.id)}
            for key, task in workflow.tasks
        ]
    return body


def _parse_id(value: uuid.UUID | str) -> uuid.UUID:
    if isinstance(value, uuid.UUID):
        return value
    raise WorkflowNotFound(f"workflow {value} not found")


def _service() -> WorkflowService:
    return WorkflowService(get_runtime())


@blp.route("")
class Workflows(MethodView):
    @requires(Role.VIEWER)
    @blp.doc(operationId="listWorkflows")
    @blp.arguments(WorkflowQueryArgsSchema(), location="query")
    @blp.response(200, WorkflowSummarySchema(many=True))
    @blp.paginate(page_size=PAGE_SIZE, max_page_size=MAX_PAGE_SIZE)
    @documents_errors(blp, 401, 403, 503)
    def get(self, filters: dict[str, Any], pagination_parameters: Any) -> list[dict[str, Any]]:
        """List workflows, newest first

        ``status`` filters by the derived status.
        """
        offset, limit = page_bounds(pagination_parameters)
        items, total = _service().list(
            tenant=scope_tenant(), status=filters.get("status"), offset=offset, limit=limit
        )
        pagination_parameters.item_count = total
        return [
            {
                "id": w.id,
                "name": w.name,
                "status": w.status,
                "tenant": w.tenant,
                "task_count": w.task_count,
                "created_at": w.created_at,
                "finished_at": w.finished_at,
            }
            for w in items
        ]

    @requires(Role.SUBMITTER)
    @blp.doc(operationId="submitWorkflow")
    @blp.arguments(WorkflowCreateSchema())
    @blp.response(201, WorkflowSchema, headers={"Location": {"schema": {"type": "string"}}})
    @documents_errors(blp, 400, 401, 403, 413, 422, 429, 503)
    def post(self, data: dict[str, Any]) -> tuple[Response, int, dict[str, str]]:
        """Submit a workflow

        A DAG of 1 to 1,000 tasks, all or none. A cycle, an unknown or duplicate key, or a task
        failing the single-task rules is a 422 naming the key, and nothing is created.
        """
        workflow = _service().submit(data, submit_tenant())
        audit("workflow.submit", workflow.id, tasks=workflow.task_count, name=workflow.name)
        return (
            json_response(workflow_to_dict(workflow)),
            201,
            {"Location": f"/api/v1/workflows/{workflow.id}"},
        )


@blp.route("/<taskid:workflow_id>")
class WorkflowItem(MethodView):
    @requires(Role.VIEWER)
    @blp.doc(operationId="getWorkflow")
    @blp.response(200, WorkflowSchema)
    @documents_errors(blp, 401, 403, 404, 503)
    def get(self, workflow_id: uuid.UUID | str) -> Response:
        """Get a workflow with every task"""
        workflow = _service().get(_parse_id(workflow_id), scope_tenant())
        return json_response(workflow_to_dict(workflow))

    @requires(Role.SUBMITTER)
    @blp.doc(operationId="cancelWorkflow")
    @blp.response(200, WorkflowSchema)
    @documents_errors(blp, 401, 403, 404, 409, 503)
    def delete(self, workflow_id: uuid.UUID | str) -> Response:
        """Cancel a workflow

        Every task that is not final is cancelled (running ones are asked to stop, as a task
        cancel does); a workflow whose tasks had all ended is a 409.
        """
        workflow = _service().cancel(_parse_id(workflow_id), scope_tenant())
        audit("workflow.cancel", workflow.id, tenant=workflow.tenant)
        return json_response(workflow_to_dict(workflow))
