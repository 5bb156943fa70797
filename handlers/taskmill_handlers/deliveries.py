"""``GET /api/v1/tasks/{id}/deliveries``: the webhook deliveries of a task and their attempts.

A delivery is itself a ``taskmill.webhook`` task whose idempotency key names the task, the
attempt and the event that ended it (:func:`taskmill_handlers.webhook.delivery_key`), so a task's
deliveries are found by exact key lookups: at most three per attempt the task has made. Each
delivery shows where it went, how many attempts it took, the last error, the receiver's HTTP
status when it got through, and when the next attempt is due while it is retrying.
"""

from __future__ import annotations

import uuid
from typing import Any

from flask.views import MethodView
from marshmallow import Schema
from marshmallow import fields

from taskmill.plugin_api import Blueprint
from taskmill.plugin_api import Role
from taskmill.plugin_api import Task
from taskmill.plugin_api import TaskNotFound
from taskmill.plugin_api import UtcDateTime
from taskmill.plugin_api import documents_errors
from taskmill.plugin_api import get_runtime
from taskmill.plugin_api import requires
from taskmill.plugin_api import scope_tenant
from taskmill_handlers.webhook import FINAL_EVENTS
from taskmill_handlers.webhook import WEBHOOK_TYPE

__all__ = ["blp", "DeliverySchema", "delivery_key", "deliveries_of", "delivery_to_dict"]

blp = Blueprint(
    "deliveries",
    __name__,
    url_prefix="/api/v1/tasks",
    description="Webhook deliveries of a task (each one a taskmill.webhook task).",
)


def delivery_key(task_id: uuid.UUID | str, attempts: int, event: str) -> str:
    """The idempotency key of the delivery of one end (``event``) of one attempt of a task: the
    observer submits each delivery under it, and the endpoint finds them by it."""
    return f"webhook:{task_id}:{attempts}:{event}"


class DeliverySchema(Schema):
    """One delivery of a task's final JSON to its ``callback_url``."""

    id = fields.UUID(metadata={"description": "The delivery's own task id."})
    event = fields.String(metadata={"description": "completed, failed or cancelled."})
    url = fields.String()
    status = fields.String(metadata={"description": "The delivery task's status."})
    delivered = fields.Boolean(metadata={"description": "True once the receiver answered 2xx."})
    http_status = fields.Integer(allow_none=True, metadata={"description": "The receiver's answer."})
    attempts = fields.Integer(metadata={"description": "POSTs made so far."})
    max_retries = fields.Integer()
    last_error = fields.Dict(allow_none=True, metadata={"description": "type, message of the last failure."})
    next_attempt_at = UtcDateTime(allow_none=True, metadata={"description": "While retrying."})
    created_at = UtcDateTime()
    finished_at = UtcDateTime(allow_none=True)


def deliveries_of(runtime: Any, task: Task) -> list[Task]:
    """The delivery tasks of ``task``, oldest first (one query)."""
    keys = [
        delivery_key(task.id, n, event) for n in range(task.attempts + 1) for event in sorted(FINAL_EVENTS)
    ]
    found = runtime.storage.tasks.by_keys(task.tenant, keys)
    return [d for d in found if d.type == WEBHOOK_TYPE]


def delivery_to_dict(delivery: Task) -> dict[str, Any]:
    result = delivery.result if isinstance(delivery.result, dict) else {}
    error = delivery.error
    if error is not None:
        error = {k: v for k, v in error.items() if k in ("type", "message")}
    return {
        "id": delivery.id,
        "event": delivery.payload.get("event"),
        "url": delivery.payload.get("url"),
        "status": delivery.status.value,
        "delivered": bool(result.get("delivered")),
        "http_status": result.get("status"),
        "attempts": delivery.attempts,
        "max_retries": delivery.max_retries,
        "last_error": error,
        "next_attempt_at": delivery.run_at if delivery.status.value == "scheduled" else None,
        "created_at": delivery.created_at,
        "finished_at": delivery.finished_at,
    }


@blp.route("/<taskid:task_id>/deliveries")
class TaskDeliveries(MethodView):
    @requires(Role.VIEWER)
    @blp.doc(operationId="listTaskDeliveries")
    @blp.response(200, DeliverySchema(many=True))
    @documents_errors(blp, 401, 403, 404, 503)
    def get(self, task_id: uuid.UUID | str) -> list[dict[str, Any]]:
        """List a task's webhook deliveries

        One per end of the task (a task retried by hand and ending again is delivered again),
        oldest first, each with its attempts, last error and the receiver's status.
        """
        if not isinstance(task_id, uuid.UUID):
            raise TaskNotFound(f"task {task_id} not found")
        runtime = get_runtime()
        task = runtime.lifecycle.get(task_id, scope_tenant())
        return [delivery_to_dict(d) for d in deliveries_of(runtime, task)]
