"""Logging for every role: one JSON object per line, or readable text on a terminal.

:func:`configure` is called once per process by the CLI (and by gunicorn's workers). Every line
about a task carries ``task_id``, ``type``, ``queue``, ``attempt``, ``worker`` and ``tenant``
(set with :func:`task_context` around the work on a task); every line of an API request carries
its ``request_id`` (:func:`request_context`). Known secrets (the configured ones, passwords in
URLs, API keys and bearer tokens) are masked on the way out, whatever logged them.

``TASKMILL_LOG_FORMAT``: ``auto`` (JSON unless stderr is a terminal), ``json`` or ``text``;
``TASKMILL_LOG_LEVEL`` sets the level. Library chatter (Alembic's set-up lines, pika's
connection notes) is kept to warnings unless the level is DEBUG.
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime as dt
import json
import logging
import re
import sys
import uuid
from collections.abc import Iterable
from collections.abc import Iterator
from typing import Any
from typing import TextIO

__all__ = [
    "configure",
    "task_context",
    "request_context",
    "new_request_id",
    "JsonFormatter",
    "TextFormatter",
    "ContextFilter",
    "RedactingFilter",
    "TASK_FIELDS",
    "QUIET_LOGGERS",
]

TASK_FIELDS = ("task_id", "type", "queue", "attempt", "worker", "tenant")
"""Fields every log line about a task carries."""

QUIET_LOGGERS = ("alembic", "pika", "rq.worker", "rq.scheduler", "urllib3", "werkzeug", "gunicorn.access")
"""Libraries whose INFO lines are noise for an operator: shown from WARNING unless DEBUG."""

_CONTEXT: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("taskmill_log", default=None)

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")

_PATTERNS = (
    # passwords in URLs: scheme://user:secret@host
    ("://", re.compile(r"(?P<head>[a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s]*:)(?P<secret>[^@\s]+)(?P<tail>@)")),
    # taskmill API keys: tm_<prefix>_<secret>
    ("tm_", re.compile(r"(?P<head>\btm_[A-Za-z0-9]+_)(?P<secret>[A-Za-z0-9_-]{8,})(?P<tail>)")),
    # bearer credentials in logged headers
    (None, re.compile(r"(?P<head>(?i:bearer)\s+)(?P<secret>[A-Za-z0-9._~+/=-]{8,})(?P<tail>)")),
)
"""(a substring every match contains, or None; the pattern): the pattern runs only when the
substring is there, so a line without a URL or a key costs one ``in`` per pattern."""

_MASK = r"\g<head>***\g<tail>"

_BOUND = frozenset((*TASK_FIELDS, "request_id"))
"""Fields :class:`ContextFilter` sets from the bound context: ids and names, never secrets."""


def new_request_id(given: str | None = None) -> str:
    """The client's ``X-Request-ID`` when it is a sane token, else a new random id."""
    if given and _REQUEST_ID.match(given):
        return given
    return uuid.uuid4().hex


@contextlib.contextmanager
def _bound(fields: dict[str, Any]) -> Iterator[None]:
    current = _CONTEXT.get() or {}
    token = _CONTEXT.set({**current, **{k: v for k, v in fields.items() if v is not None}})
    try:
        yield
    finally:
        _CONTEXT.reset(token)


def task_context(task: Any, worker: str | None = None) -> contextlib.AbstractContextManager[None]:
    """Bind a task's fields to every log line inside the block.

    Args:
        task: a :class:`taskmill.models.Task` (or anything with its attributes).
        worker: the id of the worker running it.
    """
    return _bound(
        {
            "task_id": str(getattr(task, "id", "")) or None,
            "type": getattr(task, "type", None),
            "queue": getattr(task, "queue", None),
            "attempt": getattr(task, "attempts", None),
            "worker": worker or getattr(task, "worker", None),
            "tenant": getattr(task, "tenant", None),
        }
    )


def request_context(request_id: str, **fields: Any) -> contextlib.AbstractContextManager[None]:
    """Bind a request id (and e.g. the caller's tenant) to every log line inside the block."""
    return _bound({"request_id": request_id, **fields})


def bind(**fields: Any) -> contextvars.Token[dict[str, Any] | None]:
    """Bind fields until :func:`unbind` (for code that cannot wrap a ``with`` block, such as a
    Flask ``before_request``/``teardown_request`` pair)."""
    current = _CONTEXT.get() or {}
    return _CONTEXT.set({**current, **{k: v for k, v in fields.items() if v is not None}})


def unbind(token: contextvars.Token[dict[str, Any] | None]) -> None:
    _CONTEXT.reset(token)


class ContextFilter(logging.Filter):
    """Copies the bound task/request fields onto each record."""

    def filter(self, record: logging.LogRecord) -> bool:
        fields = _CONTEXT.get()
        if fields:
            for key, value in fields.items():
                if not hasattr(record, key):
                    setattr(record, key, value)
        return True


class RedactingFilter(logging.Filter):
    """Masks secrets in the message and its arguments before any handler sees them."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self.secrets = sorted({s for s in secrets if s and len(s) >= 6}, key=len, reverse=True)

    def redact(self, text: str) -> str:
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, "***")
        for hint, pattern in _PATTERNS:
            if hint is None or hint in text:
                text = pattern.sub(_MASK, text)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad format string is logged as it is
            message = str(record.msg)
        redacted = self.redact(message)
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        record.msg, record.args = redacted, None
        for key, value in vars(record).items():  # extra= fields (a traceback, a URL) too
            if isinstance(value, str) and key not in _EXTRA_SKIP and key not in _BOUND:
                setattr(record, key, self.redact(value))
        return True


def _timestamp(record: logging.LogRecord) -> str:
    when = dt.datetime.fromtimestamp(record.created, dt.UTC)
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"


_EXTRA_SKIP = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``ts``, ``level``, ``logger``, ``msg``, ``pid``, the bound
    fields, any ``extra=`` fields, and ``exc`` for a traceback."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": _timestamp(record),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
            "pid": record.process,
        }
        for key, value in vars(record).items():
            if key not in _EXTRA_SKIP and not key.startswith("_"):
                out[key] = value
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            out["exc"] = record.exc_text
        return json.dumps(out, default=str, separators=(",", ":"))


class TextFormatter(logging.Formatter):
    """``time level logger[pid]: message  key=value …`` for people at a terminal."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        fields = [
            f"{k}={getattr(record, k)}"
            for k in (*TASK_FIELDS, "request_id")
            if getattr(record, k, None) is not None
        ]
        if fields:
            first, _, rest = text.partition("\n")
            text = first + "  " + " ".join(fields) + ("\n" + rest if rest else "")
        return text


def configure(
    level: str = "INFO",
    fmt: str = "auto",
    *,
    secrets: Iterable[str] = (),
    stream: TextIO | None = None,
) -> logging.Handler:
    """Set up the root logger of this process (replacing earlier handlers). Idempotent.

    Args:
        level: DEBUG, INFO, WARNING, ERROR or CRITICAL.
        fmt: ``json``, ``text`` or ``auto`` (text on a terminal, JSON otherwise).
        secrets: values to mask wherever they appear (configured keys and passwords).
        stream: where to write (default stderr).

    Returns:
        The handler installed on the root logger.
    """
    stream = stream or sys.stderr
    if fmt == "auto":
        fmt = "text" if getattr(stream, "isatty", lambda: False)() else "json"
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(ContextFilter())
    handler.addFilter(RedactingFilter(secrets))
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, "_taskmill", False) or isinstance(old, logging.StreamHandler):
            root.removeHandler(old)
    handler._taskmill = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    numeric = getattr(logging, level.upper(), logging.INFO)
    root.setLevel(numeric)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG if numeric <= logging.DEBUG else logging.WARNING)
    # libraries that install their own handlers (gunicorn, alembic's fileConfig) send to ours
    for name in ("gunicorn.error", "alembic"):
        lib = logging.getLogger(name)
        lib.handlers = []
        lib.propagate = True
    return handler
