"""The handler API: ``@handler`` and the context a handler receives."""

from __future__ import annotations

import dataclasses
import inspect
import logging
import uuid
from collections.abc import Callable
from typing import Any

__all__ = ["handler", "HandlerSpec", "HandlerContext", "payload_json_schema"]


@dataclasses.dataclass(frozen=True)
class HandlerSpec:
    """A registered task handler: its name, function, payload schema and defaults."""

    name: str
    func: Callable[[HandlerContext, dict[str, Any]], Any]
    schema: Any = None
    queue: str | None = None
    timeout: int | None = None
    max_retries: int | None = None
    description: str = ""
    plugin: str = ""

    def load_payload(self, payload: dict[str, Any]) -> dict[str, Any]:
        """Validate ``payload`` with the schema; return what the handler receives.

        Raises:
            marshmallow.ValidationError: the payload is rejected.
        """
        if self.schema is None:
            return payload
        schema = self.schema() if isinstance(self.schema, type) else self.schema
        return schema.load(payload)

    @property
    def is_async(self) -> bool:
        """True for an ``async def`` handler (the asyncio pool awaits it on its loop; the other
        pools run it to completion with :func:`asyncio.run` in their slot)."""
        return inspect.iscoroutinefunction(self.func)

    def __call__(self, ctx: HandlerContext, payload: dict[str, Any]) -> Any:
        return self.func(ctx, payload)


def handler(
    name: str,
    *,
    schema: Any = None,
    queue: str | None = None,
    timeout: int | None = None,
    max_retries: int | None = None,
    description: str | None = None,
) -> Callable[[Callable[..., Any]], HandlerSpec]:
    """Declare a task handler ``def fn(ctx, payload)`` or ``async def fn(ctx, payload)``.

    Args:
        name: the task ``type`` clients submit.
        schema: a marshmallow Schema (class or instance) validating the payload at submit.
        queue: default queue of tasks of this type.
        timeout: default timeout in seconds.
        max_retries: default retry budget.
        description: shown by ``GET /api/v1/handlers``; defaults to the docstring.

    Returns:
        A decorator that turns the function into a :class:`HandlerSpec`.
    """

    def decorate(func: Callable[..., Any]) -> HandlerSpec:
        doc = description if description is not None else (func.__doc__ or "").strip()
        return HandlerSpec(
            name=name,
            func=func,
            schema=schema,
            queue=queue,
            timeout=timeout,
            max_retries=max_retries,
            description=doc.split("\n\n")[0].strip(),
        )

    return decorate


class HandlerContext:
    """What a running handler sees of its task and of the worker.

    ``progress`` and ``cancel_requested`` are backed by callables the worker provides, so the
    same handler runs unchanged under the SQL broker's pool and under RQ.
    """

    def __init__(
        self,
        task_id: uuid.UUID,
        attempt: int,
        *,
        type_: str = "",
        report_progress: Callable[[float], None] | None = None,
        check_cancel: Callable[[], bool] | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        self.task_id = task_id
        self.attempt = attempt
        self.type = type_
        self._report_progress = report_progress
        self._check_cancel = check_cancel
        self.logger = logger or logging.getLogger(f"taskmill.task.{type_ or 'handler'}")

    def progress(self, fraction: float) -> None:
        """Report progress between 0.0 and 1.0 (clamped); shown by the API."""
        value = min(1.0, max(0.0, float(fraction)))
        if self._report_progress is not None:
            self._report_progress(value)

    @property
    def cancel_requested(self) -> bool:
        """True once someone asked to cancel this task; return soon when it is."""
        return bool(self._check_cancel and self._check_cancel())


def payload_json_schema(spec: HandlerSpec) -> dict[str, Any]:
    """The JSON Schema of a handler's payload, from its marshmallow schema."""
    if spec.schema is None:
        return {"type": "object"}
    from apispec import APISpec
    from apispec.ext.marshmallow import MarshmallowPlugin

    plugin = MarshmallowPlugin()
    APISpec("handlers", "1", "3.0.3", plugins=[plugin])
    schema = spec.schema() if isinstance(spec.schema, type) else spec.schema
    converted = plugin.converter.schema2jsonschema(schema)
    converted.setdefault("type", "object")
    return converted
