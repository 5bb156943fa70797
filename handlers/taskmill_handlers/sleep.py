"""The ``sleep`` handler: sleeps with progress reports and cooperative cancellation."""

from __future__ import annotations

import time
from typing import Any

from marshmallow import Schema
from marshmallow import fields
from marshmallow import validate

from taskmill import HandlerContext
from taskmill import handler

__all__ = ["SleepSchema", "sleep_handler", "MAX_SECONDS", "STEP", "PROGRESS_INTERVAL"]

MAX_SECONDS = 86400
"""The longest sleep a payload may ask for (one day)."""

STEP = 0.1
"""The longest single ``time.sleep``, so a cancel request is seen within this many seconds."""

PROGRESS_INTERVAL = 1.0
"""Seconds between two progress reports."""


class SleepSchema(Schema):
    """Payload of ``sleep``: ``{"seconds": number}`` with 0 ≤ seconds ≤ 86400."""

    seconds = fields.Float(
        required=True,
        allow_nan=False,
        validate=validate.Range(min=0, max=MAX_SECONDS),
    )


@handler("sleep", schema=SleepSchema)
def sleep_handler(ctx: HandlerContext, payload: dict[str, Any]) -> dict[str, float]:
    """Sleep for the given seconds, reporting progress every second; stop early when cancelled.

    Used by timeout, cancellation and load tests. The sleep is taken in steps of at most
    0.1 s, so a cancel request is honoured quickly.

    Args:
        ctx: the task's context (progress and cancellation).
        payload: ``{"seconds": number}``.

    Returns:
        ``{"slept": seconds}``: how long it actually slept, shorter when cancelled.
    """
    seconds = float(payload["seconds"])
    start = time.monotonic()
    deadline = start + seconds
    next_report = start + PROGRESS_INTERVAL
    ctx.progress(0.0)
    while True:
        now = time.monotonic()
        if now >= deadline or ctx.cancel_requested:
            break
        if now >= next_report:
            ctx.progress((now - start) / seconds)
            next_report += PROGRESS_INTERVAL
        time.sleep(min(STEP, deadline - now))
    return {"slept": round(time.monotonic() - start, 3)}
