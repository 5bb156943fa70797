"""The one error hierarchy of taskmill.

Every layer raises these; the API maps them to HTTP statuses in one place
(``taskmill.api.errors``) and the CLI maps them to named exit codes.
"""

from __future__ import annotations

__all__ = [
    "TaskmillError",
    "ConfigError",
    "PluginError",
    "BrokerError",
    "BrokerUnavailable",
    "StorageError",
    "StorageUnavailable",
    "AuthError",
    "Forbidden",
    "TaskNotFound",
    "NotFound",
    "InvalidTransition",
    "Conflict",
    "PayloadRejected",
    "ValidationError",
    "RateLimited",
    "Retry",
]


class TaskmillError(Exception):
    """Base of every error taskmill raises on purpose."""

    def __init__(self, message: str = "", **details: object) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def __str__(self) -> str:
        return self.message


class ConfigError(TaskmillError):
    """The settings are invalid; ``errors`` maps each bad key to what is wrong."""

    def __init__(self, errors: dict[str, str]) -> None:
        lines = "; ".join(f"{k}: {v}" for k, v in sorted(errors.items()))
        super().__init__(f"invalid configuration: {lines}")
        self.errors = errors


class PluginError(TaskmillError):
    """A plugin is broken or two plugins claim the same name."""


class BrokerError(TaskmillError):
    """The broker failed."""


class BrokerUnavailable(BrokerError):
    """The broker cannot be reached right now; try again later."""


class StorageError(TaskmillError):
    """The storage failed."""


class StorageUnavailable(StorageError):
    """The storage cannot be reached right now; try again later."""


class AuthError(TaskmillError):
    """No credential, or a credential that is invalid (401)."""


class Forbidden(TaskmillError):
    """A valid credential whose role does not allow the action (403)."""


class NotFound(TaskmillError):
    """An object does not exist, or not within the caller's tenant (404)."""


class TaskNotFound(NotFound):
    """A task id that does not exist, or not within the caller's tenant."""


class InvalidTransition(TaskmillError):
    """The task is not in a state that allows the requested change (409)."""


class Conflict(TaskmillError):
    """The request conflicts with what exists (409): an idempotency key reused with another body."""


class ValidationError(TaskmillError):
    """The request is invalid (422); ``errors`` says where."""

    def __init__(self, message: str, errors: dict | None = None) -> None:
        super().__init__(message)
        self.errors = errors or {}


class PayloadRejected(ValidationError):
    """A handler's payload schema rejected the payload (422)."""


class RateLimited(TaskmillError):
    """A rate limit or quota was hit (429)."""

    def __init__(self, message: str, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Retry(Exception):  # noqa: N818 - the name reads as an instruction, like dramatiq's Retry
    """Raised by a handler to be retried (counts as an attempt, logged without traceback).

    Args:
        message: why; stored as the task's error message.
        delay: seconds to wait before the next attempt; ``None`` uses the task's back-off.
    """

    def __init__(self, message: str = "", delay: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.delay = delay
