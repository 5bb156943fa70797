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

from taskmill.client.api import FINAL_STATUSES
from taskmill.client.api import Client
from taskmill.client.errors import ClientError
from taskmill.client.errors import Conflict
from taskmill.client.errors import ConnectionFailed
from taskmill.client.errors import Forbidden
from taskmill.client.errors import NotFound
from taskmill.client.errors import PayloadTooLarge
from taskmill.client.errors import RateLimited
from taskmill.client.errors import Unauthorized
from taskmill.client.errors import Unavailable
from taskmill.client.errors import ValidationFailed
from taskmill.client.sse import Event

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
