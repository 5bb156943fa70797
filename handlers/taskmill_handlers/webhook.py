"""Webhook delivery: the final task JSON POSTed to a task's ``callback_url``, signed.

Delivery is itself a task. When a task with a ``callback_url`` ends (``completed``, ``failed`` or
``cancelled``), the :func:`taskmill_task_event` observer submits a ``taskmill.webhook`` task in
the same tenant and queue. The observer is fed by the manager from the events journal, which the
end of the task wrote in its own transaction, so a delivery follows even when the process that
recorded the end died right after its commit. Its payload only names the task (``{"url",
"task_id", "event"}``); the handler loads the task fresh from storage and POSTs
``task_to_dict(task)``, so the body is the final state and the payload stays small. Failed
deliveries (connection error, timeout, non-2xx) are retried with the task's back-off; the
connection goes through the ``http.request`` address guard, judged by
``TASKMILL_WEBHOOK_ALLOW_PRIVATE``, and a refused address fails at once.

The body is signed with HMAC-SHA256 under ``TASKMILL_WEBHOOK_SECRET`` or, when that is empty,
the installation's server secret (``TASKMILL_SECRET_KEY`` or the one generated into the database).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import uuid
from typing import TYPE_CHECKING
from typing import Any

import requests
from marshmallow import Schema
from marshmallow import fields
from marshmallow import validate

from taskmill import HandlerContext
from taskmill import Retry
from taskmill import TaskmillError
from taskmill import handler
from taskmill import hookimpl
from taskmill.plugin_api import FINAL_STATES
from taskmill.plugin_api import Conflict
from taskmill.plugin_api import Task
from taskmill.plugin_api import task_to_dict
from taskmill_handlers.http_request import address_policy
from taskmill_handlers.http_request import guarded_session

if TYPE_CHECKING:  # pragma: no cover
    from taskmill.plugin_api import Runtime

__all__ = [
    "WEBHOOK_TYPE",
    "WebhookDeliveryFailed",
    "WebhookRefused",
    "WebhookSchema",
    "sign",
    "taskmill_task_event",
    "webhook_handler",
]

logger = logging.getLogger("taskmill.webhooks")

WEBHOOK_TYPE = "taskmill.webhook"
"""The task type of a delivery."""

FINAL_EVENTS = frozenset({"completed", "failed", "cancelled"})
"""Lifecycle events that trigger a delivery."""

MAX_RETRIES = 8
"""Retries of a failed delivery (9 attempts in all)."""

RETRY_BACKOFF = 2.0
"""Base of the delivery back-off in seconds: about 2, 4, 8, … up to ``TASKMILL_RETRY_BACKOFF_MAX``."""

TASK_TIMEOUT = 30
"""Timeout of a delivery task, in seconds."""

REQUEST_TIMEOUT = 10.0
"""Connect and read timeout of the POST, in seconds."""


class WebhookDeliveryFailed(Retry):
    """The receiver could not be reached or did not answer 2xx; the delivery is retried."""


class WebhookRefused(TaskmillError):  # noqa: N818 - the name is part of the API (error.type)
    """The delivery names a task that does not exist in its tenant, or a URL that is not the
    task's ``callback_url``. It fails without retry."""

    no_retry = True


class WebhookSchema(Schema):
    """Payload of ``taskmill.webhook``: which task's final state goes where."""

    url = fields.String(required=True, validate=validate.Length(min=1, max=2000))
    task_id = fields.UUID(required=True)
    event = fields.String(required=True, validate=validate.OneOf(sorted(FINAL_EVENTS)))


def sign(secret: str, body: bytes) -> str:
    """The ``X-Taskmill-Signature`` value of ``body``: ``sha256=<hex HMAC-SHA256>``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def _secret(runtime: Runtime) -> str:
    """``TASKMILL_WEBHOOK_SECRET``, or the installation's server secret when it is empty."""
    return runtime.plugin_settings("webhook").secret or runtime.secret_key


# --- the observer: a final event of a task with a callback submits a delivery -------------------


@hookimpl
def taskmill_task_event(task: Task, event: str, runtime: Runtime) -> None:
    """Submit a ``taskmill.webhook`` task when a task with a ``callback_url`` ends.

    Runs in a manager, fed from the events journal (at least once: a manager that dies while
    delivering leaves the batch to the next one). A task without a callback,
    any other event and a delivery's own events cost one attribute check and no I/O. The hook is
    called per task, so each delivery is one submission (one insert) of its own. Its idempotency
    key ``webhook:<task id>:<attempts>:<event>`` makes a repeated event a no-op, while a task that
    is retried by hand and ends again is delivered again.

    Args:
        task: the task as written.
        event: the lifecycle event.
        runtime: the runtime of the process that recorded the event.
    """
    if not task.callback_url or event not in FINAL_EVENTS or task.type == WEBHOOK_TYPE:
        return
    from taskmill_handlers.deliveries import delivery_key  # the key deliveries are found by

    body = {
        "type": WEBHOOK_TYPE,
        "payload": {"url": task.callback_url, "task_id": str(task.id), "event": event},
        "queue": task.queue,
        "max_retries": MAX_RETRIES,
        "retry_backoff": RETRY_BACKOFF,
        "timeout": TASK_TIMEOUT,
        "idempotency_key": delivery_key(task.id, task.attempts, event),
    }
    lifecycle = runtime.lifecycle
    try:
        [(delivery, created)] = lifecycle.submit([lifecycle.build(body, task.tenant)])
    except Conflict:
        logger.warning("webhook of task %s for %s was already submitted differently", task.id, event)
        return
    except TaskmillError as exc:
        logger.error("could not submit the webhook of task %s for %s: %s", task.id, event, exc)
        return
    if created:
        logger.debug("webhook %s submitted for task %s (%s)", delivery.id, task.id, event)


# --- the handler: one signed POST --------------------------------------------------------------


def _load(runtime: Runtime, ctx: HandlerContext, payload: dict[str, Any]) -> Task:
    """The task to deliver, looked up in the delivery's own tenant.

    Raises:
        WebhookRefused: no such task there, or the URL is not its ``callback_url``.
    """
    own = runtime.storage.tasks.get(ctx.task_id)
    tenant = own.tenant if own is not None else None
    task_id = uuid.UUID(str(payload["task_id"]))
    task = runtime.storage.tasks.get(task_id, tenant=tenant) if tenant is not None else None
    if task is None:
        raise WebhookRefused(f"task {task_id} does not exist in the tenant of this delivery")
    if task.callback_url != payload["url"]:
        raise WebhookRefused(f"{payload['url']!r} is not the callback_url of task {task_id}")
    return task


@handler(
    WEBHOOK_TYPE,
    schema=WebhookSchema,
    timeout=TASK_TIMEOUT,
    max_retries=MAX_RETRIES,
    description="POST a finished task's JSON to its callback_url, signed (built-in webhook delivery).",
)
def webhook_handler(ctx: HandlerContext, payload: dict[str, Any]) -> dict[str, Any]:
    """POST the current (final) JSON of ``payload["task_id"]`` to its ``callback_url``.

    Headers: ``Content-Type: application/json``, ``X-Taskmill-Signature: sha256=<hex>``,
    ``X-Taskmill-Task: <id>``, ``X-Taskmill-Event: <status>``. Redirects are not followed. A
    task that is no longer final (retried since) is skipped: its next end is delivered anew.

    Args:
        ctx: the delivery's context.
        payload: ``{"url", "task_id", "event"}``.

    Returns:
        ``{"delivered": True, "status": <HTTP status>, "event"}``, or ``{"delivered": False,
        "reason"}`` when skipped.

    Raises:
        ForbiddenAddress: the URL resolves to a private, loopback, link-local or metadata
            address and ``TASKMILL_WEBHOOK_ALLOW_PRIVATE`` is off (no retry).
        WebhookRefused: the task is not in this tenant or has another ``callback_url`` (no retry).
        WebhookDeliveryFailed: connection error, timeout or non-2xx answer (retried).
    """
    from taskmill.plugin_api import current_runtime

    runtime = current_runtime()
    task = _load(runtime, ctx, payload)
    if task.status not in FINAL_STATES:
        logger.info(
            "task %s is %s again; its webhook for %s is skipped", task.id, task.status, payload["event"]
        )
        return {"delivered": False, "reason": f"task is {task.status.value}"}
    url = str(payload["url"])
    body = json.dumps(task_to_dict(task), separators=(",", ":")).encode()
    headers = {
        "Content-Type": "application/json",
        "X-Taskmill-Signature": sign(_secret(runtime), body),
        "X-Taskmill-Task": str(task.id),
        "X-Taskmill-Event": task.status.value,
    }
    allow_private = bool(runtime.plugin_settings("webhook").allow_private)
    with address_policy(allow_private, "TASKMILL_WEBHOOK_ALLOW_PRIVATE"), guarded_session() as session:
        try:
            response = session.post(
                url, data=body, headers=headers, timeout=REQUEST_TIMEOUT, allow_redirects=False, stream=True
            )
        except requests.RequestException as exc:
            raise WebhookDeliveryFailed(f"could not deliver to {url}: {exc}") from exc
        status = response.status_code
        response.close()  # the answer's body is never read
    if not 200 <= status < 300:
        raise WebhookDeliveryFailed(f"HTTP {status} from {url}")
    logger.info("webhook of task %s (%s) delivered to %s: HTTP %s", task.id, task.status, url, status)
    return {"delivered": True, "status": status, "event": task.status.value}
