"""``/health`` (readiness: storage and broker) and ``/health/live`` (liveness). No credential.

Each check is bounded by :data:`taskmill.probes.CHECK_TIMEOUT` and its result reused for
:data:`taskmill.probes.CHECK_CACHE_SECONDS`, so a probe answers quickly even when the database host
does not answer at all, and frequent probes cost at most one check per period.
"""

from __future__ import annotations

from typing import Any

from flask.views import MethodView

from taskmill.api.auth import public
from taskmill.api.blueprint import Blueprint
from taskmill.api.errors import RETRY_AFTER_UNAVAILABLE
from taskmill.api.schemas import HealthSchema
from taskmill.api.schemas import LiveSchema
from taskmill.app import get_runtime
from taskmill.probes import component_status

__all__ = ["blp"]

blp = Blueprint("health", __name__, url_prefix="/health", description="Readiness and liveness probes.")


@blp.route("")
class Ready(MethodView):
    @public
    @blp.doc(security=[], operationId="health")
    @blp.response(200, HealthSchema, description="Storage and broker answer.")
    @blp.alt_response(503, schema=HealthSchema, description="Storage or broker unreachable.")
    def get(self) -> tuple[dict[str, Any], int, dict[str, str]] | dict[str, Any]:
        """Readiness: can this process reach its storage and broker?"""
        checks = component_status(get_runtime())
        if all(v == "ok" for v in checks.values()):
            return {"status": "ok", "checks": checks}
        return {"status": "unavailable", "checks": checks}, 503, {"Retry-After": str(RETRY_AFTER_UNAVAILABLE)}


@blp.route("/live")
class Live(MethodView):
    @public
    @blp.doc(security=[], operationId="healthLive")
    @blp.response(200, LiveSchema)
    def get(self) -> dict[str, str]:
        """Liveness: the process serves requests."""
        return {"status": "ok"}
