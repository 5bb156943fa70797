"""Plain JSON forms of the domain records (CLI, webhooks); the API uses its marshmallow schemas."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from taskmill.models import Task

__all__ = ["task_to_dict", "format_time", "loads_bounded", "MAX_JSON_DEPTH", "JsonTooDeep"]

MAX_JSON_DEPTH = 64
"""Deepest nesting of objects and arrays accepted in a request body (or stored payload)."""


class JsonTooDeep(ValueError):
    """A JSON document nests deeper than :data:`MAX_JSON_DEPTH`."""


def loads_bounded(data: str | bytes, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """``json.loads`` that refuses documents nested deeper than ``max_depth``.

    Python's own parser raises ``RecursionError`` (not a ``ValueError``) near 1,000 levels, and a
    document just under that limit would fail later when it is written or answered; both become
    a :class:`JsonTooDeep` here, which callers report as a client error.

    Raises:
        ValueError: not JSON (``json.JSONDecodeError``) or nested too deep (:class:`JsonTooDeep`).
    """
    try:
        value = json.loads(data)
    except RecursionError:
        raise JsonTooDeep(f"JSON nested deeper than {max_depth} levels") from None
    # iterative walk over containers only: no recursion, cheap for flat documents
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        if depth > max_depth:
            raise JsonTooDeep(f"JSON nested deeper than {max_depth} levels")
        stack.extend((c, depth + 1) for c in children if isinstance(c, dict | list))
    return value


def format_time(value: dt.datetime | None) -> str | None:
    """RFC 3339 UTC with milliseconds: ``2026-11-28T10:00:00.123Z``."""
    if value is None:
        return None
    value = value.astimezone(dt.UTC)
    # isoformat pads the year to four digits (strftime's %Y does not on glibc: "197-07-17")
    return value.replace(tzinfo=None).isoformat(timespec="milliseconds") + "Z"


def task_to_dict(task: Task) -> dict[str, Any]:
    """The API's task resource as a dict."""
    return {
        "id": str(task.id),
        "type": task.type,
        "queue": task.queue,
        "priority": task.priority,
        "payload": task.payload,
        "status": task.status.value,
        "tenant": task.tenant,
        "attempts": task.attempts,
        "max_retries": task.max_retries,
        "timeout": task.timeout,
        "retry_backoff": task.retry_backoff,
        "run_at": format_time(task.run_at),
        "depends_on": list(task.depends_on),
        "idempotency_key": task.idempotency_key,
        "callback_url": task.callback_url,
        "tags": list(task.tags),
        "progress": task.progress,
        "cancel_requested": task.cancel_requested,
        "result": task.result,
        "error": task.error,
        "worker": task.worker,
        "created_at": format_time(task.created_at),
        "started_at": format_time(task.started_at),
        "finished_at": format_time(task.finished_at),
        "updated_at": format_time(task.updated_at),
    }
