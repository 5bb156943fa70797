"""The ``echo`` handler: returns its payload unchanged."""

from __future__ import annotations

from typing import Any

from taskmill import HandlerContext
from taskmill import handler

__all__ = ["echo_handler"]


@handler("echo")
def echo_handler(ctx: HandlerContext, payload: Any) -> Any:
    """Return the payload unchanged (smoke tests, plumbing checks).

    Args:
        ctx: the task's context (unused).
        payload: any JSON value.

    Returns:
        ``payload``, as given.
    """
    return payload
