"""Handlers used by the worker and lifecycle tests, registered as a plugin (as a third party would)."""

from __future__ import annotations

import datetime as dt
import os
import time
from typing import Any

from taskmill import Retry
from taskmill import handler
from taskmill import hookimpl


@handler("j.echo")
def j_echo(ctx: Any, payload: dict[str, Any]) -> dict[str, Any]:
    return payload


@handler("j.sleep")
def j_sleep(ctx: Any, payload: dict[str, Any]) -> dict[str, Any]:
    """Sleep, honouring cancellation, reporting progress."""
    seconds = float(payload.get("seconds", 1))
    end = time.monotonic() + seconds
    ctx.progress(0.0)
    while time.monotonic() < end:
        if ctx.cancel_requested:
            return {"stopped": True}
        ctx.progress(1 - (end - time.monotonic()) / seconds)
        time.sleep(0.02)
    return {"slept": seconds}


@handler("j.stubborn")
def j_stubborn(ctx: Any, payload: dict[str, Any]) -> None:
    """Ignore cancellation and timeouts: only a kill stops it."""
    time.sleep(float(payload.get("seconds", 60)))


@handler("j.boom")
def j_boom(ctx: Any, payload: dict[str, Any]) -> None:
    raise ValueError(payload.get("message", "boom"))


@handler("j.retry")
def j_retry(ctx: Any, payload: dict[str, Any]) -> dict[str, Any]:
    if ctx.attempt < int(payload.get("until", 2)):
        raise Retry("not yet", delay=0)
    return {"attempt": ctx.attempt}


@handler("j.crash")
def j_crash(ctx: Any, payload: dict[str, Any]) -> None:
    os._exit(3)


@handler("j.not_json")
def j_not_json(ctx: Any, payload: dict[str, Any]) -> Any:
    return dt.datetime.now()


class NoRetry(Exception):
    no_retry = True


@handler("j.no_retry")
def j_no_retry(ctx: Any, payload: dict[str, Any]) -> None:
    raise NoRetry("never again")


@handler("j.attempt")
def j_attempt(ctx: Any, payload: dict[str, Any]) -> dict[str, Any]:
    return {"attempt": ctx.attempt, "pid": os.getpid()}


class JobsPlugin:
    @hookimpl
    def taskmill_handlers(self) -> list[Any]:
        return [j_echo, j_sleep, j_stubborn, j_boom, j_retry, j_crash, j_not_json, j_no_retry, j_attempt]
