"""The auth plugin's own store: API keys and the audit log, with its own migrations.

The SQL storage knows nothing of these tables. This module builds a small engine of its own on
the storage's database URL (PostgreSQL or SQLite), keeps its schema with its own Alembic scripts
(``taskmill_auth/migrations``, version table ``taskmill_auth_version``) and attaches its stores to
the process's storage as ``storage.keys`` and ``storage.audit`` (:func:`auth_store`), where core's
audit helper and the storage's flat key methods find them. The schema is brought to the head the
first time a process uses the store (one query when it is already there; several processes
starting at once migrate under an advisory lock on PostgreSQL).
"""

from __future__ import annotations

import datetime as dt
import os
import threading
import weakref
from pathlib import Path
from typing import Any

from sqlalchemy import JSON
from sqlalchemy import BigInteger
from sqlalchemy import Column
from sqlalchemy import DateTime
from sqlalchemy import Index
from sqlalchemy import Integer
from sqlalchemy import MetaData
from sqlalchemy import String
from sqlalchemy import Table
from sqlalchemy import TypeDecorator
from sqlalchemy import create_engine
from sqlalchemy import func
from sqlalchemy import insert
from sqlalchemy import select
from sqlalchemy import text
from sqlalchemy import update
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import OperationalError

from taskmill.plugin_api import ApiKey
from taskmill.plugin_api import Role
from taskmill.plugin_api import StorageUnavailable
from taskmill.plugin_api import utcnow

__all__ = [
    "AuthStore",
    "KeyStore",
    "AuditStore",
    "auth_store",
    "metadata",
    "VERSION_TABLE",
    "HEAD",
]

VERSION_TABLE = "taskmill_auth_version"
HEAD = "a001"
"""The newest revision in ``migrations/versions`` (bump it with every new script)."""
ADVISORY_LOCK = 7263102
MIGRATIONS = Path(__file__).parent / "migrations"


class UTCDateTime(TypeDecorator):
    """Aware UTC datetimes on every database (SQLite stores naive UTC text)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        return value.astimezone(dt.UTC).replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


metadata = MetaData()
_Json = JSON().with_variant(JSONB(), "postgresql")

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("name", String(200)),
    Column("tenant", String(100), nullable=False),
    Column("role", String(16), nullable=False),
    Column("prefix", String(32), nullable=False, unique=True),
    Column("key_hash", String(128), nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("last_used_at", UTCDateTime()),
    Column("revoked_at", UTCDateTime()),
)

audit_log = Table(
    "audit_log",
    metadata,
    Column("seq", BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True),
    Column("at", UTCDateTime(), nullable=False),
    Column("actor", String(200), nullable=False),
    Column("tenant", String(100), nullable=False),
    Column("action", String(64), nullable=False),
    Column("target", String(200)),
    Column("details", _Json),
)
Index("ix_audit_log_tenant_at", audit_log.c.tenant, audit_log.c.at)


def _url(url: str) -> str:
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg2://" + url.split("://", 1)[1]
    return url


class _Db:
    """Two engines on the storage's database, rebuilt after a fork: ``engine`` for transactions
    and migrations, and an autocommit one for single statements (its connections stay in
    autocommit: switching a pooled connection's isolation level per statement cost ~0.3 ms)."""

    def __init__(self, url: str) -> None:
        self.url = make_url(_url(url))
        if self.url.get_backend_name() not in ("sqlite", "postgresql"):
            raise StorageUnavailable(f"the auth store needs a SQL database, not {self.url.drivername!r}")
        self.is_sqlite = self.url.get_backend_name() == "sqlite"
        self._lock = threading.Lock()
        self._engines: tuple[Any, Any] | None = None
        self._pid = 0

    def _both(self) -> tuple[Any, Any]:
        if self._engines is None or self._pid != os.getpid():
            with self._lock:
                if self._engines is None or self._pid != os.getpid():
                    if self._engines is not None:
                        for old in self._engines:
                            old.dispose(close=False)
                    args = (
                        {"timeout": 60, "check_same_thread": False}
                        if self.is_sqlite
                        else {"connect_timeout": 5}
                    )
                    pool = {"pool_size": 5, "max_overflow": 10, "connect_args": args}
                    engine = create_engine(self.url, **pool)
                    if self.is_sqlite:
                        auto = engine.execution_options(isolation_level="AUTOCOMMIT")
                    else:
                        auto = create_engine(self.url, isolation_level="AUTOCOMMIT", **pool)
                    self._engines = (engine, auto)
                    self._pid = os.getpid()
        return self._engines

    @property
    def engine(self) -> Any:
        return self._both()[0]

    def run(self, stmt: Any, params: Any = None) -> Any:
        """One statement in autocommit mode, its rows fetched; an unreachable database raises
        StorageUnavailable."""
        try:
            with self._both()[1].connect() as conn:
                result = conn.execute(stmt, params) if params is not None else conn.execute(stmt)
                return result.all() if result.returns_rows else result.rowcount
        except OperationalError as exc:
            raise StorageUnavailable(f"database unavailable: {str(exc.orig).splitlines()[0]}") from None
        except DBAPIError as exc:
            if exc.connection_invalidated:
                raise StorageUnavailable("database unavailable") from None
            raise

    def close(self) -> None:
        if self._engines is not None:
            engine, auto = self._engines
            auto.dispose()
            engine.dispose()
            self._engines = None


def _key(r: Any) -> ApiKey:
    return ApiKey(
        id=r.id,
        name=r.name,
        tenant=r.tenant,
        role=Role(r.role),
        key_hash=r.key_hash,
        prefix=r.prefix,
        created_at=r.created_at,
        last_used_at=r.last_used_at,
        revoked_at=r.revoked_at,
    )


class KeyStore:
    """API key records (only HMACs of keys, never a secret)."""

    def __init__(self, db: _Db) -> None:
        self.db = db

    def create(self, key: ApiKey) -> None:
        """Store a key record.

        Raises:
            StorageUnavailable: nothing was stored.
        """
        values = {
            c.name: getattr(key, c.name) for c in api_keys.c if c.name not in ("last_used_at", "revoked_at")
        }
        values["role"] = key.role.value
        self.db.run(insert(api_keys).values(**values))

    def find(self, prefix: str) -> ApiKey | None:
        """The record of a key prefix, or None."""
        rows = self.db.run(select(api_keys).where(api_keys.c.prefix == prefix))
        return _key(rows[0]) if rows else None

    def list(self) -> list[ApiKey]:
        """Every key, oldest first."""
        return [_key(r) for r in self.db.run(select(api_keys).order_by(api_keys.c.created_at))]

    def revoke(self, key_id: str) -> bool:
        """Revoke an active key; False when it does not exist or was already revoked."""
        stmt = update(api_keys).where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
        return self.db.run(stmt.values(revoked_at=utcnow())) > 0

    def touch(self, key_id: str, when: dt.datetime) -> None:
        """Record the last use of a key."""
        self.db.run(update(api_keys).where(api_keys.c.id == key_id).values(last_used_at=when))

    def count(self) -> int:
        """Active keys."""
        stmt = select(func.count()).select_from(api_keys).where(api_keys.c.revoked_at.is_(None))
        return self.db.run(stmt)[0][0]


class AuditStore:
    """The audit log: who did what to which object, newest first."""

    table = audit_log
    """The table, for a task store that writes an entry in its own statement (the SQL storage:
    a submission and its entry commit together, in one round trip)."""

    def __init__(self, db: _Db) -> None:
        self.db = db

    @staticmethod
    def row(entry: dict[str, Any]) -> dict[str, Any]:
        """The row of an entry (``actor``, ``tenant``, ``action``, optional ``target``,
        ``details``, ``at``)."""
        row = {"target": None, "details": None, **entry}
        row.setdefault("at", utcnow())
        return row

    def add(self, entry: dict[str, Any]) -> None:
        """Append one entry (see :meth:`row`)."""
        self.db.run(insert(audit_log), self.row(entry))

    def list(self, *, offset: int, limit: int, tenant: str | None) -> tuple[list[dict], int]:
        """One page of entries (of ``tenant``, or all) and the total count."""
        conds = [audit_log.c.tenant == tenant] if tenant is not None else []
        stmt = select(audit_log).where(*conds).order_by(audit_log.c.seq.desc()).offset(offset).limit(limit)
        items = [dict(r._mapping) for r in self.db.run(stmt)]
        total = self.db.run(select(func.count()).select_from(audit_log).where(*conds))[0][0]
        for item in items:
            item.pop("seq", None)
        return items, total


class AuthStore:
    """The plugin's stores on one database, and its migrations."""

    def __init__(self, url: str) -> None:
        self.db = _Db(url)
        self.keys = KeyStore(self.db)
        self.audit = AuditStore(self.db)
        self._current = False

    def current(self) -> bool:
        """True when the schema is at :data:`HEAD`."""
        try:
            with self.db.engine.connect() as conn:
                rows = conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).all()
        except DBAPIError:
            return False  # no version table yet (or no database: upgrade() says which)
        return [r[0] for r in rows] == [HEAD]

    def upgrade(self) -> None:
        """Bring the plugin's tables to the newest revision. Idempotent.

        Raises:
            StorageUnavailable: the database is unreachable.
        """
        from alembic import command
        from alembic.config import Config

        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        try:
            with self.db.engine.begin() as conn:
                if not self.db.is_sqlite:
                    conn.execute(text(f"SELECT pg_advisory_xact_lock({ADVISORY_LOCK})"))
                cfg.attributes["connection"] = conn
                command.upgrade(cfg, "head")
        except OperationalError as exc:
            raise StorageUnavailable(f"database unavailable: {str(exc.orig).splitlines()[0]}") from None
        self._current = True

    def ensure_schema(self) -> None:
        """Upgrade once per process unless the schema is already current. Alembic's context is
        global to the process, so threads migrate one at a time; PostgreSQL serialises processes
        with an advisory lock, and on SQLite a process that lost the race finds the schema made.
        """
        if self._current:
            return
        with _MIGRATING:
            if self._current or self.current():
                self._current = True
                return
            try:
                self.upgrade()
            except DBAPIError:
                if not self.current():
                    raise
            self._current = True

    def close(self) -> None:
        self.db.close()


_MIGRATING = threading.Lock()
_STORES: weakref.WeakKeyDictionary[Any, AuthStore] = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()


def auth_store(runtime: Any) -> AuthStore:
    """The auth store of a runtime's database, built (and migrated) on first use and attached to
    its storage as ``storage.keys`` and ``storage.audit``.

    Raises:
        StorageUnavailable: the database is unreachable (or not a SQL database).
    """
    storage = runtime.storage
    with _LOCK:
        store = _STORES.get(storage)
        if store is None:
            store = AuthStore(storage.url)
            _STORES[storage] = store
            weakref.finalize(storage, store.close)
    store.ensure_schema()
    storage.attach("keys", store.keys)
    storage.attach("audit", store.audit)
    return store
