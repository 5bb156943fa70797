"""``/api/v1/workers``: live worker processes."""

from __future__ import annotations

import uuid
from typing import Any

from flask.views import MethodView

from taskmill.api.auth import requires
from taskmill.api.auth import scope_tenant
from taskmill.api.blueprint import Blueprint
from taskmill.api.errors import documents_errors
from taskmill.api.schemas import WorkerSchema
from taskmill.app import get_runtime
from taskmill.models import Role
from taskmill.models import WorkerInfo

__all__ = ["blp", "running_ids"]

blp = Blueprint("workers", __name__, url_prefix="/api/v1/workers", description="Live workers.")


def running_ids(info: WorkerInfo) -> list[str]:
    """The task ids a worker reports running (``current_task`` is comma-separated)."""
    return [part.strip() for part in (info.current_task or "").split(",") if part.strip()]


def _visible(ids: list[str], tenant: str | None) -> set[str]:
    """Of these task ids, those the caller may know about (a non-admin: their tenant's)."""
    if tenant is None or not ids:
        return set(ids)
    parsed = []
    for value in ids:
        try:
            parsed.append(uuid.UUID(value))
        except ValueError:
            continue
    found = get_runtime().storage.tasks.get_many(parsed, tenant=tenant) if parsed else []
    return {str(t.id) for t in found}


@blp.route("")
class Workers(MethodView):
    @requires(Role.VIEWER)
    @blp.doc(operationId="listWorkers")
    @blp.response(200, WorkerSchema(many=True))
    @documents_errors(blp, 401, 403, 503)
    def get(self) -> list[dict[str, Any]]:
        """List live workers

        ``current_task`` is the first running task, ``current_tasks`` all of them; a non-admin
        sees only the ids of their own tenant's tasks.
        """
        workers = get_runtime().storage.workers.list()
        tenant = scope_tenant()
        running = {w.id: running_ids(w) for w in workers}
        visible = _visible(sorted({i for ids in running.values() for i in ids}), tenant)
        out = []
        for w in workers:
            ids = [i for i in running[w.id] if i in visible]
            out.append(
                {
                    "id": w.id,
                    "host": w.host,
                    "pid": w.pid,
                    "queues": list(w.queues),
                    "concurrency": w.concurrency,
                    "current_task": ids[0] if ids else None,
                    "current_tasks": ids,
                    "started_at": w.started_at,
                    "last_heartbeat": w.last_heartbeat,
                    "processed": w.processed,
                    "failed": w.failed,
                }
            )
        return out
