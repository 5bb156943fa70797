"""Marshmallow schemas of the REST API: what goes in (validated) and what comes out.

Input schemas reject unknown fields (marshmallow's default ``RAISE``), so a client that sends
``status`` or ``tenant`` on submit gets a 422 naming the field. Output times are RFC 3339 UTC with
milliseconds and a trailing ``Z``.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
from typing import Any
from urllib.parse import urlsplit

from flask import current_app
from flask import has_app_context
from marshmallow import EXCLUDE
from marshmallow import Schema
from marshmallow import ValidationError as SchemaError
from marshmallow import fields
from marshmallow import post_load
from marshmallow import validate
from marshmallow import validates
from marshmallow import validates_schema

from taskmill.models import TaskStatus
from taskmill.serialize import format_time

__all__ = [
    "UtcDateTime",
    "QUEUE_NAME_RE",
    "TaskSchema",
    "TaskCreateSchema",
    "IdempotencyHeaderSchema",
    "BatchSchema",
    "BatchResultSchema",
    "TaskQueryArgsSchema",
    "DeadLetterQueryArgsSchema",
    "QueueSchema",
    "WorkerSchema",
    "HandlerSchema",
    "RequeueSchema",
    "RequeueResultSchema",
    "HealthSchema",
    "LiveSchema",
    "validate_queue_name",
]

QUEUE_NAME_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,200}$")
"""What a queue name may be made of (also enforced on the pause/resume path)."""

MAX_BATCH = 1000
MAX_DELAY_SECONDS = 10 * 366 * 86400
"""Ten years: a longer delay is a mistake, and it would overflow date arithmetic."""
MAX_INT32 = 2**31 - 1


QUEUE_NAME = validate.Regexp(
    QUEUE_NAME_RE, error="1 to 200 characters of letters, digits, '_', '.', ':' and '-'"
)
"""The queue-name validator of the schemas (a Regexp, so the OpenAPI document shows the pattern)."""


def validate_queue_name(name: str) -> None:
    """Raise a marshmallow ValidationError unless ``name`` is a valid queue name."""
    if not isinstance(name, str) or not QUEUE_NAME_RE.match(name):
        raise SchemaError("1 to 200 characters of letters, digits, '_', '.', ':' and '-'")


class UtcDateTime(fields.DateTime):
    """A datetime field: dumps ``2026-11-28T10:00:00.123Z``; loads ISO 8601, naive meaning UTC."""

    def _serialize(self, value: Any, attr: str | None, obj: Any, **kwargs: Any) -> str | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        return format_time(value)

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> dt.datetime:
        result = super()._deserialize(value, attr, data, **kwargs)
        if result.tzinfo is None:
            result = result.replace(tzinfo=dt.UTC)
        return result.astimezone(dt.UTC)


# ---- tasks ---------------------------------------------------------------------------------------


class TaskSchema(Schema):
    """The task resource (API.md)."""

    id = fields.UUID(metadata={"description": "Assigned by the server."})
    type = fields.String(metadata={"description": "A registered handler name."})
    queue = fields.String()
    priority = fields.Integer(metadata={"description": "0..9, higher runs first."})
    payload = fields.Dict()
    status = fields.Enum(TaskStatus, by_value=True)
    tenant = fields.String()
    attempts = fields.Integer(metadata={"description": "Executions started so far."})
    max_retries = fields.Integer()
    timeout = fields.Integer(metadata={"description": "Seconds."})
    retry_backoff = fields.Float(metadata={"description": "Seconds, base of the back-off."})
    run_at = UtcDateTime(allow_none=True)
    depends_on = fields.List(fields.String())
    idempotency_key = fields.String(allow_none=True)
    callback_url = fields.String(allow_none=True)
    tags = fields.List(fields.String())
    progress = fields.Float(allow_none=True)
    cancel_requested = fields.Boolean()
    result = fields.Raw(allow_none=True, metadata={"description": "The handler's JSON return value."})
    error = fields.Dict(allow_none=True, metadata={"description": "type, message, traceback"})
    worker = fields.String(allow_none=True)
    created_at = UtcDateTime()
    started_at = UtcDateTime(allow_none=True)
    finished_at = UtcDateTime(allow_none=True)
    updated_at = UtcDateTime()


def _is_private_host(host: str) -> bool:
    if host.lower() in ("localhost", "localhost.localdomain") or host.lower().endswith(".localhost"):
        return True
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        return False  # a name: resolved and checked again at delivery
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return (
        addr.is_private
        or addr.is_loopback
        or addr.is_link_local
        or addr.is_multicast
        or addr.is_reserved
        or addr.is_unspecified
    )


class TaskCreateSchema(Schema):
    """A submission. Fields not listed here (``status``, ``tenant``, ``attempts``, …) are a 422."""

    type = fields.String(required=True, validate=validate.Length(min=1, max=200))
    payload = fields.Dict(keys=fields.String(), metadata={"description": "A JSON object; default {}."})
    queue = fields.String(validate=QUEUE_NAME)
    priority = fields.Integer(strict=True, validate=validate.Range(min=0, max=9))
    delay = fields.Float(
        validate=validate.Range(min=0, max=MAX_DELAY_SECONDS),
        metadata={"description": "Seconds from now; cannot be combined with run_at."},
    )
    run_at = UtcDateTime(metadata={"description": "Earliest start; in the past means now."})
    max_retries = fields.Integer(strict=True, validate=validate.Range(min=0, max=100))
    timeout = fields.Integer(strict=True, validate=validate.Range(min=1, max=MAX_INT32))
    retry_backoff = fields.Float(validate=validate.Range(min=0, max=MAX_DELAY_SECONDS))
    depends_on = fields.List(fields.UUID(), validate=validate.Length(max=1000))
    idempotency_key = fields.String(validate=validate.Length(min=1, max=200))
    callback_url = fields.Url(
        schemes={"http", "https"},
        require_tld=False,
        validate=validate.Length(max=2000),
        metadata={"description": "http(s) URL POSTed the final task JSON when it ends."},
    )
    tags = fields.List(
        fields.String(validate=validate.Length(min=1, max=200)), validate=validate.Length(max=100)
    )

    @validates("callback_url")
    def _callback_host(self, value: str, **_: Any) -> None:
        allow = False
        if has_app_context():
            runtime = current_app.extensions.get("taskmill")
            allow = bool(runtime and runtime.plugin_setting("webhook", "allow_private", False))
        host = urlsplit(value).hostname or ""
        if not allow and _is_private_host(host):
            raise SchemaError("private, loopback and link-local addresses are not allowed")

    @validates_schema
    def _delay_or_run_at(self, data: dict[str, Any], **_: Any) -> None:
        if data.get("delay") is not None and data.get("run_at") is not None:
            raise SchemaError("give either delay or run_at, not both", field_name="delay")

    @post_load
    def _ids_as_text(self, data: dict[str, Any], **_: Any) -> dict[str, Any]:
        # the body is hashed for idempotency; keep it JSON-like and stable
        if "depends_on" in data:
            data["depends_on"] = [str(d) for d in data["depends_on"]]
        return data


class IdempotencyHeaderSchema(Schema):
    """The ``Idempotency-Key`` request header (same meaning as the body field)."""

    class Meta:
        unknown = EXCLUDE

    idempotency_key = fields.String(data_key="Idempotency-Key", validate=validate.Length(min=1, max=200))


def _small_int(value: Any, low: int, high: int) -> bool:
    return type(value) is int and low <= value <= high


def _text(value: Any, longest: int = 200) -> bool:
    return type(value) is str and 0 < len(value) <= longest


_FAST_FIELDS: dict[str, Any] = {
    "type": _text,
    "payload": lambda v: type(v) is dict and all(type(k) is str for k in v),
    "queue": lambda v: type(v) is str and QUEUE_NAME_RE.match(v) is not None,
    "priority": lambda v: _small_int(v, 0, 9),
    "max_retries": lambda v: _small_int(v, 0, 100),
    "timeout": lambda v: _small_int(v, 1, MAX_INT32),
    "retry_backoff": lambda v: type(v) in (int, float) and 0 <= v <= MAX_DELAY_SECONDS,
    "idempotency_key": _text,
    "tags": lambda v: type(v) is list and len(v) <= 100 and all(_text(t) for t in v),
}
"""Fields whose every valid value is checked here exactly as :class:`TaskCreateSchema` checks it
(``delay``, ``run_at``, ``depends_on`` and ``callback_url`` are left to marshmallow)."""


def _fast_item(item: Any) -> dict[str, Any] | None:
    """What ``TaskCreateSchema().load(item)`` returns, or None when only marshmallow can say
    (an unusual field, or anything it might refuse): never a different answer."""
    if type(item) is not dict or "type" not in item:
        return None
    for key, value in item.items():
        check = _FAST_FIELDS.get(key)
        if check is None or not check(value):
            return None
    out = dict(item)
    if "payload" in out:
        out["payload"] = dict(out["payload"])
    if "retry_backoff" in out:
        out["retry_backoff"] = float(out["retry_backoff"])
    if "tags" in out:
        out["tags"] = list(out["tags"])
    return out


class BatchSchema(Schema):
    """Up to 1,000 submissions, accepted all or none."""

    tasks = fields.List(
        fields.Nested(TaskCreateSchema), required=True, validate=validate.Length(min=1, max=MAX_BATCH)
    )

    def load(self, data: Any, *, many: Any = None, partial: Any = None, unknown: Any = None) -> Any:
        """A batch of plain submissions (type, payload, queue, priority, retries, timeout, tags,
        keys) is checked item by item without marshmallow, ~20× faster and to the same result;
        any other batch — and every invalid one, for its error messages — goes through
        marshmallow."""
        if not many and not partial and unknown in (None, "raise") and type(data) is dict:
            items = data.get("tasks")
            if list(data) == ["tasks"] and type(items) is list and 0 < len(items) <= MAX_BATCH:
                loaded = [_fast_item(item) for item in items]
                if all(x is not None for x in loaded):
                    return {"tasks": loaded}
        return super().load(data, many=many, partial=partial, unknown=unknown)


class BatchResultSchema(Schema):
    tasks = fields.List(fields.Nested(TaskSchema))


class TaskQueryArgsSchema(Schema):
    """Filters of ``GET /tasks`` (``page`` and ``page_size`` are the pagination's)."""

    class Meta:
        unknown = EXCLUDE

    status = fields.Enum(TaskStatus, by_value=True)
    type = fields.String(validate=validate.Length(min=1, max=200))
    queue = fields.String(validate=QUEUE_NAME)
    tag = fields.String(validate=validate.Length(min=1, max=200))
    created_after = UtcDateTime(metadata={"description": "Inclusive."})
    created_before = UtcDateTime(metadata={"description": "Exclusive."})


class DeadLetterQueryArgsSchema(Schema):
    """Filters of ``GET /dead-letters``."""

    class Meta:
        unknown = EXCLUDE

    type = fields.String(validate=validate.Length(min=1, max=200))
    queue = fields.String(validate=QUEUE_NAME)


class DeadLetterFilterSchema(Schema):
    type = fields.String(validate=validate.Length(min=1, max=200))
    queue = fields.String(validate=QUEUE_NAME)
    failed_after = UtcDateTime(metadata={"description": "Inclusive."})
    failed_before = UtcDateTime(metadata={"description": "Exclusive."})


class RequeueSchema(Schema):
    """Exactly one of ``ids`` (at most 1,000) or ``filter``."""

    ids = fields.List(fields.UUID(), validate=validate.Length(max=MAX_BATCH))
    filter = fields.Nested(DeadLetterFilterSchema)

    @validates_schema
    def _exactly_one(self, data: dict[str, Any], **_: Any) -> None:
        if ("ids" in data) == ("filter" in data):
            raise SchemaError("give exactly one of ids or filter", field_name="_schema")


class RequeueResultSchema(Schema):
    requeued = fields.Integer()
    ids = fields.List(fields.UUID())


# ---- queues, workers, handlers, health -------------------------------------------------------------


class QueueSchema(Schema):
    name = fields.String()
    paused = fields.Boolean()
    depth = fields.Dict(
        keys=fields.String(), values=fields.Integer(), metadata={"description": "state: count"}
    )
    oldest_queued_age = fields.Float(allow_none=True, metadata={"description": "Seconds, or null."})


class WorkerSchema(Schema):
    id = fields.String()
    host = fields.String()
    pid = fields.Integer()
    queues = fields.List(fields.String())
    concurrency = fields.Integer()
    current_task = fields.String(allow_none=True, metadata={"description": "The first running task."})
    current_tasks = fields.List(fields.String(), metadata={"description": "Every running task."})
    started_at = UtcDateTime(allow_none=True)
    last_heartbeat = UtcDateTime(allow_none=True)
    processed = fields.Integer()
    failed = fields.Integer()


class HandlerSchema(Schema):
    name = fields.String()
    description = fields.String()
    payload_schema = fields.Dict(metadata={"description": "JSON Schema of the payload."})
    queue = fields.String(allow_none=True)
    timeout = fields.Integer(allow_none=True)
    max_retries = fields.Integer(allow_none=True)
    plugin = fields.String()


class HealthSchema(Schema):
    status = fields.String(metadata={"description": "ok or unavailable"})
    checks = fields.Dict(keys=fields.String(), values=fields.String())


class LiveSchema(Schema):
    status = fields.String()
