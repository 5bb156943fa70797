"""SqlStorage: the storage object of the SQL plugin, holding one store per resource.

``storage.tasks``, ``storage.queues``, ``storage.workers``, ``storage.events`` and
``storage.settings`` share one :class:`~taskmill_sql.db.Database` (engines and units of work);
each lives in its own module. The flat methods of :class:`taskmill.interfaces.Storage` delegate to
them until every caller uses the per-resource names.
"""

from __future__ import annotations

import datetime as dt
import functools
from pathlib import Path
from typing import Any

from sqlalchemy import func
from sqlalchemy import insert
from sqlalchemy import select
from sqlalchemy import text
from sqlalchemy import update

from taskmill.interfaces import Storage
from taskmill.models import ApiKey
from taskmill.models import Role
from taskmill.models import utcnow
from taskmill_sql.db import Database
from taskmill_sql.db import normalize_url
from taskmill_sql.events import SqlEventStore
from taskmill_sql.kv import SqlSettingsStore
from taskmill_sql.queues import SqlQueueStore
from taskmill_sql.tables import api_keys
from taskmill_sql.tables import audit_log
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

    def check(self) -> None:
        with self.db.one() as conn:
            conn.execute(text("SELECT 1"))

    def after_fork(self) -> None:
        self.db.after_fork()

    def close(self) -> None:
        self.db.close()

    # ---- API keys and audit ----------------------------------------------------------------------
    def create_api_key(self, key: ApiKey) -> None:
        with self.db.one() as conn:
            conn.execute(
                insert(api_keys).values(
                    id=key.id,
                    name=key.name,
                    tenant=key.tenant,
                    role=key.role.value,
                    prefix=key.prefix,
                    key_hash=key.key_hash,
                    created_at=key.created_at,
                )
            )

    @staticmethod
    def _key_from_row(r: Any) -> ApiKey:
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

    def find_api_key(self, prefix: str) -> ApiKey | None:
        with self.db.one() as conn:
            r = conn.execute(select(api_keys).where(api_keys.c.prefix == prefix)).first()
        return self._key_from_row(r) if r else None

    def list_api_keys(self) -> list[ApiKey]:
        with self.db.one() as conn:
            return [
                self._key_from_row(r) for r in conn.execute(select(api_keys).order_by(api_keys.c.created_at))
            ]

    def revoke_api_key(self, key_id: str) -> bool:
        stmt = (
            update(api_keys)
            .where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
            .values(revoked_at=utcnow())
        )
        with self.db.one() as conn:
            return conn.execute(stmt).rowcount > 0

    def touch_api_key(self, key_id: str, when: dt.datetime) -> None:
        with self.db.one() as conn:
            conn.execute(update(api_keys).where(api_keys.c.id == key_id).values(last_used_at=when))

    def count_api_keys(self) -> int:
        with self.db.one() as conn:
            return conn.execute(
                select(func.count()).select_from(api_keys).where(api_keys.c.revoked_at.is_(None))
            ).scalar_one()

    def add_audit(self, entry: dict[str, Any]) -> None:
        row = {"target": None, "details": None, **entry}
        row.setdefault("at", utcnow())
        with self.db.one() as conn:
            conn.execute(self._insert_audit, row)

    @functools.cached_property
    def _insert_audit(self) -> Any:
        return insert(audit_log)

    def list_audit(self, *, offset: int, limit: int, tenant: str | None) -> tuple[list[dict], int]:
        conds = [audit_log.c.tenant == tenant] if tenant is not None else []
        stmt = select(audit_log).where(*conds).order_by(audit_log.c.seq.desc()).offset(offset).limit(limit)
        with self.db.one() as conn:
            items = [dict(r._mapping) for r in conn.execute(stmt)]
            total = conn.execute(select(func.count()).select_from(audit_log).where(*conds)).scalar_one()
        for item in items:
            item.pop("seq", None)
        return items, total
