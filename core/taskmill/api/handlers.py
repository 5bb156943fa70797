"""``/api/v1/handlers``: the task types this installation can run."""

from __future__ import annotations

from typing import Any

from flask.views import MethodView

from taskmill.api.auth import requires
from taskmill.api.blueprint import Blueprint
from taskmill.api.errors import documents_errors
from taskmill.api.schemas import HandlerSchema
from taskmill.app import get_runtime
from taskmill.handlers import payload_json_schema
from taskmill.models import Role

__all__ = ["blp"]

blp = Blueprint("handlers", __name__, url_prefix="/api/v1/handlers", description="Registered task handlers.")


@blp.route("")
class Handlers(MethodView):
    @requires(Role.VIEWER)
    @blp.doc(operationId="listHandlers")
    @blp.response(200, HandlerSchema(many=True))
    @documents_errors(blp, 401, 403)
    def get(self) -> list[dict[str, Any]]:
        """List task handlers

        Each with its payload's JSON Schema and its defaults.
        """
        handlers = get_runtime().registries.handlers
        return [
            {
                "name": spec.name,
                "description": spec.description,
                "payload_schema": payload_json_schema(spec),
                "queue": spec.queue,
                "timeout": spec.timeout,
                "max_retries": spec.max_retries,
                "plugin": spec.plugin,
            }
            for spec in sorted(handlers.values(), key=lambda s: s.name)
        ]
