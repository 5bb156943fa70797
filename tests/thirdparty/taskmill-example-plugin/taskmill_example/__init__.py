"""An example third-party taskmill plugin: the ``example.reverse`` handler."""

from __future__ import annotations

from typing import Any

from marshmallow import Schema
from marshmallow import fields

from taskmill import HandlerContext
from taskmill import HandlerSpec
from taskmill import handler
from taskmill import hookimpl

__all__ = ["ReverseSchema", "reverse", "taskmill_handlers"]


class ReverseSchema(Schema):
    """Payload of ``example.reverse``: ``{"text": str}``."""

    text = fields.String(required=True)


@handler("example.reverse", schema=ReverseSchema)
def reverse(ctx: HandlerContext, payload: dict[str, Any]) -> dict[str, str]:
    """Reverse a string (an example of a third-party handler).

    Args:
        ctx: the task's context.
        payload: ``{"text": str}``.

    Returns:
        ``{"reversed": text[::-1]}``.
    """
    return {"reversed": payload["text"][::-1]}


@hookimpl
def taskmill_handlers() -> list[HandlerSpec]:
    """Declare this plugin's handlers.

    Returns:
        The ``example.reverse`` handler.
    """
    return [reverse]
