"""``GET /api/v1/events``: server-sent events of task changes, read from the events journal.

One poller per process (:class:`EventHub`) reads the journal once per interval — one indexed
``id > position`` query for every open stream together — reads the changed tasks in one more query,
and hands each stream the events it may see (its tenant, admin: all; its filters). So 200 idle
streams cost one cheap query per interval, not 200.

A stream that resumes (``Last-Event-ID`` header or ``last_event_id`` query parameter) first reads
the journal itself from that id up to where the poller stood when it subscribed, then follows the
poller; an id older than the oldest kept event gets an ``event: reset`` first. A stream too slow
for its buffer falls back to reading the journal the same way, so it loses nothing. A
``: keepalive`` comment goes out every :data:`KEEPALIVE` seconds (also how a closed connection is
noticed).

A stream holds one server thread for its life: ``taskmill api`` runs gunicorn's ``gthread`` worker
with threads well above :data:`DEFAULT_MAX_STREAMS` (see :mod:`taskmill.gunicorn_app`), and a
process refuses streams beyond its cap with a 503, so streams can never take every thread.
"""

from __future__ import annotations

import collections
import json
import logging
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

from flask import Response
from flask import current_app
from flask import request
from flask.views import MethodView
from marshmallow import EXCLUDE
from marshmallow import Schema
from marshmallow import fields
from marshmallow import validate

from taskmill.api.auth import requires
from taskmill.api.auth import scope_tenant
from taskmill.api.blueprint import Blueprint
from taskmill.api.errors import documents_errors
from taskmill.api.errors import http_error
from taskmill.api.schemas import QUEUE_NAME
from taskmill.app import get_runtime
from taskmill.errors import StorageUnavailable
from taskmill.models import Event
from taskmill.models import EventQuery
from taskmill.models import Role
from taskmill.serialize import task_to_dict

__all__ = ["blp", "EventHub", "hub_of", "format_event", "KEEPALIVE", "DEFAULT_MAX_STREAMS"]

logger = logging.getLogger("taskmill.api.events")

blp = Blueprint(
    "events",
    __name__,
    url_prefix="/api/v1/events",
    description="Server-sent events of task changes, resumable with Last-Event-ID.",
)

KEEPALIVE = 10.0
"""Seconds between ``: keepalive`` comments on a quiet stream (API.md: at least every 15 s)."""

POLL_INTERVAL = 0.2
"""Seconds the poller sleeps when the journal had nothing new."""

READ_LIMIT = 1000
"""Events per journal read."""

BUFFER = 20_000
"""Events a stream may have waiting; beyond, it reads its backlog from the journal."""

DEFAULT_MAX_STREAMS = 200
"""Open streams one API process accepts (``TASKMILL_EVENTS_MAX_STREAMS`` when the setting exists)."""

RETRY_MS = 2000
"""The ``retry:`` a client waits before reconnecting."""

_HUBS_LOCK = threading.Lock()


class TooManyStreams(Exception):
    """This process serves its maximum of open streams."""


class Subscription:
    """One open stream's view of the hub: what it may see, and its buffer."""

    def __init__(self, query: EventQuery, start: int) -> None:
        self.query = query
        self.start = start
        """The hub delivers every matching event with an id above this."""
        self._tasks = set(query.task_ids)
        self._workflows = set(query.workflow_ids)
        self._queues = set(query.queues)
        self._types = set(query.types)
        self._cond = threading.Condition()
        self._items: collections.deque[tuple[int, str]] = collections.deque()
        self.overflowed = False

    def matches(self, event: Event) -> bool:
        q = self.query
        if q.tenant is not None and event.tenant != q.tenant:
            return False
        if self._tasks and event.task_id not in self._tasks:
            return False
        if self._workflows and event.workflow_id not in self._workflows:
            return False
        if self._queues and event.queue not in self._queues:
            return False
        return not self._types or event.type in self._types

    def offer(self, batch: list[tuple[Event, str]]) -> None:
        mine = [(ev.id, text) for ev, text in batch if self.matches(ev)]
        if not mine:
            return
        with self._cond:
            if self.overflowed:
                return
            if len(self._items) + len(mine) > BUFFER:
                self.overflowed = True
                self._items.clear()
            else:
                self._items.extend(mine)
            self._cond.notify()

    def take(self, timeout: float) -> list[tuple[int, str]]:
        """What arrived, waiting up to ``timeout`` seconds for something."""
        with self._cond:
            if not self._items and not self.overflowed:
                self._cond.wait(timeout)
            items = list(self._items)
            self._items.clear()
            return items

    def reset_overflow(self, start: int) -> None:
        with self._cond:
            self.overflowed = False
            self.start = start


def format_event(event: Event, task: dict[str, Any] | None) -> str:
    """One server-sent event: ``id``, ``event`` and the task as ``data``."""
    data = task if task is not None else _gone(event)
    return f"id: {event.id}\nevent: {event.event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


def _gone(event: Event) -> dict[str, Any]:
    """What an event says of a task whose row has expired since."""
    return {
        "id": str(event.task_id),
        "tenant": event.tenant,
        "queue": event.queue,
        "type": event.type,
        "workflow_id": None if event.workflow_id is None else str(event.workflow_id),
    }


def render(runtime: Any, events: list[Event]) -> list[tuple[Event, str]]:
    """The events as stream text, with their tasks read in one query."""
    if not events:
        return []
    ids = sorted({e.task_id for e in events})
    tasks = {t.id: task_to_dict(t) for t in runtime.storage.tasks.get_many(ids)}
    return [(e, format_event(e, tasks.get(e.task_id))) for e in events]


class EventHub:
    """The per-process journal poller that fans events out to the open streams."""

    def __init__(self, runtime: Any, *, max_streams: int = DEFAULT_MAX_STREAMS) -> None:
        self.rt = runtime
        self.max_streams = max_streams
        self.position: int | None = None
        self._subs: set[Subscription] = set()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._wake = threading.Event()
        self.reads = 0
        """Journal reads made (a test and the benchmark look at it)."""

    @property
    def open_streams(self) -> int:
        return len(self._subs)

    def subscribe(self, query: EventQuery) -> Subscription:
        """Register a stream; the hub delivers every matching event after ``sub.start``.

        Raises:
            TooManyStreams: the process serves ``max_streams`` already.
            StorageUnavailable: the journal cannot be read.
        """
        with self._lock:
            if len(self._subs) >= self.max_streams:
                raise TooManyStreams(f"this process serves {self.max_streams} event streams already")
            if self.position is None or self._thread is None:
                self.position = self.rt.storage.events.last_id()
            sub = Subscription(query, self.position)
            self._subs.add(sub)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="taskmill-events", daemon=True)
                self._thread.start()
            return sub

    def unsubscribe(self, sub: Subscription) -> None:
        with self._lock:
            self._subs.discard(sub)

    def _run(self) -> None:
        while True:
            with self._lock:
                if not self._subs:
                    self._thread = None
                    return
                subs = list(self._subs)
                position = self.position or 0
            try:
                events = self.rt.storage.events.read(position, None, READ_LIMIT)
                self.reads += 1
                # only what some stream will receive is rendered (its task read and dumped once)
                batch = render(self.rt, [e for e in events if any(sub.matches(e) for sub in subs)])
            except StorageUnavailable as exc:
                logger.warning("events stream: the journal is unreadable: %s", exc)
                time.sleep(1.0)
                continue
            except Exception:  # noqa: BLE001 - the poller must outlive a bad batch
                logger.exception("events stream: reading the journal failed")
                time.sleep(1.0)
                continue
            for sub in subs if batch else ():
                sub.offer(batch)
            if events:
                with self._lock:
                    self.position = events[-1].id
            if len(events) < READ_LIMIT:
                time.sleep(POLL_INTERVAL)


def hub_of(app: Any) -> EventHub:
    """The app's hub (one per process and app)."""
    hub = app.extensions.get("taskmill.events")
    if hub is None:
        with _HUBS_LOCK:
            hub = app.extensions.get("taskmill.events")
            if hub is None:
                runtime = app.extensions["taskmill"]
                cap = int(getattr(runtime.settings, "events_max_streams", 0) or DEFAULT_MAX_STREAMS)
                hub = EventHub(runtime, max_streams=cap)
                app.extensions["taskmill.events"] = hub
    return hub


def _journal(runtime: Any, sub: Subscription, cursor: int, upto: int | None) -> Iterator[tuple[int, str]]:
    """Matching events after ``cursor`` (up to ``upto`` when given), from the journal itself."""
    while upto is None or cursor < upto:
        events = runtime.storage.events.read(cursor, sub.query, READ_LIMIT)
        if upto is not None:
            events = [e for e in events if e.id <= upto]
        if not events:
            return
        for ev, text in render(runtime, events):
            yield ev.id, text
        cursor = events[-1].id
        if upto is None and len(events) < READ_LIMIT:
            return


def stream(
    runtime: Any,
    hub: EventHub,
    sub: Subscription,
    after: int | None,
    keepalive: float,
    max_age: float | None = None,
) -> Iterator[str]:
    """The body of one stream: backlog from the journal, then the hub's events, keepalives. With
    ``max_age`` the stream ends after that many seconds (the client reconnects with its
    ``Last-Event-ID`` and loses nothing)."""
    born = time.monotonic()
    try:
        yield f"retry: {RETRY_MS}\n\n"
        cursor = sub.start
        if after is not None:
            oldest = runtime.storage.events.oldest_id()
            if oldest and after < oldest - 1:
                yield f"event: reset\ndata: {json.dumps({'oldest_id': oldest, 'last_event_id': after})}\n\n"
            cursor = after
            for event_id, text in _journal(runtime, sub, cursor, sub.start):
                yield text
                cursor = event_id
            cursor = max(cursor, sub.start)
        last_sent = time.monotonic()
        while max_age is None or time.monotonic() - born < max_age:
            if sub.overflowed:
                upto = hub.position or cursor
                sub.reset_overflow(upto)
                for event_id, text in _journal(runtime, sub, cursor, upto):
                    yield text
                    cursor = event_id
                cursor = max(cursor, upto)
            wait = keepalive - (time.monotonic() - last_sent)
            if max_age is not None:
                wait = min(wait, max_age - (time.monotonic() - born))
            items = sub.take(timeout=max(0.05, wait))
            sent = False
            for event_id, text in items:
                if event_id <= cursor:
                    continue
                yield text
                cursor = event_id
                sent = True
            if sent:
                last_sent = time.monotonic()
            elif time.monotonic() - last_sent >= keepalive:
                yield ": keepalive\n\n"
                last_sent = time.monotonic()
    finally:
        hub.unsubscribe(sub)


class EventArgsSchema(Schema):
    """Filters (each may repeat) and the resume point."""

    class Meta:
        unknown = EXCLUDE

    task_id = fields.List(fields.UUID(), validate=validate.Length(max=100))
    workflow_id = fields.List(fields.UUID(), validate=validate.Length(max=100))
    queue = fields.List(fields.String(validate=QUEUE_NAME), validate=validate.Length(max=100))
    type = fields.List(
        fields.String(validate=validate.Length(min=1, max=200)), validate=validate.Length(max=100)
    )
    last_event_id = fields.Integer(
        validate=validate.Range(min=0),
        metadata={"description": "Resume after this id (or the Last-Event-ID header)."},
    )


def _last_event_id(args: dict[str, Any]) -> int | None:
    header = request.headers.get("Last-Event-ID")
    if header is not None and header.strip():
        try:
            value = int(header.strip())
        except ValueError:
            raise http_error(
                422, "Last-Event-ID must be an event id", {"Last-Event-ID": ["not an integer"]}
            ) from None
        if value < 0:
            raise http_error(422, "Last-Event-ID must be an event id", {"Last-Event-ID": ["must be ≥ 0"]})
        return value
    return args.get("last_event_id")


@blp.route("")
class Events(MethodView):
    @requires(Role.VIEWER)
    @blp.doc(
        operationId="streamEvents",
        # flask-smorest writes no content for a response without a schema: say what the body is
        responses={
            "200": {
                "description": "A text/event-stream of task changes (id, event, data: the task).",
                "content": {"text/event-stream": {"schema": {"type": "string"}}},
            }
        },
    )
    @blp.arguments(EventArgsSchema(), location="query")
    @blp.response(
        200,
        description="A text/event-stream of task changes (id, event, data: the task).",
        content_type="text/event-stream",
    )
    @documents_errors(blp, 401, 403, 422, 503)
    def get(self, args: dict[str, Any]) -> Response:
        """Follow task changes (server-sent events)

        Every change of a task of the caller's tenant (admin: every tenant) is one event, ``id``
        growing. Filters ``task_id``, ``workflow_id``, ``queue``, ``type`` may repeat. Resume
        with ``Last-Event-ID`` (or ``last_event_id``); an id older than the journal keeps gets
        ``event: reset`` first. A ``: keepalive`` comment comes at least every 15 s.
        """
        runtime = get_runtime()
        query = EventQuery(
            tenant=scope_tenant(),
            task_ids=tuple(uuid.UUID(str(v)) for v in args.get("task_id") or ()),
            workflow_ids=tuple(uuid.UUID(str(v)) for v in args.get("workflow_id") or ()),
            queues=tuple(args.get("queue") or ()),
            types=tuple(args.get("type") or ()),
        )
        after = _last_event_id(args)
        hub = hub_of(current_app)
        try:
            sub = hub.subscribe(query)
        except TooManyStreams as exc:
            raise http_error(503, str(exc), {}, {"Retry-After": "5"}) from None
        keepalive = float(current_app.config.get("TASKMILL_EVENTS_KEEPALIVE", KEEPALIVE))
        max_age = current_app.config.get("TASKMILL_EVENTS_MAX_AGE")  # seconds; None: unbounded
        body = stream(runtime, hub, sub, after, keepalive, None if max_age is None else float(max_age))
        response = Response(body, mimetype="text/event-stream")
        response.headers["Cache-Control"] = "no-cache"
        response.headers["X-Accel-Buffering"] = "no"
        response.call_on_close(lambda: hub.unsubscribe(sub))  # also when the body never started
        return response
