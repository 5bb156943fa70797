"""``/api/v1/api-keys`` (create, list, revoke) and ``/api/v1/audit`` (read): admin only."""

from __future__ import annotations

from typing import Any

from flask.views import MethodView
from marshmallow import Schema
from marshmallow import fields
from marshmallow import validate

from taskmill.plugin_api import ApiKey
from taskmill.plugin_api import Blueprint
from taskmill.plugin_api import NotFound
from taskmill.plugin_api import Role
from taskmill.plugin_api import UtcDateTime
from taskmill.plugin_api import audit
from taskmill.plugin_api import documents_errors
from taskmill.plugin_api import get_runtime
from taskmill.plugin_api import page_bounds
from taskmill.plugin_api import requires
from taskmill_auth.apikeys import TENANT_RE
from taskmill_auth.apikeys import create_api_key
from taskmill_auth.apikeys import revoke_api_key
from taskmill_auth.store import auth_store

__all__ = ["keys_blp", "audit_blp"]

ROLES = [r.value for r in Role]


class ApiKeyCreateSchema(Schema):
    """A new key: its tenant, role and an optional name."""

    tenant = fields.String(required=True, validate=validate.Regexp(TENANT_RE))
    role = fields.String(required=True, validate=validate.OneOf(ROLES))
    name = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=200))


class _ApiKeyFields(Schema):
    """What every view of a key shows."""

    id = fields.String()
    name = fields.String(allow_none=True)
    tenant = fields.String()
    role = fields.String()
    created_at = UtcDateTime()


class ApiKeySchema(_ApiKeyFields):
    """A stored key, without its secret."""

    prefix = fields.String(metadata={"description": "The public part of the key: tm_<prefix>_…"})
    last_used_at = UtcDateTime(allow_none=True)
    revoked_at = UtcDateTime(allow_none=True)


class ApiKeyCreatedSchema(_ApiKeyFields):
    """A key just created: the only response that contains the key itself."""

    key = fields.String(metadata={"description": "Shown only here; store it now."})


class AuditEntrySchema(Schema):
    """Who did what: one entry per state-changing request."""

    at = UtcDateTime()
    actor = fields.String(metadata={"description": "key:<id>, jwt:<sub>, cli or local"})
    tenant = fields.String()
    action = fields.String()
    target = fields.String(allow_none=True)
    details = fields.Dict(allow_none=True)


class AuditQueryArgsSchema(Schema):
    """Filters of the audit log."""

    tenant = fields.String(validate=validate.Regexp(TENANT_RE))


keys_blp = Blueprint(
    "api_keys", __name__, url_prefix="/api/v1/api-keys", description="API keys (admin): create, list, revoke."
)
audit_blp = Blueprint("audit", __name__, url_prefix="/api/v1/audit", description="The audit log (admin).")


def _public(key: ApiKey) -> dict[str, Any]:
    return {
        "id": key.id,
        "name": key.name,
        "tenant": key.tenant,
        "role": key.role.value,
        "prefix": key.prefix,
        "created_at": key.created_at,
        "last_used_at": key.last_used_at,
        "revoked_at": key.revoked_at,
    }


@keys_blp.route("")
class ApiKeys(MethodView):
    @requires(Role.ADMIN)
    @keys_blp.doc(operationId="listApiKeys")
    @keys_blp.response(200, ApiKeySchema(many=True))
    @documents_errors(keys_blp, 401, 403, 503)
    def get(self) -> list[dict[str, Any]]:
        """List API keys

        Without their secrets; revoked keys included (``revoked_at`` set).
        """
        return [_public(k) for k in auth_store(get_runtime()).keys.list()]

    @requires(Role.ADMIN)
    @keys_blp.doc(operationId="createApiKey")
    @keys_blp.arguments(ApiKeyCreateSchema())
    @keys_blp.response(201, ApiKeyCreatedSchema)
    @documents_errors(keys_blp, 400, 401, 403, 422, 503)
    def post(self, data: dict[str, Any]) -> dict[str, Any]:
        """Create an API key

        The response is the only place the key appears: store it now.
        """
        created = create_api_key(get_runtime(), data["tenant"], data["role"], data.get("name"))
        audit("api_key.create", created["id"], tenant=created["tenant"], role=created["role"])
        return created


@keys_blp.route("/<key_id>")
class ApiKeyItem(MethodView):
    @requires(Role.ADMIN)
    @keys_blp.doc(operationId="revokeApiKey")
    @keys_blp.response(204)
    @documents_errors(keys_blp, 401, 403, 404, 503)
    def delete(self, key_id: str) -> None:
        """Revoke an API key

        Requests with it are refused from now on (within a few seconds in other processes).
        """
        if not revoke_api_key(get_runtime(), key_id):
            raise NotFound(f"API key {key_id[:64]} not found (or already revoked)")
        audit("api_key.revoke", key_id)


@audit_blp.route("")
class Audit(MethodView):
    @requires(Role.ADMIN)
    @audit_blp.doc(operationId="listAuditEntries")
    @audit_blp.arguments(AuditQueryArgsSchema(), location="query")
    @audit_blp.response(200, AuditEntrySchema(many=True))
    @audit_blp.paginate(page_size=50, max_page_size=1000)
    @documents_errors(audit_blp, 401, 403, 503)
    def get(self, args: dict[str, Any], pagination_parameters: Any) -> list[dict[str, Any]]:
        """Read the audit log, newest first"""
        offset, limit = page_bounds(pagination_parameters)
        store = auth_store(get_runtime()).audit
        items, total = store.list(offset=offset, limit=limit, tenant=args.get("tenant"))
        pagination_parameters.item_count = total
        return items
