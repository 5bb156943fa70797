"""taskmill-checksum: a taskmill handler plugin (``files.checksum``), made to be copied.

The entry point ``checksum = "taskmill_checksum"`` (group ``taskmill``, in ``pyproject.toml``)
names this module; taskmill registers the hook implementations below from it.
"""

from __future__ import annotations

from taskmill import HandlerSpec
from taskmill import hookimpl
from taskmill.plugin_api import SettingsSpec

from taskmill_checksum.checksum import CHECKSUM_SETTINGS
from taskmill_checksum.checksum import ChecksumPayload
from taskmill_checksum.checksum import checksum
from taskmill_checksum.checksum import checksum_async

__all__ = [
    "CHECKSUM_SETTINGS",
    "ChecksumPayload",
    "checksum",
    "checksum_async",
    "taskmill_handlers",
    "taskmill_settings",
]


@hookimpl
def taskmill_handlers() -> list[HandlerSpec]:
    """Declare this plugin's handlers: ``files.checksum`` and its ``async def`` twin."""
    return [checksum, checksum_async]


@hookimpl
def taskmill_settings() -> list[SettingsSpec]:
    """Declare ``TASKMILL_CHECKSUM_*`` (validated by taskmill at start, listed by ``taskmill config``)."""
    return [CHECKSUM_SETTINGS]
