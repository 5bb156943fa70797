"""Names, queue arguments, messages and connection parameters of the RabbitMQ broker.

Everything both ends must agree on lives here, so the publisher and the consumer can never
declare a queue with different arguments (RabbitMQ closes the channel with 406 when they differ).

Topology (all durable):

- one **classic** queue per taskmill queue, ``taskmill.<queue>``, with ``x-max-priority: 9``
  (task priorities are 0..9; RabbitMQ delivers the highest first and FIFO within one). Quorum
  queues would replicate, but RabbitMQ 3.10 refuses ``x-max-priority`` on them (406), and
  priorities are part of taskmill's contract; the database, not the queue, is what must survive
  a lost node, and the manager re-publishes from it. Tasks are published through the default
  exchange with the queue's name as routing key and ``mandatory`` set, so a message that no
  queue takes comes back as an error instead of being dropped.
- the dead-letter exchange ``taskmill.dead-letter`` (fanout) and its queue
  ``taskmill.dead-letters`` (bounded by ``x-max-length``, oldest dropped first). It receives a
  JSON record of every task that exhausted its retries, and messages a consumer rejected as
  malformed (the task queues name it as their ``x-dead-letter-exchange``).

A task message carries only ``{"id", "queue", "priority"}`` as JSON; the database holds the rest.
"""

from __future__ import annotations

import json
import re
import ssl
import uuid
from typing import Any
from urllib.parse import urlsplit
from urllib.parse import urlunsplit

import pika

__all__ = [
    "QUEUE_PREFIX",
    "MAX_PRIORITY",
    "DEAD_LETTER_EXCHANGE",
    "DEAD_LETTER_QUEUE",
    "CONTENT_TYPE",
    "amqp_queue",
    "queue_arguments",
    "dead_letter_arguments",
    "encode_task",
    "decode_task",
    "task_properties",
    "dead_letter_body",
    "connection_parameters",
    "redact",
    "scrub",
]

QUEUE_PREFIX = "taskmill."
MAX_PRIORITY = 9
DEAD_LETTER_EXCHANGE = "taskmill.dead-letter"
DEAD_LETTER_QUEUE = "taskmill.dead-letters"
CONTENT_TYPE = "application/json"
TASK_MESSAGE_TYPE = "taskmill.task"
DEAD_LETTER_MESSAGE_TYPE = "taskmill.dead-letter"


def amqp_queue(queue: str) -> str:
    """The AMQP queue carrying a taskmill queue's task ids."""
    return QUEUE_PREFIX + queue


def queue_arguments() -> dict[str, Any]:
    """Arguments of every task queue (classic, priorities 0..9, rejects to the dead letters)."""
    return {
        "x-queue-type": "classic",
        "x-max-priority": MAX_PRIORITY,
        "x-dead-letter-exchange": DEAD_LETTER_EXCHANGE,
    }


def dead_letter_arguments(max_length: int) -> dict[str, Any]:
    """Arguments of the dead-letter queue: classic and bounded (the database keeps every failure)."""
    return {"x-queue-type": "classic", "x-max-length": int(max_length), "x-overflow": "drop-head"}


def encode_task(task_id: uuid.UUID, queue: str, priority: int) -> bytes:
    """The JSON body of a task message."""
    return json.dumps(
        {"id": str(task_id), "queue": queue, "priority": int(priority)}, separators=(",", ":")
    ).encode()


def task_properties(task_id: uuid.UUID, priority: int) -> pika.BasicProperties:
    """Persistent, JSON, with the task id as ``message_id`` and the task priority."""
    return pika.BasicProperties(
        content_type=CONTENT_TYPE,
        delivery_mode=pika.DeliveryMode.Persistent,
        priority=max(0, min(MAX_PRIORITY, int(priority))),
        message_id=str(task_id),
        type=TASK_MESSAGE_TYPE,
        app_id="taskmill",
    )


def decode_task(properties: Any, body: bytes) -> tuple[uuid.UUID, str] | None:
    """``(task_id, queue)`` of a task message, or None when it is not one (wrong content type,
    not JSON, no valid id). Nothing but JSON is ever parsed."""
    if getattr(properties, "content_type", None) != CONTENT_TYPE:
        return None
    try:
        data = json.loads(body)
        return uuid.UUID(str(data["id"])), str(data["queue"])
    except (ValueError, TypeError, KeyError):
        return None


def dead_letter_body(task: Any) -> bytes:
    """The JSON record sent to the dead-letter exchange for a task that exhausted its retries."""
    error = task.error or {}
    return json.dumps(
        {
            "id": str(task.id),
            "type": task.type,
            "queue": task.queue,
            "tenant": task.tenant,
            "attempts": task.attempts,
            "error": {"type": error.get("type"), "message": error.get("message")},
            "finished_at": task.finished_at.isoformat() if task.finished_at else None,
        },
        separators=(",", ":"),
    ).encode()


# -- connections -------------------------------------------------------------------------------------


def redact(url: str) -> str:
    """The URL without its password (for logs and error messages)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


def scrub(text: str, url: str) -> str:
    """``text`` with the URL's password (raw or percent-encoded) replaced by ``***``."""
    parts = urlsplit(url)
    raw = parts.netloc.rsplit("@", 1)[0].partition(":")[2] if "@" in parts.netloc else ""
    for secret in {raw, parts.password or ""}:
        if secret:
            text = text.replace(secret, "***")
    return re.sub(r"(amqps?://[^:/@\s]*:)[^@\s]*@", r"\1***@", text)


def tls_context(ca_file: str, cert_file: str, key_file: str, verify: bool) -> ssl.SSLContext:
    """A client TLS context: TLS ≥ 1.2, the server's certificate and host name checked (unless
    ``verify`` is off), trusting ``ca_file`` (or the system store when empty)."""
    ctx = ssl.create_default_context(cafile=ca_file or None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if cert_file:
        ctx.load_cert_chain(cert_file, key_file or None)
    return ctx


def connection_parameters(
    url: str,
    *,
    heartbeat: int,
    name: str,
    ca_file: str = "",
    cert_file: str = "",
    key_file: str = "",
    verify: bool = True,
    connect_timeout: float = 3.0,
) -> pika.URLParameters:
    """pika parameters for an ``amqp://`` or ``amqps://`` URL.

    ``amqps`` always gets our own TLS context (certificate verification on by default), whatever
    the URL's query says. ``name`` shows in ``rabbitmqctl list_connections client_properties``.
    """
    params = pika.URLParameters(url)
    params.heartbeat = heartbeat
    params.blocked_connection_timeout = 60
    params.socket_timeout = connect_timeout
    params.stack_timeout = connect_timeout + 2
    params.connection_attempts = 1
    params.client_properties = {"connection_name": name, "product": "taskmill"}
    if urlsplit(url).scheme == "amqps":
        host = urlsplit(url).hostname or "localhost"
        params.ssl_options = pika.SSLOptions(
            tls_context(ca_file, cert_file, key_file, verify), server_hostname=host
        )
    return params
