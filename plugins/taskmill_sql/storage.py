"""SqlStorage: the storage object of the SQL plugin, holding one store per resource.

``storage.tasks``, ``storage.queues``, ``storage.workers``, ``storage.events`` and
``storage.settings`` share one :class:`~taskmill_sql.db.Database` (engines and units of work);
each lives in its own module. The flat methods of :class:`taskmill.interfaces.Storage` delegate to
them until every caller uses the per-resource names.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from sqlalchemy import text

from taskmill.plugin_api import Storage
from taskmill_sql.db import Database
from taskmill_sql.db import normalize_url
from taskmill_sql.events import SqlEventStore
from taskmill_sql.kv import SqlSettingsStore
from taskmill_sql.queues import SqlQueueStore
from taskmill_sql.task_reads import row_to_task
from taskmill_sql.tasks import SqlTaskStore
from taskmill_sql.workers import SqlWorkerStore

__all__ = ["SqlStorage", "normalize_url", "row_to_task"]

MIGRATIONS = Path(__file__).parent / "migrations"
ADVISORY_LOCK = 7263101
"""Several processes may start at once: one migrates, the others wait on this lock."""


class SqlStorage(Storage):
    """Storage on SQLAlchemy Core (PostgreSQL with psycopg2, or SQLite)."""

    schemes = ("sqlite", "postgresql", "postgres")

    def __init__(self, url: str, settings: Any) -> None:
        super().__init__(normalize_url(url), settings)
        self.db = Database(self.url)
        self.tasks = SqlTaskStore(self.db)
        self.queues = SqlQueueStore(self.db)
        self.workers = SqlWorkerStore(self.db)
        self.events = SqlEventStore(self.db)
        self.settings = SqlSettingsStore(self.db)

    @functools.cached_property
    def schedules(self) -> Any:
        from taskmill_sql.schedules import SqlScheduleStore

        return SqlScheduleStore(self.db)

    @functools.cached_property
    def workflows(self) -> Any:
        from taskmill_sql.workflows import SqlWorkflowStore

        return SqlWorkflowStore(self.db)

    @functools.cached_property
    def insights(self) -> Any:
        """The dashboard's bounded reads (:class:`taskmill.insights.InsightsStore`)."""
        from taskmill_sql.insights import SqlInsights

        return SqlInsights(self)

    def attach(self, name: str, store: Any) -> None:
        """An audit store with a ``table`` and a ``row(entry)`` (the auth plugin's, built on this
        storage's database) also lets a submission write its entry in the task's statement."""
        super().attach(name, store)
        if name == "audit" and getattr(store, "table", None) is not None and hasattr(store, "row"):
            self.tasks.audit = store

    @property
    def audits_with_tasks(self) -> bool:
        return self.tasks.audit is not None

    # ---- what other modules of the plugin (broker, dashboard reads) reach ------------------------
    @property
    def engine(self) -> Any:
        return self.db.engine

    @property
    def auto(self) -> Any:
        return self.db.auto

    @property
    def is_sqlite(self) -> bool:
        return self.db.is_sqlite

    # ---- set-up ----------------------------------------------------------------------------------
    def upgrade(self) -> None:
        from alembic import command
        from alembic.config import Config

        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        with self.db.tx() as conn:
            if not self.db.is_sqlite:
                conn.execute(text(f"SELECT pg_advisory_xact_lock({ADVISORY_LOCK})"))
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")

    def _alembic(self) -> Any:
        from alembic.config import Config

        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        return cfg

    def revision(self) -> str:
        from alembic.runtime.migration import MigrationContext
        from alembic.script import ScriptDirectory

        head = ScriptDirectory.from_config(self._alembic()).get_current_head()
        with self.db.one() as conn:
            current = MigrationContext.configure(conn).get_current_revision()
        if current is None:
            return "(empty database)"
        return (
            f"{current} (head)"
            if current == head
            else f"{current} (newest is {head}: run taskmill db upgrade)"
        )

    def downgrade(self, revision: str) -> None:
        from alembic import command

        cfg = self._alembic()
        with self.db.tx() as conn:
            if not self.db.is_sqlite:
                conn.execute(text(f"SELECT pg_advisory_xact_lock({ADVISORY_LOCK})"))
            cfg.attributes["connection"] = conn
            command.downgrade(cfg, revision)

    def check(self) -> None:
        with self.db.one() as conn:
            conn.execute(text("SELECT 1"))

    def after_fork(self) -> None:
        self.db.after_fork()

    def close(self) -> None:
        self.db.close()
