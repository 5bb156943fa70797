"""``/api/v1/schedules``: periodic tasks of the caller's tenant (operator).

A schedule is addressed by its name, unique in a tenant. A non-admin sees and acts on its own
tenant's schedules only; an admin lists every tenant's and addresses one by name with
``?tenant=`` (without it: its own tenant's, or the only schedule of that name).
"""

from __future__ import annotations

from typing import Any

from flask import request
from flask.views import MethodView
from marshmallow import EXCLUDE
from marshmallow import Schema
from marshmallow import ValidationError as SchemaError
from marshmallow import fields
from marshmallow import validate
from marshmallow import validates
from marshmallow import validates_schema

from taskmill.api.auth import audit
from taskmill.api.auth import current_principal
from taskmill.api.auth import requires
from taskmill.api.auth import scope_tenant
from taskmill.api.auth import submit_tenant
from taskmill.api.blueprint import Blueprint
from taskmill.api.errors import documents_errors
from taskmill.api.schemas import QUEUE_NAME
from taskmill.api.schemas import QUEUE_NAME_RE
from taskmill.api.schemas import UtcDateTime
from taskmill.api.tasks import MAX_PAGE_SIZE
from taskmill.api.tasks import PAGE_SIZE
from taskmill.api.tasks import page_bounds
from taskmill.app import get_runtime
from taskmill.models import Role
from taskmill.schedules import CRON_PATTERN
from taskmill.schedules import Schedule
from taskmill.schedules import ScheduleNotFound
from taskmill.schedules import ScheduleService
from taskmill.schedules import parse_timezone
from taskmill.schedules import time_zones
from taskmill.schedules import validate_cron

__all__ = ["blp", "ScheduleSchema", "ScheduleCreateSchema"]

blp = Blueprint(
    "schedules",
    __name__,
    url_prefix="/api/v1/schedules",
    description="Periodic tasks: cron or interval, in a time zone, fired once per due time.",
)

MAX_INT32 = 2**31 - 1
MAX_INTERVAL = 10 * 366 * 86400

NAME = validate.Regexp(QUEUE_NAME_RE, error="1 to 200 characters of letters, digits, '_', '.', ':' and '-'")


class ScheduleCreateSchema(Schema):
    """A new schedule: ``name``, exactly one of ``cron`` or ``interval``, ``timezone``, task fields."""

    name = fields.String(required=True, validate=NAME)
    cron = fields.String(
        validate=[
            validate.Length(min=1, max=200),
            validate.Regexp(CRON_PATTERN, error="not a cron expression"),
        ],
        metadata={"description": "Five fields (minute hour day-of-month month day-of-week)."},
    )
    interval = fields.Integer(
        strict=True,
        validate=validate.Range(min=1, max=MAX_INTERVAL),
        metadata={"description": "Seconds between runs (≥ 1)."},
    )
    timezone = fields.String(
        validate=validate.OneOf(sorted(time_zones()), error="unknown time zone {input!r}"),
        metadata={"description": "IANA time zone of the cron expression; default UTC."},
    )
    type = fields.String(required=True, validate=validate.Length(min=1, max=200))
    payload = fields.Dict(keys=fields.String())
    queue = fields.String(validate=QUEUE_NAME)
    priority = fields.Integer(strict=True, validate=validate.Range(min=0, max=9))
    max_retries = fields.Integer(strict=True, validate=validate.Range(min=0, max=100))
    timeout = fields.Integer(strict=True, validate=validate.Range(min=1, max=MAX_INT32))
    tags = fields.List(
        fields.String(validate=validate.Length(min=1, max=200)), validate=validate.Length(max=99)
    )

    @validates("cron")
    def _cron(self, value: str, **_: Any) -> None:
        try:
            validate_cron(value)
        except ValueError as exc:
            raise SchemaError(str(exc)) from None

    @validates("timezone")
    def _timezone(self, value: str, **_: Any) -> None:
        try:
            parse_timezone(value)
        except ValueError as exc:
            raise SchemaError(str(exc)) from None

    @validates_schema
    def _cron_or_interval(self, data: dict[str, Any], **_: Any) -> None:
        if "cron" in data and "interval" in data:
            raise SchemaError("give either cron or interval, not both", field_name="interval")
        if "cron" not in data and "interval" not in data:
            raise SchemaError("give cron or interval", field_name="cron")


class ScheduleSchema(Schema):
    """A schedule as stored, with its next and last run."""

    id = fields.UUID()
    name = fields.String()
    tenant = fields.String()
    cron = fields.String(allow_none=True)
    interval = fields.Integer(allow_none=True)
    timezone = fields.String()
    type = fields.String()
    payload = fields.Dict()
    queue = fields.String(allow_none=True)
    priority = fields.Integer(allow_none=True)
    max_retries = fields.Integer(allow_none=True)
    timeout = fields.Integer(allow_none=True)
    tags = fields.List(fields.String())
    paused = fields.Boolean()
    next_run_at = UtcDateTime(allow_none=True, metadata={"description": "The next due time."})
    last_run_at = UtcDateTime(allow_none=True, metadata={"description": "The due time of the last run."})
    last_task_id = fields.UUID(allow_none=True, metadata={"description": "The task of the last run."})
    created_at = UtcDateTime()
    updated_at = UtcDateTime()


class ScheduleTenantArgs(Schema):
    """``?tenant=`` lets an admin address another tenant's schedule by name."""

    class Meta:
        unknown = EXCLUDE

    tenant = fields.String(validate=validate.Length(min=1, max=100))


def to_body(schedule: Schedule) -> dict[str, Any]:
    """What :class:`ScheduleSchema` dumps."""
    task = schedule.task
    return {
        "id": schedule.id,
        "name": schedule.name,
        "tenant": schedule.tenant,
        "cron": schedule.cron,
        "interval": schedule.interval,
        "timezone": schedule.timezone,
        "type": task.get("type"),
        "payload": task.get("payload") or {},
        "queue": task.get("queue"),
        "priority": task.get("priority"),
        "max_retries": task.get("max_retries"),
        "timeout": task.get("timeout"),
        "tags": list(task.get("tags") or []),
        "paused": schedule.paused,
        "next_run_at": schedule.next_run_at,
        "last_run_at": schedule.last_run_at,
        "last_task_id": schedule.last_task_id,
        "created_at": schedule.created_at,
        "updated_at": schedule.updated_at,
    }


def _service() -> ScheduleService:
    return ScheduleService(get_runtime())


def _tenant_for_name() -> str | None:
    """The tenant a by-name lookup runs in: the caller's, or an admin's ``?tenant=`` choice."""
    principal = current_principal()
    if not principal.is_admin:
        return principal.tenant
    return request.args.get("tenant") or None


def _lookup(name: str) -> Schedule:
    if not QUEUE_NAME_RE.match(name):
        raise ScheduleNotFound(f"schedule {name!r} not found")
    service = _service()
    tenant = _tenant_for_name()
    if tenant is None:  # an admin without ?tenant=: its own tenant first, then a unique name
        own = service.store.get(name, tenant=current_principal().tenant)
        if own is not None:
            return own
    return service.get(name, tenant)


@blp.route("")
class Schedules(MethodView):
    @requires(Role.OPERATOR)
    @blp.doc(operationId="listSchedules")
    @blp.response(200, ScheduleSchema(many=True))
    @blp.paginate(page_size=PAGE_SIZE, max_page_size=MAX_PAGE_SIZE)
    @documents_errors(blp, 401, 403, 503)
    def get(self, pagination_parameters: Any) -> list[dict[str, Any]]:
        """List schedules, by name

        A non-admin sees its tenant's; an admin every tenant's.
        """
        offset, limit = page_bounds(pagination_parameters)
        items, total = _service().store.list(tenant=scope_tenant(), offset=offset, limit=limit)
        pagination_parameters.item_count = total
        return [to_body(s) for s in items]

    @requires(Role.OPERATOR)
    @blp.doc(operationId="createSchedule")
    @blp.arguments(ScheduleCreateSchema())
    @blp.response(201, ScheduleSchema, headers={"Location": {"schema": {"type": "string"}}})
    @documents_errors(blp, 400, 401, 403, 409, 413, 422, 503)
    def post(self, data: dict[str, Any]) -> tuple[dict[str, Any], int, dict[str, str]]:
        """Create a schedule

        Its first run is the first due time after now; each due time submits exactly one task,
        tagged ``schedule:<name>``. A name taken in the tenant is a 409.
        """
        schedule = _service().create(data, submit_tenant())
        audit("schedule.create", schedule.name, tenant=schedule.tenant)
        return to_body(schedule), 201, {"Location": f"/api/v1/schedules/{schedule.name}"}


@blp.route("/<string:name>")
class ScheduleItem(MethodView):
    @requires(Role.OPERATOR)
    @blp.doc(operationId="getSchedule")
    @blp.arguments(ScheduleTenantArgs(), location="query", as_kwargs=True)
    @blp.response(200, ScheduleSchema)
    @documents_errors(blp, 401, 403, 404, 503)
    def get(self, name: str, tenant: str | None = None) -> dict[str, Any]:
        """Get a schedule"""
        return to_body(_lookup(name))

    @requires(Role.OPERATOR)
    @blp.doc(operationId="deleteSchedule")
    @blp.arguments(ScheduleTenantArgs(), location="query", as_kwargs=True)
    @blp.response(204)
    @documents_errors(blp, 401, 403, 404, 503)
    def delete(self, name: str, tenant: str | None = None) -> None:
        """Delete a schedule

        Tasks it already submitted are not touched.
        """
        schedule = _lookup(name)
        _service().store.delete(schedule.id)
        audit("schedule.delete", schedule.name, tenant=schedule.tenant)


@blp.route("/<string:name>/pause")
class SchedulePause(MethodView):
    @requires(Role.OPERATOR)
    @blp.doc(operationId="pauseSchedule")
    @blp.arguments(ScheduleTenantArgs(), location="query", as_kwargs=True)
    @blp.response(200, ScheduleSchema)
    @documents_errors(blp, 401, 403, 404, 503)
    def post(self, name: str, tenant: str | None = None) -> dict[str, Any]:
        """Pause a schedule

        It submits nothing until resumed.
        """
        schedule = _lookup(name)
        paused = _service().pause(schedule.name, schedule.tenant)
        audit("schedule.pause", schedule.name, tenant=schedule.tenant)
        return to_body(paused)


@blp.route("/<string:name>/resume")
class ScheduleResume(MethodView):
    @requires(Role.OPERATOR)
    @blp.doc(operationId="resumeSchedule")
    @blp.arguments(ScheduleTenantArgs(), location="query", as_kwargs=True)
    @blp.response(200, ScheduleSchema)
    @documents_errors(blp, 401, 403, 404, 503)
    def post(self, name: str, tenant: str | None = None) -> dict[str, Any]:
        """Resume a schedule

        Its next run is the first due time after now: runs missed while paused are not made up.
        """
        schedule = _lookup(name)
        resumed = _service().resume(schedule.name, schedule.tenant)
        audit("schedule.resume", schedule.name, tenant=schedule.tenant)
        return to_body(resumed)
