"""Polling helpers shared by the tests that watch real processes."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def wait_for(
    predicate: Callable[[], Any],
    timeout: float = 20.0,
    what: str = "condition",
    context: Callable[[], str] | None = None,
) -> Any:
    """Poll ``predicate`` every 50 ms until it returns something truthy, and return that.

    Raises:
        AssertionError: naming ``what`` (and whatever ``context()`` adds, such as process logs)
            when ``timeout`` seconds pass first.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    extra = f"\n{context()}" if context is not None else ""
    raise AssertionError(f"timed out after {timeout}s waiting for {what}{extra}")
