"""The ``fail`` handler: fails on purpose, for retry, dead-letter and alerting tests."""

from __future__ import annotations

from typing import Any

from marshmallow import Schema
from marshmallow import fields
from marshmallow import validate

from taskmill import HandlerContext
from taskmill import handler

__all__ = ["FailSchema", "fail_handler", "DEFAULT_MESSAGE"]

DEFAULT_MESSAGE = "failed on purpose"
"""The error message when the payload gives none."""


class FailSchema(Schema):
    """Payload of ``fail``: ``{"message": str, "times": int ≥ 0}``, both optional."""

    message = fields.String(load_default=DEFAULT_MESSAGE)
    times = fields.Integer(
        strict=True,
        allow_none=True,
        load_default=None,
        validate=validate.Range(min=0),
    )


@handler("fail", schema=FailSchema)
def fail_handler(ctx: HandlerContext, payload: dict[str, Any]) -> dict[str, int]:
    """Raise RuntimeError(message) on the first `times` attempts (default: every attempt).

    Once ``times`` attempts have failed, the next attempt succeeds; ``{"times": 2}`` with
    two retries allowed therefore completes on attempt 3, and ``{"times": 0}`` never fails.

    Args:
        ctx: the task's context; ``ctx.attempt`` is the 1-based attempt number.
        payload: ``{"message": str, "times": int}``.

    Returns:
        ``{"attempts": n}``, the number of the attempt that succeeded.

    Raises:
        RuntimeError: while the attempt number is at most ``times``.
    """
    message = payload.get("message") or DEFAULT_MESSAGE
    times = payload.get("times")
    if times is None or ctx.attempt <= times:
        raise RuntimeError(message)
    return {"attempts": ctx.attempt}
