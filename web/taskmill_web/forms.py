"""The submit form of a handler, built from its payload's JSON Schema, and read back.

Each top-level property becomes one field: ``string`` → a text box (a ``<select>`` for an
``enum``), ``integer``/``number`` → a number box, ``boolean`` → a check box, anything else
(objects, arrays, unknown types) → a JSON text area. Handlers without a schema (or with extra
free-form payload) get one JSON text area for the whole payload. The lifecycle validates the result
exactly as it validates an API submission.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from taskmill.plugin_api import loads_bounded

__all__ = ["Field", "fields_of", "read_payload", "read_options", "FormError"]


class FormError(ValueError):
    """The form cannot be turned into a submission; ``errors`` maps fields to messages."""

    def __init__(self, errors: dict[str, str]) -> None:
        super().__init__("; ".join(f"{k}: {v}" for k, v in errors.items()))
        self.errors = errors


@dataclasses.dataclass(frozen=True)
class Field:
    """One input of the form."""

    name: str
    widget: str  # text, number, checkbox, select, json
    label: str
    required: bool = False
    choices: tuple[str, ...] = ()
    step: str = "any"
    minimum: float | None = None
    maximum: float | None = None
    description: str = ""
    default: str = ""

    @property
    def input_name(self) -> str:
        return f"p.{self.name}"


def fields_of(schema: dict[str, Any]) -> tuple[list[Field], bool]:
    """The fields of a payload schema, and whether the form also needs a free JSON area (no
    properties declared, or additional properties allowed)."""
    properties = schema.get("properties") or {}
    required = set(schema.get("required") or [])
    out = []
    for name, prop in properties.items():
        if not isinstance(prop, dict):
            continue
        kind = prop.get("type")
        if isinstance(kind, list):
            kind = next((k for k in kind if k != "null"), None)
        label = prop.get("title") or name
        common = {
            "name": name,
            "label": label,
            "required": name in required,
            "description": str(prop.get("description") or ""),
        }
        default = prop.get("default")
        if prop.get("enum"):
            choices = tuple(str(c) for c in prop["enum"] if c is not None)
            out.append(Field(widget="select", choices=choices, default=str(default or ""), **common))
        elif kind == "string":
            out.append(Field(widget="text", default="" if default is None else str(default), **common))
        elif kind in ("integer", "number"):
            out.append(
                Field(
                    widget="number",
                    step="1" if kind == "integer" else "any",
                    minimum=prop.get("minimum"),
                    maximum=prop.get("maximum"),
                    default="" if default is None else str(default),
                    **common,
                )
            )
        elif kind == "boolean":
            out.append(Field(widget="checkbox", default="on" if default else "", **common))
        else:
            shown = "" if default is None else json.dumps(default)
            out.append(Field(widget="json", default=shown, **common))
    free = not properties or schema.get("additionalProperties", True) is not False
    return out, free


def read_payload(schema: dict[str, Any], form: Any) -> dict[str, Any]:
    """The payload a submitted form describes.

    Raises:
        FormError: a value that is not what its field needs (not a number, not JSON, …).
    """
    fields, free = fields_of(schema)
    errors: dict[str, str] = {}
    payload: dict[str, Any] = {}
    if free:
        raw = (form.get("payload_json") or "").strip()
        if raw:
            try:
                value = loads_bounded(raw)
            except ValueError as exc:
                errors["payload_json"] = f"not valid JSON: {exc}"
            else:
                if isinstance(value, dict):
                    payload.update(value)
                else:
                    errors["payload_json"] = "must be a JSON object"
    types = {name: (p or {}).get("type") for name, p in (schema.get("properties") or {}).items()}
    for field in fields:
        raw = form.get(field.input_name)
        if field.widget == "checkbox":
            if raw is not None or field.required:
                payload[field.name] = raw is not None
            continue
        if raw is None or raw == "":
            continue
        if field.widget == "number":
            try:
                number = float(raw)
                integral = types.get(field.name) == "integer" and number.is_integer()
                payload[field.name] = int(number) if integral else number
            except ValueError:
                errors[field.input_name] = "must be a number"
        elif field.widget == "json":
            try:
                payload[field.name] = loads_bounded(raw)
            except ValueError as exc:
                errors[field.input_name] = f"not valid JSON: {exc}"
        else:
            payload[field.name] = raw
    if errors:
        raise FormError(errors)
    return payload


def read_options(form: Any) -> dict[str, Any]:
    """The submission options of the form (queue, priority, delay, tags, max_retries).

    Raises:
        FormError: a value out of shape.
    """
    errors: dict[str, str] = {}
    out: dict[str, Any] = {}
    queue = (form.get("queue") or "").strip()
    if queue:
        out["queue"] = queue
    for name, cast in (("priority", int), ("max_retries", int), ("delay", float)):
        raw = (form.get(name) or "").strip()
        if not raw:
            continue
        try:
            out[name] = cast(raw)
        except ValueError:
            errors[name] = "must be a number"
    tags = [t.strip() for t in (form.get("tags") or "").split(",") if t.strip()]
    if tags:
        out["tags"] = tags
    if errors:
        raise FormError(errors)
    return out
