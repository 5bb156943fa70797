"""Reading a ``text/event-stream`` body as it arrives (the WHATWG rules), for ``taskmill.client``."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import requests

__all__ = ["Event", "parse_stream"]

Event = tuple[int | None, str, Any]
"""One server-sent event: ``(id, name, data)``; for task events ``data`` is the task resource."""

_LINE_END = re.compile(rb"\r\n|\r|\n")


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


def parse_stream(response: requests.Response, *, keepalives: bool) -> Iterator[Event]:
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
