"""``/api/v1/dead-letters``: the tenant's failed tasks, and requeueing them (operator)."""

from __future__ import annotations

from typing import Any

from flask.views import MethodView

from taskmill.api.auth import audit
from taskmill.api.auth import requires
from taskmill.api.auth import scope_tenant
from taskmill.api.blueprint import Blueprint
from taskmill.api.errors import documents_errors
from taskmill.api.schemas import DeadLetterQueryArgsSchema
from taskmill.api.schemas import RequeueResultSchema
from taskmill.api.schemas import RequeueSchema
from taskmill.api.schemas import TaskSchema
from taskmill.api.tasks import MAX_PAGE_SIZE
from taskmill.api.tasks import PAGE_SIZE
from taskmill.api.tasks import page_bounds
from taskmill.app import get_runtime
from taskmill.models import DeadLetterQuery
from taskmill.models import Role
from taskmill.models import Task
from taskmill.models import TaskQuery
from taskmill.models import TaskStatus

__all__ = ["blp"]

blp = Blueprint(
    "dead_letters",
    __name__,
    url_prefix="/api/v1/dead-letters",
    description="Tasks that failed for good, and requeueing them.",
)

MAX_REQUEUE = 1000


@blp.route("")
class DeadLetters(MethodView):
    @requires(Role.OPERATOR)
    @blp.doc(operationId="listDeadLetters")
    @blp.arguments(DeadLetterQueryArgsSchema(), location="query")
    @blp.response(200, TaskSchema(many=True))
    @blp.paginate(page_size=PAGE_SIZE, max_page_size=MAX_PAGE_SIZE)
    @documents_errors(blp, 401, 403, 503)
    def get(self, filters: dict[str, Any], pagination_parameters: Any) -> list[Task]:
        """List failed tasks, newest first"""
        offset, limit = page_bounds(pagination_parameters)
        tenant = scope_tenant()
        query = TaskQuery(**filters, status=TaskStatus.FAILED, tenant=tenant, offset=offset, limit=limit)
        items, total = get_runtime().storage.tasks.list(query)
        pagination_parameters.item_count = total
        return items


@blp.route("/requeue")
class Requeue(MethodView):
    @requires(Role.OPERATOR)
    @blp.doc(operationId="requeueDeadLetters")
    @blp.arguments(RequeueSchema())
    @blp.response(200, RequeueResultSchema)
    @documents_errors(blp, 400, 401, 403, 422, 503)
    def post(self, data: dict[str, Any]) -> dict[str, Any]:
        """Requeue failed tasks

        By ``ids`` (at most 1,000; ids that are not failed are left alone) or by ``filter``
        (``type``, ``queue``, ``failed_after``, ``failed_before``; at most 1,000 per call).
        """
        runtime = get_runtime()
        tenant = scope_tenant()
        if "ids" in data:
            ids = list(dict.fromkeys(data["ids"]))
        else:
            query = DeadLetterQuery(**data["filter"], tenant=tenant, limit=MAX_REQUEUE)
            ids = runtime.storage.tasks.find_failed(query)
        tasks = runtime.lifecycle.requeue_dead_letters(ids, tenant)
        audit(
            "dead_letters.requeue",
            f"{len(tasks)} task(s)",
            by="ids" if "ids" in data else "filter",
            requeued=len(tasks),
            ids=[str(t.id) for t in tasks],
        )
        return {"requeued": len(tasks), "ids": [t.id for t in tasks]}
