"""What the pages poll to update without a reload: small JSON documents of the dashboard, read
with the session's principal and the same scoping as the pages."""

from __future__ import annotations

from typing import Any

from flask import jsonify

from taskmill.api.auth import requires
from taskmill.api.auth import scope_tenant
from taskmill.models import Role
from taskmill.serialize import format_time
from taskmill_web.blueprint import bp
from taskmill_web.blueprint import state
from taskmill_web.views import _task_or_404

__all__ = ["POLL_SECONDS"]

POLL_SECONDS = 2
"""How often the pages ask (the overview's aggregate is refreshed at most once a second anyway)."""


@bp.get("/live/overview.json")
@requires(Role.VIEWER)
def live_overview() -> Any:
    """The overview's numbers for the caller's tenant."""
    return jsonify(state()["overview"].view(scope_tenant()))


@bp.get("/live/tasks/<task_id>.json")
@requires(Role.VIEWER)
def live_task(task_id: str) -> Any:
    """A task's changing fields (one indexed read)."""
    task = _task_or_404(task_id)
    return jsonify(
        {
            "id": str(task.id),
            "status": task.status.value,
            "progress": task.progress,
            "attempts": task.attempts,
            "worker": task.worker,
            "cancel_requested": task.cancel_requested,
            "final": task.is_final,
            "started_at": format_time(task.started_at),
            "finished_at": format_time(task.finished_at),
            "updated_at": format_time(task.updated_at),
            "has_result": task.result is not None,
            "has_error": task.error is not None,
        }
    )
