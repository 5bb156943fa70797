"""The settings store: key/value pairs (installation secret, bootstrap bookkeeping)."""

from __future__ import annotations

from sqlalchemy import insert
from sqlalchemy import select
from sqlalchemy import update
from sqlalchemy.exc import IntegrityError

from taskmill_sql.db import Database
from taskmill_sql.tables import kv

__all__ = ["SqlSettingsStore"]


class SqlSettingsStore:
    """:class:`taskmill.stores.SettingsStore` on the ``kv`` table."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def get(self, key: str) -> str | None:
        with self.db.one() as conn:
            return conn.execute(select(kv.c.value).where(kv.c.key == key)).scalar()

    def set(self, key: str, value: str) -> None:
        with self.db.tx() as conn:
            if not conn.execute(update(kv).where(kv.c.key == key).values(value=value)).rowcount:
                conn.execute(insert(kv).values(key=key, value=value))

    def get_or_create(self, key: str, value: str) -> str:
        with self.db.one() as conn:
            row = conn.execute(select(kv.c.value).where(kv.c.key == key)).first()
            if row:
                return row[0]
            try:
                conn.execute(insert(kv).values(key=key, value=value))
                return value
            except IntegrityError:
                return conn.execute(select(kv.c.value).where(kv.c.key == key)).scalar_one()
