"""``/api/v1/queues``: depth per state, and pause/resume (admin)."""

from __future__ import annotations

from flask.views import MethodView
from marshmallow import ValidationError as SchemaError

from taskmill.api.auth import audit
from taskmill.api.auth import requires
from taskmill.api.auth import scope_tenant
from taskmill.api.blueprint import Blueprint
from taskmill.api.errors import documents_errors
from taskmill.api.schemas import QUEUE_NAME_RE
from taskmill.api.schemas import QueueSchema
from taskmill.api.schemas import validate_queue_name
from taskmill.app import get_runtime
from taskmill.errors import ValidationError
from taskmill.models import QueueInfo
from taskmill.models import Role

__all__ = ["blp"]

blp = Blueprint(
    "queues", __name__, url_prefix="/api/v1/queues", description="Queues: depth, pause and resume."
)


NAME_PARAMETER = {
    "in": "path",
    "name": "name",
    "required": True,
    "schema": {"type": "string", "pattern": QUEUE_NAME_RE.pattern},
}
"""The queue name of a path as the document shows it. The route matches any segment, so that a
bad name reaches the view after authentication and answers 422 naming the rule."""


def _checked_name(name: str) -> str:
    try:
        validate_queue_name(name)
    except SchemaError as exc:
        raise ValidationError(f"invalid queue name {name[:200]!r}", {"name": exc.messages}) from None
    return name


def _set_paused(name: str, paused: bool) -> QueueInfo:
    runtime = get_runtime()
    storage = runtime.storage
    if paused:
        runtime.lifecycle.pause_queue(_checked_name(name))
    else:  # deliveries dropped while paused come back now (the manager would, later)
        runtime.lifecycle.resume_queue(_checked_name(name))
    audit("queue.pause" if paused else "queue.resume", name)
    tenant = scope_tenant()
    for info in storage.queues.stats(tenant):
        if info.name == name:
            return info
    return QueueInfo(name=name, paused=paused)


@blp.route("")
class Queues(MethodView):
    @requires(Role.VIEWER)
    @blp.doc(operationId="listQueues")
    @blp.response(200, QueueSchema(many=True))
    @documents_errors(blp, 401, 403, 503)
    def get(self) -> list[QueueInfo]:
        """List queues

        Depth per state counts the caller's tenant (an admin's: every tenant).
        """
        return get_runtime().storage.queues.stats(scope_tenant())


@blp.route("/<name>/pause", parameters=[NAME_PARAMETER])
class QueuePause(MethodView):
    @requires(Role.ADMIN)
    @blp.doc(operationId="pauseQueue")
    @blp.response(200, QueueSchema)
    @documents_errors(blp, 401, 403, 422, 503)
    def post(self, name: str) -> QueueInfo:
        """Pause a queue

        It still accepts tasks; workers take none from it. A name not used yet may be paused ahead.
        """
        return _set_paused(name, True)


@blp.route("/<name>/resume", parameters=[NAME_PARAMETER])
class QueueResume(MethodView):
    @requires(Role.ADMIN)
    @blp.doc(operationId="resumeQueue")
    @blp.response(200, QueueSchema)
    @documents_errors(blp, 401, 403, 422, 503)
    def post(self, name: str) -> QueueInfo:
        """Resume a paused queue"""
        return _set_paused(name, False)
