"""The publisher: one AMQP connection per process, driven by its own I/O thread.

pika's connections are not thread-safe, and a BlockingConnection in confirm mode waits for each
message's confirm (about 1,300 persistent messages/s here). So every publishing thread of a
process hands its batch to one I/O thread that runs a :class:`pika.SelectConnection`: the thread
publishes the batch with ``mandatory`` set, counts the broker's confirms asynchronously (one
``Basic.Ack`` with ``multiple`` often covers a whole batch) and wakes the caller when all of its
messages are confirmed. A batch therefore costs one round trip, and batches of concurrent callers
overlap. The I/O loop also keeps the idle connection's heartbeats, so it does not die quietly.

Failures are :class:`~taskmill.errors.BrokerUnavailable`: the connection is down (the I/O thread
reconnects with back-off by itself), a broker ``Basic.Nack``, no confirm within the timeout, or a
message returned as unroutable (:class:`Unroutable`; the queue is declared again and the batch
retried once). :meth:`Publisher.publish` retries a failed batch a few times with back-off while
its time allows, and fails fast while RabbitMQ is known to be down, so the API answers at once
(the task is committed; the manager re-publishes it).

A child process after ``fork`` gets a publisher of its own on first use; the parent's
connection is never touched from the child.
"""

from __future__ import annotations

import collections
import functools
import logging
import os
import random
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import field
from typing import Any

import pika
from pika.adapters.select_connection import IOLoop
from pika.adapters.select_connection import SelectConnection

from taskmill.plugin_api import BrokerUnavailable
from taskmill_rabbitmq import topology

__all__ = ["Publisher", "Message", "Unroutable"]

logger = logging.getLogger("taskmill.rabbitmq.publisher")

_NO_ROUTE = 312


class Unroutable(BrokerUnavailable):
    """RabbitMQ returned a mandatory message: no queue took it."""


@dataclass(frozen=True)
class Message:
    """One message to publish: through ``exchange`` ("" is the default exchange) to ``routing_key``."""

    routing_key: str
    body: bytes
    properties: pika.BasicProperties
    exchange: str = ""
    declare: str | None = None
    """A task queue to declare before the first publish to it on a connection."""


@dataclass
class _Batch:
    messages: Sequence[Message]
    done: threading.Event = field(default_factory=threading.Event)
    pending: int = 0
    nacked: bool = False
    error: BaseException | None = None
    ids: set[str] = field(default_factory=set)

    def finish(self, error: BaseException | None = None) -> None:
        if not self.done.is_set():
            self.error = error
            self.done.set()


class Publisher:
    """Thread-safe, fork-aware publisher with asynchronous publisher confirms."""

    def __init__(
        self,
        params_factory: Any,
        *,
        redacted_url: str,
        scrub: Any,
        timeout: float = 5.0,
        dead_letter_max: int = 100_000,
    ) -> None:
        """
        Args:
            params_factory: a function of a connection name returning pika parameters.
            redacted_url: the URL without its password, for messages.
            scrub: a function removing the password from a text (pika's error messages).
            timeout: longest time a publish may take, retries included.
            dead_letter_max: ``x-max-length`` of the dead-letter queue.
        """
        self._params_factory = params_factory
        self._redacted = redacted_url
        self._scrub = scrub
        self.timeout = timeout
        self._dead_letter_max = dead_letter_max
        self._reset()

    def _reset(self) -> None:
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._thread: threading.Thread | None = None
        self._ioloop: IOLoop | None = None
        self._phase = "new"  # our own connection phase: new → connecting → ready | down → … ; closed
        self._attempt_started = 0.0
        self._error = ""
        self._closing = False
        self.reconnects = 0
        # owned by the I/O thread:
        self._conn: SelectConnection | None = None
        self._channel: Any = None
        self._declared: set[str] = set()
        self._outstanding: collections.OrderedDict[int, _Batch] = collections.OrderedDict()
        self._timer: Any = None
        self._batches: dict[int, _Batch] = {}
        self._returned: set[str] = set()
        self._tag = 0
        self._backoff = 0.1

    # -- the caller's side --------------------------------------------------------------------------
    def publish(self, messages: Sequence[Message]) -> None:
        """Publish and wait until RabbitMQ confirmed every message.

        Raises:
            BrokerUnavailable: RabbitMQ is down, refused a message, returned one as unroutable
                twice, or did not confirm within the timeout.
            ValueError: a message is not JSON (``content_type`` other than application/json).
        """
        if not messages:
            return
        if any(m.properties.content_type != topology.CONTENT_TYPE for m in messages):
            raise ValueError("the publisher sends JSON message bodies only (content type application/json)")
        deadline = time.monotonic() + self.timeout
        attempt = 0
        while True:
            self._wait_ready(deadline)
            batch = _Batch(messages)
            loop = self._ioloop
            assert loop is not None
            loop.add_callback_threadsafe(functools.partial(self._send, batch))
            if not batch.done.wait(max(0.0, deadline - time.monotonic())):
                batch.finish(BrokerUnavailable("rabbitmq did not confirm the messages in time"))
                raise batch.error  # type: ignore[misc]
            if batch.error is None:
                return
            attempt += 1
            delay = min(1.0, 0.05 * 2**attempt) * random.uniform(0.5, 1.0)
            if attempt >= 4 or time.monotonic() + delay >= deadline:
                raise batch.error
            logger.info("publish failed (%s); retrying in %.2fs", batch.error, delay)
            time.sleep(delay)

    def check(self) -> None:
        """Raise BrokerUnavailable unless the publisher's connection is up (connecting if needed)."""
        self._wait_ready(time.monotonic() + min(self.timeout, 3.0))

    @property
    def state(self) -> str:
        return self._phase

    def _wait_ready(self, deadline: float) -> None:
        if self._pid != os.getpid():
            self._reset()  # a forked child: never touch the parent's connection
        with self._cond:
            if self._phase == "closed":
                raise BrokerUnavailable("the rabbitmq publisher is closed")
            if self._thread is None:
                self._start_locked()
            if self._phase == "down" and time.monotonic() - self._attempt_started > self._backoff:
                self._kick_locked()  # back-off elapsed: try now rather than on the timer
            while self._phase in ("new", "connecting"):
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            if self._phase != "ready":
                raise BrokerUnavailable(
                    f"rabbitmq unavailable at {self._redacted}: {self._error or self._phase}"
                )

    def _start_locked(self) -> None:
        self._ioloop = IOLoop()
        self._phase = "connecting"
        self._attempt_started = time.monotonic()
        self._ioloop.add_callback_threadsafe(self._connect)
        self._thread = threading.Thread(target=self._run, name="taskmill-amqp-publisher", daemon=True)
        self._thread.start()

    def _kick_locked(self) -> None:
        self._phase = "connecting"
        self._attempt_started = time.monotonic()
        assert self._ioloop is not None
        self._ioloop.add_callback_threadsafe(self._connect)

    def close(self) -> None:
        """Close the connection and stop the I/O thread (waits up to 2 s). Idempotent."""
        if self._pid != os.getpid():
            self._reset()
        with self._cond:
            thread, loop = self._thread, self._ioloop
            self._phase = "closed"
            self._closing = True
            self._cond.notify_all()
        if thread is None or loop is None:
            return
        loop.add_callback_threadsafe(self._shutdown)
        thread.join(timeout=2)

    # -- the I/O thread -------------------------------------------------------------------------------
    def _run(self) -> None:
        assert self._ioloop is not None
        try:
            self._ioloop.start()
        except Exception:  # noqa: BLE001 - the loop must not die silently
            logger.exception("rabbitmq publisher I/O loop failed")
            self._set_state("down", "I/O loop failed")
        finally:
            self._ioloop.close()  # its wake-up socket pair

    def _set_state(self, state: str, error: str = "") -> None:
        with self._cond:
            if self._phase != "closed":
                self._phase = state
            if error:
                self._error = error
            self._cond.notify_all()

    def _connect(self) -> None:
        if self._timer is not None:
            assert self._ioloop is not None
            self._ioloop.remove_timeout(self._timer)
            self._timer = None
        if self._closing or self._conn is not None:
            return
        with self._cond:
            if self._phase != "closed":
                self._phase = "connecting"
            self._attempt_started = time.monotonic()
        params = self._params_factory(f"taskmill publisher {os.getpid()}")
        self._conn = SelectConnection(
            params,
            on_open_callback=self._on_open,
            on_open_error_callback=self._on_open_error,
            on_close_callback=self._on_closed,
            custom_ioloop=self._ioloop,
        )

    def _on_open(self, conn: SelectConnection) -> None:
        conn.channel(on_open_callback=self._on_channel)

    def _on_channel(self, channel: Any) -> None:
        self._channel = channel
        channel.add_on_close_callback(self._on_channel_closed)
        channel.add_on_return_callback(self._on_return)
        channel.confirm_delivery(self._on_confirm, callback=lambda _f: self._declare_dead_letters())

    def _declare_dead_letters(self) -> None:
        ch = self._channel
        ch.exchange_declare(
            topology.DEAD_LETTER_EXCHANGE,
            exchange_type="fanout",
            durable=True,
            callback=lambda _f: ch.queue_declare(
                topology.DEAD_LETTER_QUEUE,
                durable=True,
                arguments=topology.dead_letter_arguments(self._dead_letter_max),
                callback=lambda _f: ch.queue_bind(
                    topology.DEAD_LETTER_QUEUE,
                    topology.DEAD_LETTER_EXCHANGE,
                    callback=lambda _f: self._on_ready(),
                ),
            ),
        )

    def _on_ready(self) -> None:
        if self.reconnects or self._error:
            logger.info("rabbitmq publisher connected to %s", self._redacted)
        self._backoff = 0.1
        self._error = ""
        self._set_state("ready")

    def _on_open_error(self, _conn: Any, exc: BaseException) -> None:
        self._conn = None
        self._went_down(f"cannot connect: {self._scrub(str(exc) or type(exc).__name__)}")

    def _on_closed(self, _conn: Any, reason: BaseException) -> None:
        self._conn = None
        self._channel = None
        if self._closing:
            self._fail_all(BrokerUnavailable("the rabbitmq publisher is closed"))
            assert self._ioloop is not None
            self._ioloop.stop()
            return
        self._went_down(f"connection lost: {self._scrub(str(reason) or type(reason).__name__)}")

    def _on_channel_closed(self, _channel: Any, reason: BaseException) -> None:
        self._channel = None
        if self._closing:
            return
        logger.warning("rabbitmq publisher channel closed: %s", self._scrub(str(reason)))
        if self._conn is not None and self._conn.is_open:
            self._conn.close()  # start afresh; _on_closed reconnects

    def _went_down(self, error: str) -> None:
        self._declared.clear()
        self._fail_all(BrokerUnavailable(f"rabbitmq unavailable at {self._redacted}: {error}"))
        delay = self._backoff * random.uniform(0.5, 1.0)
        self._backoff = min(5.0, self._backoff * 2)
        self.reconnects += 1
        logger.warning("rabbitmq publisher: %s; reconnecting in %.1fs", error, delay)
        self._set_state("down", error)
        assert self._ioloop is not None
        if self._timer is not None:
            self._ioloop.remove_timeout(self._timer)
        self._timer = self._ioloop.call_later(delay, self._connect)

    def _fail_all(self, error: BaseException) -> None:
        batches = {id(b): b for b in self._outstanding.values()}
        batches.update(self._batches)
        self._outstanding.clear()
        self._batches.clear()
        self._returned.clear()
        self._tag = 0
        for batch in batches.values():
            batch.finish(error)

    def _shutdown(self) -> None:
        if self._conn is not None and not (self._conn.is_closing or self._conn.is_closed):
            self._conn.close()
        else:
            self._fail_all(BrokerUnavailable("the rabbitmq publisher is closed"))
            assert self._ioloop is not None
            self._ioloop.stop()

    def _send(self, batch: _Batch) -> None:
        if batch.done.is_set():
            return  # its caller gave up
        ch = self._channel
        if ch is None or not ch.is_open or self._phase != "ready":
            batch.finish(BrokerUnavailable(f"rabbitmq unavailable at {self._redacted}: {self._error}"))
            return
        self._batches[id(batch)] = batch
        missing = sorted({m.declare for m in batch.messages if m.declare and m.declare not in self._declared})
        if missing:
            left = {"n": len(missing)}

            def declared(name: str, _frame: Any) -> None:
                self._declared.add(name)
                left["n"] -= 1
                if left["n"] == 0:
                    self._batches.pop(id(batch), None)
                    self._send(batch)

            for name in missing:
                ch.queue_declare(
                    name,
                    durable=True,
                    arguments=topology.queue_arguments(),
                    callback=functools.partial(declared, name),
                )
            return
        self._batches.pop(id(batch), None)
        for m in batch.messages:
            ch.basic_publish(m.exchange, m.routing_key, m.body, m.properties, mandatory=True)
            self._tag += 1
            self._outstanding[self._tag] = batch
            batch.pending += 1
            if m.properties.message_id:
                batch.ids.add(m.properties.message_id)

    def _on_return(self, _channel: Any, method: Any, properties: Any, _body: bytes) -> None:
        if properties.message_id:
            self._returned.add(properties.message_id)
        if method.reply_code == _NO_ROUTE:
            self._declared.discard(method.routing_key)
        logger.warning(
            "rabbitmq returned a message for %r: %s %s",
            method.routing_key,
            method.reply_code,
            method.reply_text,
        )

    def _on_confirm(self, frame: Any) -> None:
        method = frame.method
        nack = isinstance(method, pika.spec.Basic.Nack)
        tags: list[int] = []
        if method.multiple:
            for tag in self._outstanding:
                if tag > method.delivery_tag:
                    break
                tags.append(tag)
        elif method.delivery_tag in self._outstanding:
            tags.append(method.delivery_tag)
        for tag in tags:
            batch = self._outstanding.pop(tag)
            batch.pending -= 1
            batch.nacked = batch.nacked or nack
            if batch.pending == 0:
                self._complete(batch)

    def _complete(self, batch: _Batch) -> None:
        returned = batch.ids & self._returned
        self._returned -= batch.ids
        if returned:
            batch.finish(Unroutable(f"rabbitmq routed no queue for {len(returned)} message(s)"))
        elif batch.nacked:
            batch.finish(BrokerUnavailable("rabbitmq refused the messages (nack)"))
        else:
            batch.finish()
