"""Alembic environment of the auth plugin: its own version table, on the connection handed over."""

from __future__ import annotations

from alembic import context

from taskmill_auth.store import VERSION_TABLE
from taskmill_auth.store import metadata

connection = context.config.attributes["connection"]
context.configure(
    connection=connection, target_metadata=metadata, version_table=VERSION_TABLE, render_as_batch=True
)
with context.begin_transaction():
    context.run_migrations()
