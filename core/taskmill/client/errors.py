"""The errors ``taskmill.client`` raises: a :class:`ClientError` subclass per refusing status."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import requests

__all__ = [
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
    "error_of",
]


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


def error_of(response: requests.Response) -> ClientError:
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
