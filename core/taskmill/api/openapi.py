"""Rules of the API that marshmallow cannot say, written into the OpenAPI document.

The schemas generate most of the document; a few rules the server enforces live in validators
apispec cannot read (exactly one of two fields, the registered handler names, a URL's scheme).
:func:`document_rules` adds them, so that what the document calls valid the server accepts
(schemathesis' ``positive_data_acceptance`` holds the two equal).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

__all__ = ["document_rules", "CALLBACK_URL_PATTERN"]

_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
CALLBACK_URL_PATTERN = (
    r"^[Hh][Tt][Tt][Pp][Ss]?://"
    r"(?![Ll][Oo][Cc][Aa][Ll][Hh][Oo][Ss][Tt](?:[:/?]|$))"
    rf"(?:(?:{_LABEL}\.)+[A-Za-z]{{2,6}}|{_LABEL})"
    r"(?::[0-9]{1,5})?(?:/|[/?][!-~]+)?$"
)
"""The ``callback_url``s the document promises to accept: http(s), a host name (not ``localhost``),
an optional port and path. The server accepts some more (IP addresses that are not private,
loopback or link-local) and refuses literal private addresses unless told otherwise."""


def document_rules(api: Any, payload_schemas: Mapping[str, dict[str, Any]]) -> None:
    """Complete the component schemas of ``api`` (call it after the blueprints are registered).

    Every submission-like body (a component named ``…Create`` with ``type`` and ``payload``, so
    schedules and workflow tasks too) learns the registered types and their payload schemas.

    Args:
        api: the flask-smorest Api.
        payload_schemas: the JSON Schema of each registered task type's payload.
    """
    schemas = api.spec.components.schemas
    requeue = schemas.get("Requeue")
    if requeue is not None:
        # exactly one of ids or filter (RequeueSchema._exactly_one)
        requeue["oneOf"] = [
            {"required": ["ids"], "not": {"required": ["filter"]}},
            {"required": ["filter"], "not": {"required": ["ids"]}},
        ]
    for name, schema in schemas.items():
        properties = schema.get("properties", {})
        if name.endswith("Create") and "type" in properties and "payload" in properties:
            _document_submission(schema, payload_schemas)
    schedule = schemas.get("ScheduleCreate")
    if schedule is not None:
        # exactly one of cron or interval (ScheduleCreateSchema._cron_or_interval); allOf keeps
        # the per-type oneOf of the submission rules
        schedule["allOf"] = [
            {
                "oneOf": [
                    {"required": ["cron"], "not": {"required": ["interval"]}},
                    {"required": ["interval"], "not": {"required": ["cron"]}},
                ]
            }
        ]


def _document_submission(schema: dict[str, Any], payload_schemas: Mapping[str, dict[str, Any]]) -> None:
    properties = schema["properties"]
    if "callback_url" in properties:
        properties["callback_url"]["minLength"] = 1
        properties["callback_url"]["pattern"] = CALLBACK_URL_PATTERN
    if "delay" in properties and "run_at" in properties:
        schema["not"] = {"required": ["delay", "run_at"]}  # TaskCreateSchema._delay_or_run_at
    if not payload_schemas:
        return
    properties["type"]["enum"] = sorted(payload_schemas)
    # one variant per type: the payload must pass that handler's schema
    schema["oneOf"] = [_variant(t, payload_schemas[t]) for t in sorted(payload_schemas)]


def _variant(type_name: str, payload: dict[str, Any]) -> dict[str, Any]:
    """A submission of one task type, its payload checked by that handler's schema."""
    if "$ref" in json.dumps(payload):
        payload = {"type": "object"}  # a nested schema refers to another document: say less
    variant: dict[str, Any] = {
        "title": type_name,
        "properties": {"type": {"type": "string", "enum": [type_name]}, "payload": payload},
        "required": ["type"],
    }
    if payload.get("required"):
        variant["required"].append("payload")  # the default payload {} would be refused
    return variant
