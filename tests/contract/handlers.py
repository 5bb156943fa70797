"""Handlers of the broker contract suite.

The api and worker processes load them as a third-party plugin would be loaded: a throw-away
distribution on ``PYTHONPATH`` declares the entry point ``contract = tests.contract.handlers``
(see ``Installation`` in conftest.py).
"""

from __future__ import annotations

import os
import time
from typing import Any

from taskmill import handler
from taskmill import hookimpl


@handler("contract.stamp")
def stamp(ctx: Any, payload: dict[str, Any]) -> dict[str, Any]:
    """Return when (ns since the epoch), where and in which attempt it ran: the run order."""
    return {"ns": time.time_ns(), "pid": os.getpid(), "attempt": ctx.attempt}


@handler("contract.stubborn")
def stubborn(ctx: Any, payload: dict[str, Any]) -> dict[str, Any]:
    """Sleep ``seconds`` ignoring cancellation: only a forced stop ends it early."""
    time.sleep(float(payload.get("seconds", 60)))
    return {"slept": payload.get("seconds", 60)}


@hookimpl
def taskmill_handlers() -> list[Any]:
    return [stamp, stubborn]
