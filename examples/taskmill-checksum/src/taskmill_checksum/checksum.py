"""``files.checksum``: the digest of a file on the worker's disk.

Payload ``{"path": "incoming/a.iso", "algorithm": "sha256", "expected": "<hex>"}``: ``path`` is
relative to ``TASKMILL_CHECKSUM_ROOT`` and must stay inside it; ``expected``, when given, makes the
task fail unless the digest matches. Result ``{"path", "algorithm", "digest", "bytes",
"matches"}``.

What it shows a plugin author:

* a marshmallow payload schema: a bad payload is refused at submit (422), before any worker;
* ``ctx.progress`` after every chunk, ``ctx.cancel_requested`` checked between chunks;
* :class:`taskmill.Retry` for a transient problem (the file has not arrived yet, or changed while
  it was read), a failure without retry (``no_retry = True``) for a permanent one;
* settings declared with ``taskmill_settings`` and read from the worker's runtime.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
from pathlib import Path
from pathlib import PurePosixPath
from typing import Any

from marshmallow import Schema
from marshmallow import ValidationError
from marshmallow import fields
from marshmallow import validate
from marshmallow import validates
from marshmallow import validates_schema
from taskmill import HandlerContext
from taskmill import Retry
from taskmill import handler
from taskmill.plugin_api import PluginSettings
from taskmill.plugin_api import Setting
from taskmill.plugin_api import SettingsSpec
from taskmill.plugin_api import current_runtime

__all__ = [
    "ALGORITHMS",
    "CHECKSUM_SETTINGS",
    "ChecksumPayload",
    "ChecksumRefused",
    "checksum",
    "checksum_async",
    "checksum_settings",
    "file_digest",
    "file_digest_async",
]

ALGORITHMS = ("md5", "sha1", "sha256", "sha512", "blake2b")
"""Digests offered (hashlib's guaranteed ones; md5/sha1 for matching published checksums only)."""

CHUNK_BYTES = 1 << 20
"""Bytes read between two progress reports and cancel checks."""

CHECKSUM_SETTINGS = SettingsSpec(
    name="checksum",
    prefix="checksum",
    doc="The files.checksum handler (plugin taskmill-checksum).",
    settings=(
        Setting(
            "root",
            str,
            ".",
            "Directory files.checksum reads under: payload paths are relative to it and nothing "
            "outside it (symbolic links included) is read. Relative to the worker's directory.",
        ),
        Setting(
            "max_bytes",
            int,
            64 << 30,
            "Largest file files.checksum reads, in bytes; a larger one fails without retry.",
            minimum=1,
        ),
        Setting(
            "retry_delay",
            float,
            10.0,
            "Seconds before trying again a file that is missing or changed while it was read.",
            minimum=0,
        ),
    ),
)

_HEX = re.compile(r"^[0-9a-f]+$")


class ChecksumRefused(Exception):  # noqa: N818 - reads as what happened to the task
    """The file cannot be checksummed, and trying again will not change that (no retry)."""

    no_retry = True


class ChecksumPayload(Schema):
    """Payload of ``files.checksum``."""

    path = fields.String(
        required=True,
        validate=validate.Length(min=1, max=4096),
        metadata={"description": "File path relative to TASKMILL_CHECKSUM_ROOT (no '..', not absolute)."},
    )
    algorithm = fields.String(
        load_default="sha256",
        validate=validate.OneOf(ALGORITHMS),
        metadata={"description": "Digest algorithm."},
    )
    expected = fields.String(
        load_default=None,
        validate=validate.Regexp(_HEX, error="must be a lower-case hexadecimal digest"),
        metadata={"description": "When given, the task fails unless the digest equals it."},
    )

    @validates("path")
    def _relative_path(self, value: str, **_: Any) -> None:
        if "\0" in value or "\\" in value:
            raise ValidationError("must not contain NUL or backslash characters")
        path = PurePosixPath(value)
        if path.is_absolute():
            raise ValidationError("must be relative to TASKMILL_CHECKSUM_ROOT")
        if ".." in path.parts:
            raise ValidationError("must not contain '..'")

    @validates_schema
    def _expected_length(self, data: dict[str, Any], **_: Any) -> None:
        expected = data.get("expected")
        if expected is not None:
            size = hashlib.new(data.get("algorithm", "sha256")).digest_size * 2
            if len(expected) != size:
                raise ValidationError(f"a {data['algorithm']} digest has {size} hex digits", "expected")


def checksum_settings() -> PluginSettings:
    """This plugin's settings, from the runtime of the worker process running the handler."""
    return current_runtime().plugin_settings("checksum")


def file_digest(
    path: Path,
    algorithm: str,
    ctx: HandlerContext | None = None,
    *,
    chunk_bytes: int = CHUNK_BYTES,
) -> tuple[str, int] | None:
    """Hash ``path`` chunk by chunk; report progress and stop early when cancelled.

    Returns:
        ``(hex digest, bytes read)``, or None when the task was cancelled meanwhile.

    Raises:
        Retry: the file changed size while it was read.
    """
    digest = hashlib.new(algorithm)
    size = path.stat().st_size
    done = 0
    with path.open("rb") as f:
        while chunk := f.read(chunk_bytes):
            digest.update(chunk)
            done += len(chunk)
            if done > size:
                break  # it grows while we read (a log being written): do not follow it
            if ctx is not None:
                if ctx.cancel_requested:
                    return None
                ctx.progress(done / size if size else 1.0)
    if done != size or path.stat().st_size != size:
        raise Retry(f"{path.name} changed while it was read ({size} bytes, then {done})")
    return digest.hexdigest(), done


def _resolve(root: Path, relative: str) -> Path:
    base = root.resolve()
    target = (base / relative).resolve()
    if not target.is_relative_to(base):
        raise ChecksumRefused(f"{relative} leads outside TASKMILL_CHECKSUM_ROOT")
    return target


def _target(payload: dict[str, Any], settings: PluginSettings, ctx: HandlerContext) -> Path:
    """The file to read, checked (inside the root, there, a regular file, not too large)."""
    relative = payload["path"]
    path = _resolve(Path(settings.root), relative)
    try:
        info = path.stat()
    except FileNotFoundError:
        # Files announced before they have landed (uploads, shared volumes) are common: wait.
        raise Retry(f"{relative} does not exist (yet)", delay=settings.retry_delay) from None
    if not path.is_file():
        raise ChecksumRefused(f"{relative} is not a regular file")
    if info.st_size > settings.max_bytes:
        raise ChecksumRefused(f"{relative} has {info.st_size} bytes, over TASKMILL_CHECKSUM_MAX_BYTES")
    if not os.access(path, os.R_OK):
        raise ChecksumRefused(f"{relative} is not readable by the worker")
    ctx.logger.info("checksum of %s (%s bytes, %s)", relative, info.st_size, payload["algorithm"])
    return path


def _result(payload: dict[str, Any], done: tuple[str, int] | None) -> dict[str, Any] | None:
    if done is None:
        return None  # cancelled: taskmill records the task as cancelled
    digest, size = done
    algorithm, relative = payload["algorithm"], payload["path"]
    matches = None if payload["expected"] is None else digest == payload["expected"]
    if matches is False:
        raise ChecksumRefused(f"{algorithm} of {relative} is {digest}, not {payload['expected']}")
    return {"path": relative, "algorithm": algorithm, "digest": digest, "bytes": size, "matches": matches}


def _transient(exc: Exception, payload: dict[str, Any], settings: PluginSettings) -> Retry:
    if isinstance(exc, Retry):
        return Retry(exc.message, delay=settings.retry_delay)
    return Retry(f"{payload['path']} disappeared while it was read", delay=settings.retry_delay)


@handler("files.checksum", schema=ChecksumPayload, timeout=3600, max_retries=5)
def checksum(ctx: HandlerContext, payload: dict[str, Any]) -> dict[str, Any] | None:
    """The digest of a file under TASKMILL_CHECKSUM_ROOT (sha256 by default), checked against
    ``expected`` when given.

    Raises:
        Retry: the file is not there yet, or changed while it was read (transient).
        ChecksumRefused: outside the root, not a regular file, unreadable, too large, or a digest
            that does not match ``expected`` (no retry).
    """
    settings = checksum_settings()
    path = _target(payload, settings, ctx)
    try:
        done = file_digest(path, payload["algorithm"], ctx)
    except (Retry, FileNotFoundError) as exc:
        raise _transient(exc, payload, settings) from None
    return _result(payload, done)


async def file_digest_async(
    path: Path, algorithm: str, ctx: HandlerContext, *, chunk_bytes: int = CHUNK_BYTES
) -> tuple[str, int] | None:
    """:func:`file_digest` for an event loop: each chunk is read in a thread, so the loop serves
    other tasks meanwhile."""
    digest = hashlib.new(algorithm)
    size = path.stat().st_size
    done = 0
    with path.open("rb") as f:
        while chunk := await asyncio.to_thread(f.read, chunk_bytes):
            digest.update(chunk)
            done += len(chunk)
            if done > size:
                break
            if ctx.cancel_requested:
                return None
            ctx.progress(done / size if size else 1.0)
    if done != size or path.stat().st_size != size:
        raise Retry(f"{path.name} changed while it was read ({size} bytes, then {done})")
    return digest.hexdigest(), done


@handler("files.checksum_async", schema=ChecksumPayload, timeout=3600, max_retries=5)
async def checksum_async(ctx: HandlerContext, payload: dict[str, Any]) -> dict[str, Any] | None:
    """``files.checksum`` as an ``async def`` handler (the shape for I/O-bound work): on
    ``taskmill worker --pool asyncio`` many run at once on one event loop; the other pools run it
    to completion in their slot."""
    settings = checksum_settings()
    path = _target(payload, settings, ctx)
    try:
        done = await file_digest_async(path, payload["algorithm"], ctx)
    except (Retry, FileNotFoundError) as exc:
        raise _transient(exc, payload, settings) from None
    return _result(payload, done)
