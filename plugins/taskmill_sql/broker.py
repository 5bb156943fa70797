"""The SQL broker: the database is the queue.

Its consumer claims tasks with one ``UPDATE … WHERE seq IN (SELECT … FOR UPDATE SKIP LOCKED)
RETURNING`` (on PostgreSQL) through ``lifecycle.claim``, so each task goes to exactly one worker and
its deliveries arrive already running (:attr:`Delivery.task` is set; core's loop does not start
them again). On PostgreSQL, a trigger sends ``NOTIFY`` whenever a committed write queues tasks;
the consumer LISTENs on the channel and its connection is the wake-up descriptor of core's loop
(a few ms from commit to start instead of a poll interval). On SQLite the write lock serialises
claims, which is correct on one machine; idle workers poll with a short, growing sleep (at most
0.1 s). Nothing is lost between database and broker, so ack and requeue have nothing to do: a
claimed task that is not run is handed back by the loop through ``lifecycle.finish(requeue)``.
"""

from __future__ import annotations

import logging
import select
import time
from collections.abc import Sequence
from typing import Any

from taskmill.plugin_api import Broker
from taskmill.plugin_api import BrokerUnavailable
from taskmill.plugin_api import Delivery
from taskmill.plugin_api import StorageUnavailable
from taskmill.plugin_api import Task

__all__ = ["SqlBroker", "SqlConsumer", "CHANNEL"]

logger = logging.getLogger("taskmill.sql.broker")

CHANNEL = "taskmill_tasks"


class SqlBroker(Broker):
    """Delivers tasks straight from the tasks table."""

    schemes = ("sqlite", "postgresql", "postgres")
    durable = True

    def __init__(self, url: str, settings: Any, runtime: Any) -> None:
        super().__init__(url, settings, runtime)
        self.is_postgres = not url.startswith("sqlite")

    @property
    def storage(self) -> Any:
        return self.runtime.storage

    def publish(self, tasks: Sequence[Task]) -> None:
        """Nothing to do: the tasks are in the table, and on PostgreSQL a trigger (migration
        0002) has already sent ``NOTIFY taskmill_tasks`` within the committing transaction."""

    def check(self) -> None:
        try:
            self.storage.check()
        except StorageUnavailable as exc:
            raise BrokerUnavailable(str(exc)) from None

    def consumer(self, queues: Sequence[str], worker_id: str, prefetch: int) -> SqlConsumer:
        """A claiming consumer (LISTENing for wake-ups on PostgreSQL)."""
        return SqlConsumer(self, queues, worker_id)


class SqlConsumer:
    """Claims for a worker; on PostgreSQL also LISTENs for wake-ups."""

    def __init__(self, broker: SqlBroker, queues: Sequence[str], worker_id: str) -> None:
        self.broker = broker
        self.queues = list(queues)
        self.worker_id = worker_id
        self.lifecycle = broker.runtime.lifecycle
        self._raw: Any = None
        self._listen_conn: Any = None
        if broker.is_postgres:
            self._listen()

    def _listen(self) -> None:
        try:
            raw = self.broker.storage.engine.raw_connection()
            dbapi = raw.driver_connection
            dbapi.autocommit = True
            with dbapi.cursor() as cur:
                cur.execute(f"LISTEN {CHANNEL}")
            self._raw = raw
            self._listen_conn = dbapi
        except Exception as exc:  # noqa: BLE001 - fall back to polling until it works
            logger.warning("cannot LISTEN for new tasks (polling instead): %s", exc)
            self._listen_conn = None

    def receive(self, limit: int, timeout: float) -> list[Delivery]:
        """Claim up to ``limit`` tasks; if none and ``timeout`` > 0, wait for a NOTIFY (or poll)
        and claim once more. Deliveries carry the claimed (running) task.

        Raises:
            StorageUnavailable: the database cannot be reached.
        """
        self._drain()
        tasks = self._claim(limit)
        if not tasks and timeout > 0:
            fd = self.fileno()
            if fd is not None:
                select.select([fd], [], [], timeout)
                self._drain()
            else:
                time.sleep(timeout)
            tasks = self._claim(limit)
        return [Delivery(task_id=t.id, queue=t.queue, task=t) for t in tasks]

    def _claim(self, limit: int) -> list[Task]:
        if self.broker.is_postgres and self._listen_conn is None:
            self._listen()
        return self.lifecycle.claim(self.queues, limit, self.worker_id)

    def ack(self, deliveries: Sequence[Delivery]) -> None:
        """Nothing to forget: the claim already committed the start."""

    def requeue(self, deliveries: Sequence[Delivery]) -> None:
        """Nothing to give back: a claimed task is handed back through the lifecycle."""

    def fileno(self) -> int | None:
        if self._listen_conn is None:
            return None
        try:
            return self._listen_conn.fileno()
        except Exception:  # noqa: BLE001
            self._listen_conn = None
            return None

    def _drain(self) -> None:
        """Consume the notifications that arrived (they only mean "claim again")."""
        conn = self._listen_conn
        if conn is None:
            return
        try:
            conn.poll()  # reads every notification that has arrived, without blocking
            conn.notifies.clear()
        except Exception as exc:  # noqa: BLE001 - reconnect on next claim
            logger.warning("LISTEN connection lost: %s", exc)
            self.close()

    def close(self) -> None:
        if self._listen_conn is not None:
            try:
                self._raw.invalidate()
            except Exception:  # noqa: BLE001
                pass
            self._listen_conn = None
