"""Engines and units of work of the SQL storage: one object every store shares.

On PostgreSQL single-statement writes run on an autocommit pool, so each costs one round trip
(psycopg2 would otherwise send BEGIN on its own); a third pool commits without waiting for the
disk (starts of attempts only). SQLite write transactions start with ``BEGIN IMMEDIATE`` so that
concurrent processes queue on the lock instead of failing to upgrade a read lock.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Connection
from sqlalchemy import create_engine
from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import OperationalError

from taskmill.plugin_api import Conflict
from taskmill.plugin_api import StorageUnavailable

__all__ = ["Database", "normalize_url", "short_error"]


def normalize_url(url: str) -> str:
    """``postgresql://`` → ``postgresql+psycopg2://`` (SQLAlchemy 2.1 defaults to psycopg 3)."""
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg2://" + url.split("://", 1)[1]
    return url


def short_error(exc: Exception) -> str:
    """The first line of a driver error."""
    msg = str(getattr(exc, "orig", exc)).strip().splitlines()
    return msg[0] if msg else type(exc).__name__


class Database:
    """The engines of one storage, rebuilt lazily after a fork."""

    def __init__(self, url: str) -> None:
        self.url = normalize_url(url)
        self.sa_url = make_url(self.url)
        self.is_sqlite = self.sa_url.get_backend_name() == "sqlite"
        self._lock = threading.Lock()
        self._engine: Any = None
        self._auto: Any = None
        self._relaxed: Any = None
        self._pid = os.getpid()

    @property
    def engine(self) -> Any:
        """The transactional engine."""
        if self._engine is None or self._pid != os.getpid():
            with self._lock:
                if self._engine is None or self._pid != os.getpid():
                    self._make_engines()
        return self._engine

    @property
    def auto(self) -> Any:
        """An autocommit view of the engine: one round trip per single-statement write."""
        self.engine  # noqa: B018 - builds them all
        return self._auto

    def _make_engines(self) -> None:
        if self.is_sqlite:
            db = self.sa_url.database
            if db and db != ":memory:":
                Path(db).expanduser().resolve().parent.mkdir(parents=True, exist_ok=True)
            engine = create_engine(
                self.sa_url,
                connect_args={"timeout": 60, "check_same_thread": False, "isolation_level": None},
                pool_size=10,
                max_overflow=20,
            )

            @event.listens_for(engine, "connect")
            def _pragmas(dbapi_conn: Any, _record: Any) -> None:
                cur = dbapi_conn.cursor()
                cur.execute("PRAGMA journal_mode=WAL")
                cur.execute("PRAGMA synchronous=NORMAL")
                cur.execute("PRAGMA busy_timeout=60000")
                cur.close()

            @event.listens_for(engine, "begin")
            def _begin(conn: Any) -> None:
                if conn.get_execution_options().get("isolation_level") != "AUTOCOMMIT":
                    conn.exec_driver_sql("BEGIN IMMEDIATE")

            self._engine = engine
            self._auto = engine.execution_options(isolation_level="AUTOCOMMIT")
            self._relaxed = self._auto
        else:
            self._engine = self._pg_engine()
            # a second pool whose connections stay in autocommit: switching the isolation level
            # per checkout would cost two extra round trips
            self._auto = self._pg_engine(isolation_level="AUTOCOMMIT")
            # Starting an attempt need not wait for the disk: if the database crashed before
            # flushing it, the task would be queued again and run again, which at-least-once
            # execution allows. Outcomes (results) and submissions stay synchronous.
            self._relaxed = self._pg_engine(
                isolation_level="AUTOCOMMIT", options="-c synchronous_commit=off", pool_size=5
            )
        self._pid = os.getpid()

    def _pg_engine(self, *, options: str = "", pool_size: int = 10, **kw: Any) -> Any:
        connect_args: dict[str, Any] = {"connect_timeout": 5, "application_name": "taskmill"}
        if options:
            connect_args["options"] = options
        return create_engine(
            self.sa_url,
            pool_size=pool_size,
            max_overflow=2 * pool_size,
            pool_recycle=1800,
            connect_args=connect_args,
            **kw,
        )

    def engines(self) -> list[Any]:
        """The distinct engines built so far (for statement counting and disposal)."""
        seen: dict[int, Any] = {}
        for e in (self._engine, self._auto, self._relaxed):
            if e is not None:
                seen.setdefault(id(e.pool), e)  # an autocommit view shares its engine's pool
        return list(seen.values())

    def after_fork(self) -> None:
        """Forget connections inherited from the parent (without closing them under it)."""
        for engine in self.engines():
            engine.dispose(close=False)
        self._engine = self._auto = self._relaxed = None

    def close(self) -> None:
        """Close every pooled connection. Idempotent."""
        for engine in self.engines():
            engine.dispose()
        self._engine = self._auto = self._relaxed = None

    @contextmanager
    def tx(self) -> Iterator[Connection]:
        """One transaction; connection failures become StorageUnavailable."""
        try:
            with self.engine.begin() as conn:
                yield conn
        except Conflict:
            raise
        except OperationalError as exc:
            raise StorageUnavailable(f"database unavailable: {short_error(exc)}") from None
        except DBAPIError as exc:
            if exc.connection_invalidated:
                raise StorageUnavailable(f"database unavailable: {short_error(exc)}") from None
            raise

    @contextmanager
    def one(self, relaxed: bool = False) -> Iterator[Connection]:
        """A single statement in autocommit mode (reads, and writes that are one statement);
        ``relaxed`` commits without waiting for the disk (starts of attempts only)."""
        self.engine  # noqa: B018 - builds the engines
        try:
            with (self._relaxed if relaxed else self._auto).connect() as conn:
                yield conn
        except OperationalError as exc:
            raise StorageUnavailable(f"database unavailable: {short_error(exc)}") from None
        except DBAPIError as exc:
            if exc.connection_invalidated:
                raise StorageUnavailable(f"database unavailable: {short_error(exc)}") from None
            raise
