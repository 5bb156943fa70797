"""Live updates of the pages without a reload.

- ``GET /dashboard/events?task_id=…`` is the API's event stream (``GET /api/v1/events``) for the
  session's principal: the same per-process hub, the same tenant scoping (the query carries
  ``scope_tenant()``), the same role (viewer), the same event text. The task page follows its task.
- ``GET /dashboard/events?view=overview`` follows the same hub but sends, instead of every task
  change, the overview's aggregate as one ``event: overview`` at most once a second while changes
  arrive (and every :data:`IDLE_REFRESH` seconds when they do not): a busy installation costs a
  browser one small message a second, and the database nothing beyond the cached aggregate.
- ``/dashboard/live/…json`` are what the pages poll when the stream is unavailable (an older
  server, the stream cap reached: 503).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

from flask import Response
from flask import current_app
from flask import jsonify
from flask import request

from taskmill.plugin_api import Role
from taskmill.plugin_api import format_time
from taskmill.plugin_api import get_runtime
from taskmill.plugin_api import requires
from taskmill.plugin_api import scope_tenant
from taskmill_web.blueprint import bp
from taskmill_web.blueprint import state
from taskmill_web.views import _task_or_404

__all__ = ["POLL_SECONDS", "IDLE_REFRESH", "OVERVIEW_INTERVAL"]

POLL_SECONDS = 2
"""How often the pages poll when there is no stream."""

OVERVIEW_INTERVAL = 1.0
"""Seconds between two overview messages on a stream, at least."""

IDLE_REFRESH = 5.0
"""Seconds after which a quiet overview stream sends the aggregate anyway (ages, heartbeats)."""


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
        }
    )


def _overview_stream(hub: Any, sub: Any, overview: Any, tenant: str | None) -> Iterator[str]:
    try:
        yield "retry: 2000\n\n"
        sent = 0.0
        changed = True
        while True:
            wait = OVERVIEW_INTERVAL - (time.monotonic() - sent)
            if (changed and wait <= 0) or time.monotonic() - sent >= IDLE_REFRESH:
                data = json.dumps(overview.view(tenant), separators=(",", ":"))
                yield f"event: overview\ndata: {data}\n\n"
                sent = time.monotonic()
                changed = False
            if sub.overflowed:  # only *that* something changed matters here, not what
                sub.reset_overflow(hub.position or 0)
                changed = True
            changed = bool(sub.take(timeout=max(0.05, OVERVIEW_INTERVAL))) or changed
    finally:
        hub.unsubscribe(sub)


@bp.get("/events")
@requires(Role.VIEWER)
def events() -> Any:
    """The event stream of the signed-in principal: one task's events, or the overview."""
    from taskmill.plugin_api import KEEPALIVE
    from taskmill.plugin_api import EventQuery
    from taskmill.plugin_api import TooManyStreams
    from taskmill.plugin_api import event_hub_of
    from taskmill.plugin_api import event_stream

    tenant = scope_tenant()
    runtime = get_runtime()
    view = request.args.get("view")
    task_ids: tuple[uuid.UUID, ...] = ()
    if view != "overview":
        task_ids = (_task_or_404(request.args.get("task_id", "")).id,)  # 404 outside the tenant
    hub = event_hub_of(current_app)
    try:
        sub = hub.subscribe(EventQuery(tenant=tenant, task_ids=task_ids))
    except TooManyStreams:
        response = jsonify({"code": 503, "message": "too many open streams; polling instead"})
        response.status_code = 503
        response.headers["Retry-After"] = "5"
        return response
    if view == "overview":
        body = _overview_stream(hub, sub, state()["overview"], tenant)
    else:
        body = event_stream(runtime, hub, sub, None, KEEPALIVE)
    response = Response(body, mimetype="text/event-stream")
    response.headers["Cache-Control"] = "no-cache"
    response.headers["X-Accel-Buffering"] = "no"
    response.call_on_close(lambda: hub.unsubscribe(sub))
    return response
