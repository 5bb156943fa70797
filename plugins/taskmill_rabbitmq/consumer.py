"""The consumer: core's transport contract on a pika BlockingConnection in its own thread.

The connection is used only by the consumer thread, which loops on ``process_data_events``
(so heartbeats go out however long tasks run: tasks run in core's pool, never in a pika
callback). Deliveries land in a local buffer; :meth:`RabbitConsumer.receive` takes them from
there and :meth:`fileno` (a pipe) is readable while it holds any. ``ack`` and ``requeue`` come
from core's loop thread and reach the connection through ``add_callback_threadsafe``.

When a delivery is acked: core acks it as soon as the task's start (queued → running) is
committed, or when it drops a delivery whose task was not started (a duplicate, a cancelled or
paused task). A task is therefore unacked only for the milliseconds between delivery and start,
and RabbitMQ's ``consumer_timeout`` (30 min, node-wide on 3.10) never concerns running tasks,
however long they run. A worker killed mid-task loses nothing: its running task is recovered
through the database lease by the manager, which publishes it again.

Because acked deliveries no longer count against ``basic_qos``, the prefetch window only bounds
deliveries not yet started: it starts at the most core's loop may ask for at once (its capacity
with ``--concurrency`` and ``--prefetch``) and follows twice what core actually asks for (re-set at
most every two seconds), so a worker of long tasks holds about two deliveries per free slot. To keep a
busy worker from sitting on tasks another worker could run (or past ``consumer_timeout``),
deliveries that core has not asked for within ``hold`` seconds are handed back (``basic_nack``
with requeue) and consuming pauses (``basic_cancel``) until core asks again.

Every failure (connection refused or lost, a channel closed by the broker) ends the current
connection: deliveries still buffered are dropped (RabbitMQ redelivers them), and the thread
reconnects with back-off. Acks carry the connection's generation, so an ack for a delivery of an
older connection is ignored instead of acking a different message.
"""

from __future__ import annotations

import collections
import functools
import logging
import os
import random
import threading
import time
from collections.abc import Callable
from collections.abc import Sequence
from typing import Any

import pika
import pika.exceptions

from taskmill.plugin_api import BrokerUnavailable
from taskmill.plugin_api import Delivery
from taskmill_rabbitmq import topology

__all__ = ["RabbitConsumer"]

logger = logging.getLogger("taskmill.rabbitmq.consumer")

_POLL = 0.2
"""Longest time (s) the consumer thread waits in ``process_data_events``."""

_QOS_EVERY = 2.0
"""Seconds between two adjustments of the prefetch window to what core asks for."""


class RabbitConsumer:
    """Deliveries of some taskmill queues to one worker process."""

    def __init__(
        self,
        params_factory: Callable[[str], pika.ConnectionParameters],
        queues: Sequence[str],
        *,
        prefetch: int,
        hold: float = 2.0,
        redacted_url: str = "",
        scrub: Callable[[str], str] = lambda s: s,
        dead_letter_max: int = 100_000,
        name: str = "taskmill worker",
    ) -> None:
        self._params_factory = params_factory
        self.queues = list(queues)
        self.prefetch = max(1, int(prefetch))
        self.hold = hold
        self._redacted = redacted_url
        self._scrub = scrub
        self._dead_letter_max = dead_letter_max
        self._name = name
        self._cond = threading.Condition()
        self._buffer: collections.deque[tuple[float, Delivery]] = collections.deque()
        self._rfd, self._wfd = os.pipe()
        os.set_blocking(self._rfd, False)
        os.set_blocking(self._wfd, False)
        self._signalled = False
        self._stop = threading.Event()
        self._up = False
        self._error = "connecting"
        self._down_since = time.monotonic()
        self._last_demand = time.monotonic()
        self._resume_wanted = False
        self._limit_seen = 0
        self.qos = self.prefetch
        #: counters for tests and logs
        self.generation = 0
        self.connects = 0
        self.handed_back = 0
        # owned by the consumer thread:
        self._conn: pika.BlockingConnection | None = None
        self._channel: Any = None
        self._tags: list[str] = []
        self._unacked: set[int] = set()
        self._suspended = False
        self._thread = threading.Thread(target=self._run, name="taskmill-amqp-consumer", daemon=True)
        self._thread.start()

    # -- core's side (one thread) -------------------------------------------------------------------
    def receive(self, limit: int, timeout: float) -> list[Delivery]:
        """Up to ``limit`` deliveries, waiting at most ``timeout`` s.

        Raises:
            BrokerUnavailable: not connected and nothing buffered.
        """
        if limit <= 0:
            return []
        self._last_demand = time.monotonic()
        if limit > self._limit_seen:
            self._limit_seen = limit
        if self._suspended and not self._resume_wanted:
            self._resume_wanted = True
            self._call(self._resume)
        out: list[Delivery] = []
        with self._cond:
            if not self._buffer and timeout > 0 and self._up:
                self._cond.wait_for(lambda: self._buffer or not self._up or self._stop.is_set(), timeout)
            while self._buffer and len(out) < limit:
                out.append(self._buffer.popleft()[1])
            if not self._buffer:
                self._drain_signal()
            up, error = self._up, self._error
        if not out and not up:
            raise BrokerUnavailable(f"rabbitmq unavailable at {self._redacted}: {error}")
        return out

    def ack(self, deliveries: Sequence[Delivery]) -> None:
        """Ack these deliveries (from any thread; deliveries of an older connection are ignored)."""
        self._settle(deliveries, requeue=None)

    def requeue(self, deliveries: Sequence[Delivery]) -> None:
        """Give these deliveries back to RabbitMQ (``basic_nack`` with requeue)."""
        self._settle(deliveries, requeue=True)

    def fileno(self) -> int | None:
        return self._rfd

    @property
    def connected(self) -> bool:
        return self._up

    def wait_connected(self, timeout: float) -> bool:
        """Wait until the consumer is consuming (tests, start-up)."""
        with self._cond:
            return self._cond.wait_for(lambda: self._up, timeout)

    def close(self) -> None:
        """Stop the thread and close the connection; unacked deliveries go back to RabbitMQ."""
        if self._stop.is_set():
            return
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        self._call(lambda: None)  # wake process_data_events
        self._thread.join(timeout=5)
        for fd in (self._rfd, self._wfd):
            try:
                os.close(fd)
            except OSError:
                pass

    def _settle(self, deliveries: Sequence[Delivery], requeue: bool | None) -> None:
        by_gen: dict[int, list[int]] = {}
        for d in deliveries:
            gen, tag = d.token
            by_gen.setdefault(gen, []).append(tag)
        tags = by_gen.get(self.generation)
        if tags:
            self._call(functools.partial(self._do_settle, self.generation, tags, requeue))

    def _call(self, fn: Callable[[], None]) -> None:
        conn = self._conn
        if conn is None:
            return
        try:
            conn.add_callback_threadsafe(fn)
        except Exception:  # noqa: BLE001 - a closed connection: RabbitMQ redelivers what it held
            pass

    def _drain_signal(self) -> None:
        if self._signalled:
            try:
                while os.read(self._rfd, 4096):
                    pass
            except (BlockingIOError, OSError):
                pass
            self._signalled = False

    # -- the consumer thread --------------------------------------------------------------------------
    def _run(self) -> None:
        backoff = 0.1
        while not self._stop.is_set():
            try:
                self._connect()
                backoff = 0.1
                self._consume_loop()
            except (pika.exceptions.AMQPError, OSError, BrokerUnavailable) as exc:
                text = self._scrub(str(exc) or type(exc).__name__)
                if not self._stop.is_set():
                    logger.warning("rabbitmq consumer: %s; reconnecting in %.1fs", text, backoff)
                self._went_down(text)
            except Exception as exc:  # noqa: BLE001 - keep consuming whatever pika raises
                logger.exception("rabbitmq consumer failed; reconnecting")
                self._went_down(type(exc).__name__)
            else:
                self._went_down("closed")
            finally:
                self._close_connection()
            if self._stop.wait(backoff * random.uniform(0.5, 1.0)):
                break
            backoff = min(5.0, backoff * 2)

    def _connect(self) -> None:
        conn = pika.BlockingConnection(self._params_factory(self._name))
        self._conn = conn
        ch = conn.channel()
        self.qos = self.prefetch
        ch.basic_qos(prefetch_count=self.qos)
        ch.exchange_declare(topology.DEAD_LETTER_EXCHANGE, exchange_type="fanout", durable=True)
        ch.queue_declare(
            topology.DEAD_LETTER_QUEUE,
            durable=True,
            arguments=topology.dead_letter_arguments(self._dead_letter_max),
        )
        ch.queue_bind(topology.DEAD_LETTER_QUEUE, topology.DEAD_LETTER_EXCHANGE)
        for q in self.queues:
            ch.queue_declare(topology.amqp_queue(q), durable=True, arguments=topology.queue_arguments())
        self._channel = ch
        self._unacked = set()
        self.generation += 1
        self.connects += 1
        self._suspended = False
        self._resume_wanted = False
        self._start_consuming()
        with self._cond:
            self._up = True
            self._error = ""
            self._cond.notify_all()
        if self.connects > 1:
            logger.info("rabbitmq consumer connected again to %s", self._redacted)

    def _start_consuming(self) -> None:
        ch = self._channel
        self._tags = [
            ch.basic_consume(topology.amqp_queue(q), functools.partial(self._on_message, q))
            for q in self.queues
        ]

    def _consume_loop(self) -> None:
        conn, ch = self._conn, self._channel
        assert conn is not None
        next_qos = time.monotonic() + _QOS_EVERY
        while not self._stop.is_set():
            conn.process_data_events(time_limit=_POLL)
            if not ch.is_open:
                # the broker closed the channel (consumer_timeout, a deleted queue, …);
                # process_data_events does not raise for it
                raise BrokerUnavailable("the broker closed the consumer channel")
            self._hand_back_unwanted()
            if self._suspended and time.monotonic() - self._last_demand < self.hold:
                self._resume()  # core asks again (in case its wake-up callback was lost)
            if time.monotonic() >= next_qos:
                self._adapt_qos()
                next_qos = time.monotonic() + _QOS_EVERY
        if ch.is_open:
            for tag in self._tags:
                ch.basic_cancel(tag)  # pending, undispatched deliveries are nacked by pika
            self._requeue_buffer()

    def _adapt_qos(self) -> None:
        """Set the prefetch window to twice the most core asked for at once lately (within bounds)."""
        seen, self._limit_seen = self._limit_seen, 0
        if not seen:
            return  # core did not ask: keep the window (hand-back covers a busy worker)
        target = max(1, min(self.prefetch, 2 * seen))  # headroom: the next ask may be larger
        if target != self.qos:
            self._channel.basic_qos(prefetch_count=target)
            self.qos = target

    def _on_message(self, queue: str, ch: Any, method: Any, properties: Any, body: bytes) -> None:
        decoded = topology.decode_task(properties, body)
        if decoded is None:
            logger.warning(
                "rejecting a message on %s that is not a taskmill task (to %s)",
                topology.amqp_queue(queue),
                topology.DEAD_LETTER_EXCHANGE,
            )
            ch.basic_reject(method.delivery_tag, requeue=False)
            return
        task_id, task_queue = decoded
        self._unacked.add(method.delivery_tag)
        delivery = Delivery(task_id=task_id, queue=task_queue, token=(self.generation, method.delivery_tag))
        with self._cond:
            self._buffer.append((time.monotonic(), delivery))
            if not self._signalled:
                self._signalled = True
                try:
                    os.write(self._wfd, b"\0")
                except (BlockingIOError, OSError):
                    pass
            self._cond.notify_all()

    def _do_settle(self, generation: int, tags: list[int], requeue: bool | None) -> None:
        ch = self._channel
        if generation != self.generation or ch is None or not ch.is_open:
            return
        tags = sorted(t for t in tags if t in self._unacked)
        if not tags:
            return
        top, batch = tags[-1], set(tags)
        if len(tags) > 1 and all(t in batch for t in self._unacked if t <= top):
            # every unsettled tag up to the highest is in this batch: one frame for all
            self._settle_frame(ch, top, True, requeue)
        else:
            for tag in tags:
                self._settle_frame(ch, tag, False, requeue)
        self._unacked.difference_update(tags)

    @staticmethod
    def _settle_frame(ch: Any, tag: int, multiple: bool, requeue: bool | None) -> None:
        if requeue is None:
            ch.basic_ack(tag, multiple=multiple)
        else:
            ch.basic_nack(tag, multiple=multiple, requeue=requeue)

    def _hand_back_unwanted(self) -> None:
        """Deliveries core has not asked for within ``hold`` go back; consuming pauses."""
        now = time.monotonic()
        with self._cond:
            if (
                not self._buffer
                or now - self._buffer[0][0] < self.hold
                or now - self._last_demand < self.hold
            ):
                return
        if not self._suspended:
            for tag in self._tags:
                self._channel.basic_cancel(tag)
            self._tags = []
            self._suspended = True
        n = self._requeue_buffer()
        self.handed_back += n
        logger.debug("handed back %s delivery(ies) not asked for within %ss", n, self.hold)

    def _requeue_buffer(self) -> int:
        with self._cond:
            held = [d for _, d in self._buffer]
            self._buffer.clear()
            self._drain_signal()
        if held:
            self._do_settle(self.generation, [d.token[1] for d in held], True)
        return len(held)

    def _resume(self) -> None:
        self._resume_wanted = False
        ch = self._channel
        if self._suspended and ch is not None and ch.is_open:
            self._start_consuming()
            self._suspended = False

    def _went_down(self, error: str) -> None:
        with self._cond:
            if self._up:
                self._down_since = time.monotonic()
            self._up = False
            self._error = error
            self._buffer.clear()  # RabbitMQ redelivers them: their tags died with the channel
            self._drain_signal()
            self._cond.notify_all()

    def _close_connection(self) -> None:
        conn, self._conn, self._channel = self._conn, None, None
        if conn is not None and conn.is_open:
            try:
                conn.close()
            except Exception:  # noqa: BLE001 - it is going away either way
                pass
