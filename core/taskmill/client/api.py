"""The :class:`Client` of ``taskmill.client`` (see the package docstring)."""

from __future__ import annotations

import enum
import json
import time
import uuid
from collections.abc import Iterable
from collections.abc import Iterator
from collections.abc import Mapping
from typing import Any

import requests
import urllib3

from taskmill.client.errors import ClientError
from taskmill.client.errors import ConnectionFailed
from taskmill.client.errors import NotFound
from taskmill.client.errors import Unavailable
from taskmill.client.errors import _RetryAfter
from taskmill.client.errors import error_of
from taskmill.client.sse import Event
from taskmill.client.sse import parse_stream

__all__ = ["Client", "FINAL_STATUSES"]

FINAL_STATUSES = frozenset({"completed", "failed", "cancelled"})
"""States a task does not leave by itself (``failed`` ones wait in the dead-letter queue)."""

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
            error = error_of(response)
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
            for _event_id, _name, data in parse_stream(response, keepalives=True):
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
                for event_id, name, data in parse_stream(response, keepalives=False):
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
