"""taskmill's SQL plugin: storage on SQLAlchemy (PostgreSQL, SQLite) and the SQL broker."""

from __future__ import annotations

from taskmill import hookimpl

__all__ = ["taskmill_storages", "taskmill_brokers"]


@hookimpl
def taskmill_storages() -> list[type]:
    from taskmill_sql.storage import SqlStorage

    return [SqlStorage]


@hookimpl
def taskmill_brokers() -> list[type]:
    from taskmill_sql.broker import SqlBroker

    return [SqlBroker]
