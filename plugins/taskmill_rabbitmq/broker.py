"""The RabbitMQ broker: pika carries task ids, the database stays the source of truth.

- ``publish`` sends one persistent JSON message per task (``{"id", "queue", "priority"}``) to the
  task's classic priority queue, with ``mandatory`` set and publisher confirms counted
  asynchronously (:mod:`taskmill_rabbitmq.publisher`). When RabbitMQ is down it raises
  :class:`~taskmill.errors.BrokerUnavailable`: the lifecycle logs it, the API still answers 201
  (the task is committed and queued in the database) and ``/health`` reports the broker down.
- ``consumer`` hands core's worker loop a :class:`~taskmill_rabbitmq.consumer.RabbitConsumer`;
  core starts each delivered task through the lifecycle and acks the delivery once the start is
  committed (see that module for what it means for ``consumer_timeout``).
- Delayed and retry-waiting tasks wait in the database (``scheduled``); the manager's
  ``release_due`` moves them to queued when due and the lifecycle publishes them then. There is
  no per-message TTL in RabbitMQ (a TTL queue blocks behind its head).
- Tasks that exhaust their retries are failed in the database and, in addition, a JSON record of
  each is published to the dead-letter exchange (``taskmill.dead-letter``) by the process that
  recorded the failure.
- ``republish_lost``: RabbitMQ cannot be asked whether it holds one given message, so the manager's
  stale queued tasks (queued longer than ``republish_after``) are published again, except in
  paused queues, each task at most once per back-off period that doubles per re-publish (so a long
  backlog is not multiplied). A duplicate is harmless: only one delivery can move the task from
  queued to running, and the others are acked and dropped.
- Cancel reaches the running task through the database flag (core's cancel watch), as on every
  broker; pause holds because ``lifecycle.start`` skips paused queues.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Sequence
from typing import Any

import pika
import pika.exceptions

from taskmill import hookimpl
from taskmill.plugin_api import Broker
from taskmill.plugin_api import BrokerUnavailable
from taskmill.plugin_api import Task
from taskmill.plugin_api import WorkerOptions
from taskmill.plugin_api import utcnow
from taskmill_rabbitmq import topology
from taskmill_rabbitmq.consumer import RabbitConsumer
from taskmill_rabbitmq.publisher import Message
from taskmill_rabbitmq.publisher import Publisher

__all__ = ["RabbitBroker"]

logger = logging.getLogger("taskmill.rabbitmq.broker")

if logging.getLogger("pika").level == logging.NOTSET:
    # pika logs every channel and socket step at INFO; its warnings and errors are what matter
    logging.getLogger("pika").setLevel(logging.WARNING)

REPUBLISH_BACKOFF_MAX = 600.0
"""Longest wait (s) between two re-publishes of the same stale task."""


class RabbitBroker(Broker):
    """Publishes task ids to RabbitMQ and gives core's worker a consumer."""

    schemes = ("amqp", "amqps")
    durable = False

    def __init__(self, url: str, settings: Any, runtime: Any) -> None:
        super().__init__(url, settings, runtime)
        self.options = runtime.plugin_settings("rabbitmq")
        self.redacted_url = topology.redact(url)
        self.publisher = Publisher(
            self.parameters,
            redacted_url=self.redacted_url,
            scrub=self.scrub,
            timeout=self.options.publish_timeout,
            dead_letter_max=self.options.dead_letter_max,
        )
        #: task id -> (next time it may be re-published, back-off) in this process
        self._republished: dict[uuid.UUID, tuple[float, float]] = {}
        self._dead_letters = _DeadLetterObserver(self)
        pm = getattr(runtime, "pm", None)
        if pm is not None and not pm.is_registered(self._dead_letters):
            pm.register(self._dead_letters, name=f"taskmill_rabbitmq.dead_letters.{id(self)}")

    # -- connections ---------------------------------------------------------------------------------
    def parameters(self, name: str) -> pika.URLParameters:
        """pika parameters for one connection of this broker (named ``name`` in RabbitMQ)."""
        o = self.options
        return topology.connection_parameters(
            self.url,
            heartbeat=o.heartbeat,
            name=name,
            ca_file=o.ca_file,
            cert_file=o.cert_file,
            key_file=o.key_file,
            verify=o.verify,
        )

    def scrub(self, text: str) -> str:
        """``text`` without this broker's password."""
        return topology.scrub(text, self.url)

    # -- publishing -----------------------------------------------------------------------------------
    def publish(self, tasks: Sequence[Task]) -> None:
        """Publish the tasks' ids and wait for RabbitMQ's confirms (one round trip per batch).

        Raises:
            BrokerUnavailable: RabbitMQ is down or did not take the messages; the tasks stay
                queued in the database and the manager re-publishes them.
        """
        if not tasks:
            return
        self.publisher.publish([task_message(t) for t in tasks])

    def republish_lost(self, tasks: Sequence[Task]) -> int:
        """Publish again the stale queued tasks not in a paused queue, each at most once per
        (doubling) back-off; returns how many were published.

        Raises:
            BrokerUnavailable: RabbitMQ is down.
        """
        if not tasks:
            self._republished.clear()
            return 0
        paused = _paused_queues(self.runtime)
        now = time.monotonic()
        stale = {t.id for t in tasks}
        self._republished = {k: v for k, v in self._republished.items() if k in stale}
        due = [
            t for t in tasks if t.queue not in paused and self._republished.get(t.id, (0.0, 0.0))[0] <= now
        ]
        if not due:
            return 0
        self.publish(due)
        base = max(1.0, float(getattr(self.settings, "republish_after", 30.0)))
        for t in due:
            _, backoff = self._republished.get(t.id, (0.0, base / 2))
            backoff = min(REPUBLISH_BACKOFF_MAX, backoff * 2)
            self._republished[t.id] = (now + backoff, backoff)
        logger.info("re-published %s stale queued task(s) to rabbitmq", len(due))
        return len(due)

    def queue_resumed(self, name: str) -> int:
        """Publish again every queued task of a resumed queue (workers acked and dropped the
        deliveries they received while it was paused). Returns how many.

        Raises:
            BrokerUnavailable: RabbitMQ is down (the manager's re-publish catches up later).
        """
        tasks = self.runtime.storage.tasks.stale_queued(utcnow(), 100_000, queue=name)
        for start in range(0, len(tasks), 1000):
            self.publish(tasks[start : start + 1000])
        now = time.monotonic()
        base = max(1.0, float(getattr(self.settings, "republish_after", 30.0)))
        for t in tasks:
            self._republished[t.id] = (now + base, base)
        if tasks:
            logger.info("queue %s resumed: re-published %s queued task(s)", name, len(tasks))
        return len(tasks)

    def dead_letter(self, tasks: Sequence[Task]) -> None:
        """Publish a record of each task that exhausted its retries to the dead-letter exchange.

        Raises:
            BrokerUnavailable: RabbitMQ did not take them (the database still has them failed).
        """
        if not tasks:
            return
        self.publisher.publish(
            [
                Message(
                    routing_key=t.queue,
                    body=topology.dead_letter_body(t),
                    properties=pika.BasicProperties(
                        content_type=topology.CONTENT_TYPE,
                        delivery_mode=pika.DeliveryMode.Persistent,
                        message_id=f"dead-letter:{t.id}:{t.attempts}",  # the same on a repeat
                        correlation_id=str(t.id),
                        type=topology.DEAD_LETTER_MESSAGE_TYPE,
                        app_id="taskmill",
                    ),
                    exchange=topology.DEAD_LETTER_EXCHANGE,
                )
                for t in tasks
            ]
        )

    # -- workers ----------------------------------------------------------------------------------------
    def run_worker(self, options: WorkerOptions) -> None:
        """Core's worker loop over :meth:`consumer` (the concurrency sizes the prefetch window)."""
        self._concurrency = int(options.concurrency)
        super().run_worker(options)

    def prefetch_window(self, prefetch: int) -> int:
        """The largest ``basic_qos`` window: the most core's loop holds at once, i.e. one per slot
        plus ``prefetch``, or with the adaptive prefetch (-1) sixteen per slot more."""
        n = getattr(self, "_concurrency", 0) or int(self.settings.concurrency)
        return n + (prefetch if prefetch >= 0 else 16 * n)

    def consumer(self, queues: Sequence[str], worker_id: str, prefetch: int) -> RabbitConsumer:
        """A consumer of ``queues`` whose ``basic_qos`` window follows what core asks for, up to
        :meth:`prefetch_window` (tied to ``--concurrency``). Waits up to 3 s for the first
        connection."""
        consumer = RabbitConsumer(
            self.parameters,
            queues,
            prefetch=self.prefetch_window(prefetch),
            hold=self.options.hold,
            redacted_url=self.redacted_url,
            scrub=self.scrub,
            dead_letter_max=self.options.dead_letter_max,
            name=f"taskmill worker {worker_id}",
        )
        consumer.wait_connected(3.0)
        return consumer

    # -- control ------------------------------------------------------------------------------------------
    def check(self) -> None:
        """Raise BrokerUnavailable unless the publisher's connection to RabbitMQ is up."""
        self.publisher.check()

    def backlog(self) -> dict[str, int]:
        """Ready messages per taskmill queue (the queues the database knows), from a passive
        declare on a short-lived connection."""
        names = sorted({q.name for q in _queue_stats(self.runtime)})
        out: dict[str, int] = {}
        try:
            conn = pika.BlockingConnection(self.parameters(f"taskmill backlog {id(self)}"))
        except (pika.exceptions.AMQPError, OSError) as exc:
            raise BrokerUnavailable(
                f"rabbitmq unavailable at {self.redacted_url}: {self.scrub(str(exc))}"
            ) from None
        try:
            ch = conn.channel()
            for name in names:
                try:
                    ok = ch.queue_declare(topology.amqp_queue(name), passive=True)
                    out[name] = int(ok.method.message_count)
                except pika.exceptions.ChannelClosedByBroker:
                    ch = conn.channel()  # 404: not declared yet
                    out[name] = 0
        except (pika.exceptions.AMQPError, OSError) as exc:
            raise BrokerUnavailable(
                f"rabbitmq unavailable at {self.redacted_url}: {self.scrub(str(exc))}"
            ) from None
        finally:
            try:
                conn.close()
            except Exception:  # noqa: BLE001
                pass
        return out

    def close(self) -> None:
        self.publisher.close()


def task_message(task: Task) -> Message:
    """The message of one task: to its queue, persistent, prioritised, JSON."""
    name = topology.amqp_queue(task.queue)
    return Message(
        routing_key=name,
        body=topology.encode_task(task.id, task.queue, task.priority),
        properties=topology.task_properties(task.id, task.priority),
        declare=name,
    )


class _DeadLetterObserver:
    """Registered by the broker on its runtime's plugin manager: sends failed tasks to the
    dead-letter exchange (only runtimes with a RabbitMQ broker pay for the hook)."""

    def __init__(self, broker: RabbitBroker) -> None:
        self.broker = broker

    @hookimpl
    def taskmill_task_event(self, task: Task, event: str) -> None:
        if event not in ("failed", "task.failed"):
            return
        try:
            self.broker.dead_letter([task])
        except BrokerUnavailable as exc:
            logger.warning(
                "task %s failed, but its dead-letter record did not reach rabbitmq: %s", task.id, exc
            )


def _paused_queues(runtime: Any) -> set[str]:
    storage = runtime.storage
    queues = getattr(storage, "queues", None)
    if queues is not None and hasattr(queues, "paused"):
        return set(queues.paused())
    return set(storage.queues.paused())


def _queue_stats(runtime: Any) -> list[Any]:
    storage = runtime.storage
    queues = getattr(storage, "queues", None)
    if queues is not None and hasattr(queues, "stats"):
        return list(queues.stats(None))
    return list(storage.queues.stats(None))
