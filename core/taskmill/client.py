"""A Python client of the taskmill HTTP API (``from taskmill.client import Client``).

It needs only ``requests``: importing it loads no Flask, SQLAlchemy or broker library, so an
application that only submits tasks stays light.

    client = Client("http://127.0.0.1:8000", api_key="tm_…")
    task = client.submit("echo", {"hello": "world"})
    final = client.wait(task["id"], timeout=60)

One ``requests.Session`` per client, so connections are reused (a client is meant to be shared
by the threads of a process only if each uses its own client; ``requests`` sessions are not
documented as thread-safe).

**Retries.** A request is repeated after a 503 (API.md: nothing was half-written; the wait honours
``Retry-After``) or a connection error only when repeating it cannot do anything twice:
``get``, every page of ``list``, ``cancel`` (cancelling twice ends in the same state), the
reconnects of ``events``, and ``submit``/``submit_many`` when every task carries an idempotency
key (the server answers a repeat with the first task). ``retry``, ``submit_workflow`` and a
submission without an idempotency key are sent once. A 429 is never repeated: it raises
:class:`RateLimited`, whose ``retry_after`` says when to try again.

**Errors.** Every refused request raises a :class:`ClientError` subclass chosen by its status
(``ValidationFailed`` 400/422, ``Unauthorized`` 401, ``Forbidden`` 403, ``NotFound`` 404,
``Conflict`` 409, ``PayloadTooLarge`` 413, ``RateLimited`` 429, ``Unavailable`` 503), with
``.status`` and ``.body`` (the server's JSON error body). A server that cannot be reached raises
:class:`ConnectionFailed` (``status`` None).
"""

from __future__ import annotations

import enum
import json
import re
import time
import uuid
from collections.abc import Iterable
from collections.abc import Iterator
from collections.abc import Mapping
from typing import Any

import requests
import urllib3

__all__ = [
    "Client",
    "ClientError",
    "ValidationFailed",
    "Unauthorized",
    "Forbidden",
    "NotFound",
    "Conflict",
    "PayloadTooLarge",
    "RateLimited",
    "Unavailable",
    "ConnectionFailed",
    "FINAL_STATUSES",
    "Event",
]

FINAL_STATUSES = frozenset({"completed", "failed", "cancelled"})
"""States a task does not leave by itself (``failed`` ones wait in the dead-letter queue)."""

Event = tuple[int | None, str, Any]
"""One server-sent event: ``(id, name, data)``; for task events ``data`` is the task resource."""

API = "/api/v1"
DEFAULT_TIMEOUT = 10.0
STREAM_READ_TIMEOUT = 45.0
"""Seconds of silence after which a stream counts as broken (the server comments every ≤ 15 s)."""
LIST_PAGE_SIZE = 200
POLL_INITIAL = 0.1
POLL_MAX = 2.0
MAX_BACKOFF = 30.0

_STREAM_ERRORS = (requests.RequestException, urllib3.exceptions.HTTPError, OSError)
"""What reading a stream raises when the connection breaks or stays silent too long."""
_LINE_END = re.compile(rb"\r\n|\r|\n")


# ---- errors ----------------------------------------------------------------------------------------


class ClientError(Exception):
    """A request the server refused (or could not be sent).

    Attributes:
        status: the HTTP status, or None when no answer came.
        body: the decoded JSON error body (``{"code", "status", "message", "errors"}``), the raw
            text when it was not JSON, or None.
        headers: the response headers (empty when no answer came).
    """

    def __init__(
        self,
        message: str,
        status: int | None = None,
        body: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.body = body
        self.headers: Mapping[str, str] = headers or {}

    @property
    def errors(self) -> dict[str, Any]:
        """The ``errors`` object of the body (which field was wrong, and why)."""
        if isinstance(self.body, dict) and isinstance(self.body.get("errors"), dict):
            return self.body["errors"]
        return {}


class ValidationFailed(ClientError):
    """400 (the body is not JSON) or 422 (validation failed: see :attr:`errors`)."""


class Unauthorized(ClientError):
    """401: no credential, or one the server does not accept."""


class Forbidden(ClientError):
    """403: the credential's role does not allow this."""


class NotFound(ClientError):
    """404: no such object in the caller's tenant (or no such endpoint on this server)."""


class Conflict(ClientError):
    """409: the action does not fit the state, or an idempotency key was reused with another body."""


class PayloadTooLarge(ClientError):
    """413: the body is larger than the server's ``TASKMILL_MAX_PAYLOAD_BYTES``."""


class _RetryAfter(ClientError):
    @property
    def retry_after(self) -> float | None:
        """Seconds the server asked to wait (``Retry-After``), or None."""
        return _retry_after(self.headers)


class RateLimited(_RetryAfter):
    """429: over the rate limit or the tenant's quota; wait :attr:`retry_after` seconds."""


class Unavailable(_RetryAfter):
    """503: the server's storage or broker is unreachable; nothing was written."""


class ConnectionFailed(ClientError):
    """The server could not be reached, or the connection broke (``status`` is None)."""


_BY_STATUS: dict[int, type[ClientError]] = {
    400: ValidationFailed,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    413: PayloadTooLarge,
    422: ValidationFailed,
    429: RateLimited,
    503: Unavailable,
}


def _retry_after(headers: Mapping[str, str]) -> float | None:
    value = headers.get("Retry-After") if headers else None
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def _error_of(response: requests.Response) -> ClientError:
    try:
        body: Any = response.json()
    except ValueError:
        body = response.text
    message = body.get("message") if isinstance(body, dict) else None
    text = f"{response.status_code} {response.reason or ''}".strip()
    if message:
        text = f"{text}: {message}"
    cls = _BY_STATUS.get(response.status_code, ClientError)
    return cls(text, response.status_code, body, dict(response.headers))


# ---- the client ------------------------------------------------------------------------------------


class Client:
    """A taskmill API client.

    Args:
        url: the server's base URL (``http://127.0.0.1:8000``); a trailing ``/api/v1`` is accepted.
        api_key: an API key or a JWT, sent as ``Authorization: Bearer …``; None sends no credential.
        timeout: seconds to wait for each answer (connect and read).
        retries: how many times an idempotent request is repeated after a 503 or a connection error.
        backoff: base of the exponential wait between those repeats, in seconds.
        session: a ``requests.Session`` to use (a new one by default; closed by :meth:`close`
            only when the client made it).
    """

    def __init__(
        self,
        url: str,
        api_key: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        *,
        retries: int = 3,
        backoff: float = 0.5,
        session: requests.Session | None = None,
    ) -> None:
        base = url.rstrip("/")
        if base.endswith(API):
            base = base[: -len(API)]
        self.url = base
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self._own_session = session is None
        self.session = session or requests.Session()
        self.session.headers.setdefault("Accept", "application/json")
        if api_key:
            self.session.headers["Authorization"] = f"Bearer {api_key}"

    # ---- plumbing ----------------------------------------------------------------------------------

    def close(self) -> None:
        """Close the connections (only those of a session this client created)."""
        if self._own_session:
            self.session.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Client({self.url!r})"

    def _pause(self, attempt: int, error: ClientError | None = None) -> None:
        delay = self.backoff * 2**attempt
        if isinstance(error, _RetryAfter) and error.retry_after is not None:
            delay = max(delay, error.retry_after)
        time.sleep(min(delay, MAX_BACKOFF))

    def request(
        self,
        method: str,
        path: str,
        *,
        idempotent: bool = False,
        timeout: float | tuple[float, float] | None = None,
        **kwargs: Any,
    ) -> requests.Response:
        """Send one request and return the response of a success (2xx).

        Args:
            method: ``GET``, ``POST``, …
            path: the path below the base URL (``/api/v1/tasks``).
            idempotent: repeat it after a 503 or a connection error (see the module docstring).
            timeout: this request's timeout (default: the client's).
            kwargs: passed to ``requests`` (``json``, ``params``, ``headers``, ``stream``).

        Raises:
            ClientError: a subclass by status, or :class:`ConnectionFailed`.
        """
        attempts = 1 + (self.retries if idempotent else 0)
        for attempt in range(attempts):
            last = attempt == attempts - 1
            try:
                response = self.session.request(
                    method, self.url + path, timeout=timeout or self.timeout, **kwargs
                )
            except requests.RequestException as exc:
                error: ClientError = ConnectionFailed(f"{method} {path}: {exc}")
                if last:
                    raise error from exc
                self._pause(attempt)
                continue
            if response.status_code < 400:
                return response
            error = _error_of(response)
            response.close()
            if response.status_code != 503 or last:
                raise error
            self._pause(attempt, error)
        raise AssertionError("unreachable")  # pragma: no cover

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        return self.request(method, path, **kwargs).json()

    # ---- tasks ---------------------------------------------------------------------------------------

    def submit(self, type: str, payload: Mapping[str, Any] | None = None, **fields: Any) -> dict[str, Any]:
        """Submit one task and return it (``POST /api/v1/tasks``).

        Args:
            type: the handler name (``echo``).
            payload: a JSON object (default ``{}``).
            fields: any other task field of API.md: ``queue``, ``priority``, ``delay`` or
                ``run_at``, ``max_retries``, ``timeout``, ``retry_backoff``, ``depends_on``,
                ``idempotency_key``, ``callback_url``, ``tags``. With an ``idempotency_key`` the
                submission is safe to repeat, and is repeated after a 503 or a broken connection.

        Returns:
            The task resource (a repeat with the same idempotency key returns the first task).
        """
        body = _task_body(type, payload, fields)
        return self._json("POST", f"{API}/tasks", json=body, idempotent="idempotency_key" in body)

    def submit_many(self, tasks: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Submit up to 1,000 tasks in one request, all or none (``POST /api/v1/tasks/batch``).

        Args:
            tasks: task bodies, each with ``type`` and any field :meth:`submit` takes.

        Returns:
            The tasks, in the order given. A 422 names the index of each invalid task
            (``error.errors["tasks"]["3"]``).
        """
        body = {"tasks": [_plain(task) for task in tasks]}
        keyed = bool(body["tasks"]) and all(t.get("idempotency_key") for t in body["tasks"])
        return self._json("POST", f"{API}/tasks/batch", json=body, idempotent=keyed)["tasks"]

    def get(self, task_id: str | uuid.UUID) -> dict[str, Any]:
        """One task (``GET /api/v1/tasks/{id}``); :class:`NotFound` if it is not the caller's."""
        return self._json("GET", f"{API}/tasks/{task_id}", idempotent=True)

    def cancel(self, task_id: str | uuid.UUID) -> dict[str, Any]:
        """Cancel a task (``DELETE /api/v1/tasks/{id}``) and return it.

        A task that had not started comes back ``cancelled``; a running one with
        ``cancel_requested`` true (it stops soon: :meth:`wait` for it). A finished task raises
        :class:`Conflict`.
        """
        return self._json("DELETE", f"{API}/tasks/{task_id}", idempotent=True)

    def retry(self, task_id: str | uuid.UUID) -> dict[str, Any]:
        """Run a ``failed`` or ``cancelled`` task again with a fresh retry budget; :class:`Conflict`
        otherwise (``POST /api/v1/tasks/{id}/retry``). Sent once (a repeat would be a 409)."""
        return self._json("POST", f"{API}/tasks/{task_id}/retry")

    def wait(
        self, task_id: str | uuid.UUID, timeout: float | None = None, *, use_events: bool = True
    ) -> dict[str, Any]:
        """Wait until a task is final (``completed``, ``failed`` or ``cancelled``) and return it.

        It follows the task's server-sent events (``GET /api/v1/events?task_id=…``); when the
        server has no events endpoint (404) or the stream breaks, it polls the task instead,
        every 0.1 s at first and up to every 2 s.

        A ``failed`` task is returned, not raised: look at ``task["status"]`` and
        ``task["error"]`` (``{"type", "message", "traceback"}``).

        Args:
            task_id: the task.
            timeout: seconds to wait at most (None: as long as it takes).
            use_events: False to poll only.

        Raises:
            TimeoutError: the task was not final within ``timeout`` seconds.
            NotFound: there is no such task in the caller's tenant.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        if use_events:
            task = self._wait_streaming(str(task_id), deadline)
            if task is not None:
                return task
        return self._wait_polling(str(task_id), deadline)

    def _wait_streaming(self, task_id: str, deadline: float | None) -> dict[str, Any] | None:
        """The final task seen on the events stream, or None when the stream is not usable."""
        try:
            response = self._open_stream({"task_id": [task_id]}, None, _remaining(deadline))
        except (NotFound, ConnectionFailed, Unavailable):
            return None  # no events endpoint on this server, or it cannot serve it now: poll
        try:
            # The stream is open: a change from now on arrives on it. Whatever happened before
            # is read from the task itself.
            task = self.get(task_id)
            if task["status"] in FINAL_STATUSES:
                return task
            for _event_id, _name, data in _parse_stream(response, keepalives=True):
                if deadline is not None and time.monotonic() >= deadline:
                    raise TimeoutError(f"task {task_id} was not final after the timeout")
                if data is None and not _name:
                    # a keepalive comment: look at the task itself now and then, so a change
                    # made between opening the stream and reading the task is not waited for
                    task = self.get(task_id)
                    if task["status"] in FINAL_STATUSES:
                        return task
                    continue
                if isinstance(data, dict) and str(data.get("id")) == task_id:
                    if data.get("status") in FINAL_STATUSES:
                        return data
        except _STREAM_ERRORS:
            return None  # the stream broke or stayed silent too long: poll
        finally:
            response.close()
        return None  # the server ended the stream

    def _wait_polling(self, task_id: str, deadline: float | None) -> dict[str, Any]:
        delay = POLL_INITIAL
        while True:
            task = self.get(task_id)
            if task["status"] in FINAL_STATUSES:
                return task
            if deadline is not None and time.monotonic() + delay > deadline:
                raise TimeoutError(f"task {task_id} was not final after the timeout (it is {task['status']})")
            time.sleep(delay)
            delay = min(delay * 2, POLL_MAX)

    # ---- workflows -------------------------------------------------------------------------------------

    def submit_workflow(self, tasks: Iterable[Mapping[str, Any]], name: str | None = None) -> dict[str, Any]:
        """Submit a DAG of tasks in one request, all or none (``POST /api/v1/workflows``).

        Args:
            tasks: task bodies, each with a ``key`` unique in the workflow, a ``type`` and
                ``depends_on`` naming other keys (or ids of existing tasks).
            name: an optional name of the workflow.

        Returns:
            The workflow: ``{"id", "name", "status", "tenant", "tasks": […], …}``. A cycle or an
            unknown or duplicate key is a :class:`ValidationFailed` naming the key.
        """
        body: dict[str, Any] = {"tasks": [_plain(task) for task in tasks]}
        if name is not None:
            body["name"] = name
        return self._json("POST", f"{API}/workflows", json=body)

    def get_workflow(self, workflow_id: str | uuid.UUID) -> dict[str, Any]:
        """One workflow with every task (``GET /api/v1/workflows/{id}``)."""
        return self._json("GET", f"{API}/workflows/{workflow_id}", idempotent=True)

    # ---- the rest of the API -------------------------------------------------------------------------

    def handlers(self) -> list[dict[str, Any]]:
        """The task types the server can run, with their payload schemas."""
        return self._json("GET", f"{API}/handlers", idempotent=True)

    def queues(self) -> list[dict[str, Any]]:
        """Queues with their depth per state."""
        return self._json("GET", f"{API}/queues", idempotent=True)

    def workers(self) -> list[dict[str, Any]]:
        """Live workers."""
        return self._json("GET", f"{API}/workers", idempotent=True)

    def dead_letters(self, **filters: Any) -> Iterator[dict[str, Any]]:
        """Every failed task of the caller's tenant, newest first (filters ``type``, ``queue``)."""
        return self._pages(f"{API}/dead-letters", filters)

    def requeue_dead_letters(
        self, ids: Iterable[str | uuid.UUID] | None = None, **filter: Any
    ) -> dict[str, Any]:
        """Requeue failed tasks by ``ids``, or by a filter (``type``, ``queue``, ``failed_after``,
        ``failed_before``): ``{"requeued": n, "ids": […]}``."""
        body: dict[str, Any] = {"ids": [str(i) for i in ids]} if ids is not None else {"filter": filter}
        return self._json("POST", f"{API}/dead-letters/requeue", json=body)

    def list(self, **filters: Any) -> Iterator[dict[str, Any]]:
        """Every task matching the filters, newest first, page after page (``GET /api/v1/tasks``).

        Args:
            filters: ``status``, ``type``, ``queue``, ``tag``, ``created_after`` (inclusive),
                ``created_before`` (exclusive), and ``page_size`` (tasks per request, default
                200). Datetimes may be given as ``datetime`` objects.

        Yields:
            Tasks, each once even when new submissions shift the pages while iterating. The next
            page is fetched when the previous one is used up, following ``X-Pagination``.
        """
        return self._pages(f"{API}/tasks", filters)

    def _pages(self, path: str, filters: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
        params = {k: _param(v) for k, v in filters.items() if v is not None}
        params.setdefault("page_size", LIST_PAGE_SIZE)
        page = int(params.pop("page", 1))
        seen: set[str] = set()
        while True:
            response = self.request("GET", path, params={**params, "page": page}, idempotent=True)
            for item in response.json():
                key = str(item.get("id")) if isinstance(item, dict) and "id" in item else None
                if key is not None:
                    if key in seen:
                        continue
                    seen.add(key)
                yield item
            meta = _pagination(response)
            if meta.get("next_page") is None:
                return
            page = int(meta["next_page"])

    # ---- events ----------------------------------------------------------------------------------------

    def events(
        self,
        *,
        last_event_id: int | str | None = None,
        reconnect: bool = True,
        read_timeout: float = STREAM_READ_TIMEOUT,
        **filters: Any,
    ) -> Iterator[Event]:
        """Follow the server-sent events of task changes (``GET /api/v1/events``).

        Args:
            last_event_id: start after this event id (events still kept are replayed first).
            reconnect: when the stream breaks or the server ends it, reconnect (after a
                back-off, or the server's ``retry:``) with ``Last-Event-ID``, so no kept event
                is missed; ``retries`` failed attempts in a row raise :class:`ConnectionFailed`.
            read_timeout: seconds of silence after which the stream counts as broken.
            filters: ``task_id``, ``workflow_id``, ``queue``, ``type``; each a value or a list.

        Yields:
            ``(id, name, data)``: ``name`` is ``task.submitted`` … ``task.requeued`` and ``data``
            the task after the change; ``reset`` (data None) means the id asked for was no longer
            kept and the stream restarted from the oldest kept event. Keepalive comments are
            skipped. Stop by breaking out of the loop (or ``close()`` on the iterator).

        Raises:
            NotFound: the server has no events endpoint.
        """
        params = {k: _listed(v) for k, v in filters.items() if v is not None}
        last: str | None = None if last_event_id is None else str(last_event_id)
        failures = 0
        delay: float | None = None
        while True:
            try:
                response = self._open_stream(params, last, read_timeout)
            except (ConnectionFailed, Unavailable) as exc:
                failures += 1
                if not reconnect or failures > self.retries:
                    raise
                self._pause(failures - 1, exc)
                continue
            try:
                for event_id, name, data in _parse_stream(response, keepalives=False):
                    failures = 0
                    if name == "__retry__":
                        delay = data
                        continue
                    if event_id is not None:
                        last = str(event_id)
                    yield event_id, name, data
            except _STREAM_ERRORS as exc:
                failures += 1
                if not reconnect or failures > self.retries:
                    raise ConnectionFailed(f"the event stream broke: {exc}") from exc
            finally:
                response.close()
            if not reconnect:
                return
            backoff = min(self.backoff * 2 ** max(failures - 1, 0), MAX_BACKOFF)
            time.sleep(delay if delay is not None else backoff)

    def _open_stream(
        self, params: Mapping[str, Any], last_event_id: str | None, read_timeout: float | None
    ) -> requests.Response:
        headers = {"Accept": "text/event-stream", "Cache-Control": "no-cache"}
        if last_event_id is not None:
            headers["Last-Event-ID"] = last_event_id
        response = self.request(
            "GET",
            f"{API}/events",
            params=params,
            headers=headers,
            stream=True,
            timeout=(self.timeout, read_timeout or STREAM_READ_TIMEOUT),
        )
        kind = response.headers.get("Content-Type", "")
        if not kind.startswith("text/event-stream"):
            response.close()
            raise NotFound(f"GET {API}/events answered {kind or 'no content type'}, not an event stream", 404)
        return response


# ---- helpers ---------------------------------------------------------------------------------------


def _remaining(deadline: float | None) -> float | None:
    if deadline is None:
        return None
    return max(0.1, min(STREAM_READ_TIMEOUT, deadline - time.monotonic()))


def _plain(value: Any) -> Any:
    """A JSON-ready copy: ids and datetimes as text, tuples as lists."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, uuid.UUID):
        return str(value)
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return value


def _task_body(type: str, payload: Mapping[str, Any] | None, fields: Mapping[str, Any]) -> dict[str, Any]:
    body: dict[str, Any] = {"type": type}
    if payload is not None:
        body["payload"] = payload
    body.update({k: v for k, v in fields.items() if v is not None})
    return _plain(body)


def _param(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        value = value.value
    return _plain(value)


def _listed(value: Any) -> list[str]:
    values = value if isinstance(value, list | tuple | set | frozenset) else [value]
    return [str(_param(v)) for v in values]


def _pagination(response: requests.Response) -> dict[str, Any]:
    raw = response.headers.get("X-Pagination")
    if not raw:
        return {}
    try:
        meta = json.loads(raw)
    except ValueError:
        return {}
    return meta if isinstance(meta, dict) else {}


def _lines(response: requests.Response) -> Iterator[str]:
    """The lines of a streamed body as they arrive (CRLF, LF or CR ends a line)."""
    raw = response.raw
    buffer = b""
    while True:
        chunk = raw.read1(65536)
        if not chunk:
            break
        buffer += chunk
        start = 0
        for match in _LINE_END.finditer(buffer):
            if match.group() == b"\r" and match.end() == len(buffer):
                break  # maybe the first half of a CRLF: wait for the next chunk
            yield buffer[start : match.start()].decode("utf-8", errors="replace")
            start = match.end()
        buffer = buffer[start:]
    if buffer:
        yield buffer.rstrip(b"\r").decode("utf-8", errors="replace")


def _parse_stream(response: requests.Response, *, keepalives: bool) -> Iterator[Event]:
    """Events of a ``text/event-stream`` body (the WHATWG rules: ``id``, ``event``, ``data``,
    ``retry``; comments skipped). ``data`` is decoded JSON when it parses, else the text.

    With ``keepalives`` a comment yields ``(None, "", None)`` (so a waiter can look at the
    clock); a ``retry:`` field yields ``(None, "__retry__", seconds)``.
    """
    event_id: int | str | None = None
    name = ""
    data: list[str] = []
    for line in _lines(response):
        if not line:
            if data:
                text = "\n".join(data)
                try:
                    value: Any = json.loads(text)
                except ValueError:
                    value = text
                yield event_id, name or "message", value
            elif name:
                yield event_id, name, None  # an event without data (``event: reset``)
            name, data = "", []
            continue
        if line.startswith(":"):
            if keepalives:
                yield None, "", None
            continue
        field, _, value_text = line.partition(":")
        if value_text.startswith(" "):
            value_text = value_text[1:]
        if field == "data":
            data.append(value_text)
        elif field == "event":
            name = value_text
        elif field == "id" and "\0" not in value_text:
            event_id = int(value_text) if value_text.isdigit() else value_text
        elif field == "retry" and value_text.isdigit():
            yield None, "__retry__", int(value_text) / 1000
