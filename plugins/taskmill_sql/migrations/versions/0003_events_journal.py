"""the events journal, its consumer cursors, tasks.workflow_id; depends_on stored once

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01

Every task change writes one ``events`` row in the transaction of the change, by triggers on
``tasks``: on PostgreSQL statement-level triggers with transition tables, so a batch of N moved
tasks costs one ``INSERT … SELECT`` (no round trip of its own); on SQLite row triggers (the
database is in-process). The event name follows from the move:

=======================  ==========================================================
``task.submitted``       a row is inserted
``task.started``         → running
``task.progress``        running, ``progress`` changed
``task.retry_scheduled`` running → scheduled (a failed attempt with retries left)
``task.completed``       → completed
``task.failed``          → failed
``task.cancelled``       → cancelled
``task.requeued``        → queued (released when due or when dependencies completed,
                         recovered, retried by hand, handed back at shutdown)
=======================  ==========================================================

A row is about 100 bytes plus its two index entries; the task itself is read from its row.
``tasks.depends_on`` (a JSON copy of ``task_dependencies``) is dropped: the edges live in the
table only.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_COLUMNS = "at, tenant, task_id, workflow_id, queue, type, event"

_CASE = """CASE
        WHEN {n}.status = {o}.status THEN
            CASE WHEN {n}.status = 'running' AND {n}.progress IS DISTINCT FROM {o}.progress
                 THEN 'task.progress' END
        WHEN {n}.status = 'running' THEN 'task.started'
        WHEN {n}.status = 'completed' THEN 'task.completed'
        WHEN {n}.status = 'failed' THEN 'task.failed'
        WHEN {n}.status = 'cancelled' THEN 'task.cancelled'
        WHEN {n}.status = 'scheduled' AND {o}.status = 'running' THEN 'task.retry_scheduled'
        WHEN {n}.status = 'queued' THEN 'task.requeued'
    END"""

PG_FUNCTIONS = [
    f"""
CREATE OR REPLACE FUNCTION taskmill_journal_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO events ({_COLUMNS})
    SELECT now(), n.tenant, n.id, n.workflow_id, n.queue, n.type, 'task.submitted' FROM new_rows n;
    RETURN NULL;
END
$$
""",
    f"""
CREATE OR REPLACE FUNCTION taskmill_journal_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO events ({_COLUMNS})
    SELECT now(), n.tenant, n.id, n.workflow_id, n.queue, n.type, e.event
    FROM new_rows n JOIN old_rows o ON o.seq = n.seq
    CROSS JOIN LATERAL (SELECT {_CASE.format(n="n", o="o")} AS event) e
    WHERE e.event IS NOT NULL;
    RETURN NULL;
END
$$
""",
]

PG_TRIGGERS = [
    "CREATE TRIGGER taskmill_journal_insert AFTER INSERT ON tasks REFERENCING NEW TABLE AS new_rows "
    "FOR EACH STATEMENT EXECUTE FUNCTION taskmill_journal_insert()",
    "CREATE TRIGGER taskmill_journal_update AFTER UPDATE ON tasks "
    "REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows "
    "FOR EACH STATEMENT EXECUTE FUNCTION taskmill_journal_update()",
]

# SQLAlchemy stores SQLite datetimes as 'YYYY-MM-DD HH:MM:SS.ffffff' (naive UTC)
_SQLITE_NOW = "strftime('%Y-%m-%d %H:%M:%f000', 'now')"
SQLITE_TRIGGERS = [
    f"""
CREATE TRIGGER taskmill_journal_insert AFTER INSERT ON tasks BEGIN
    INSERT INTO events ({_COLUMNS})
    VALUES ({_SQLITE_NOW}, NEW.tenant, NEW.id, NEW.workflow_id, NEW.queue, NEW.type, 'task.submitted');
END
""",
    f"""
CREATE TRIGGER taskmill_journal_update AFTER UPDATE ON tasks
WHEN NEW.status IS NOT OLD.status OR (NEW.status = 'running' AND NEW.progress IS NOT OLD.progress)
BEGIN
    INSERT INTO events ({_COLUMNS})
    SELECT {_SQLITE_NOW}, NEW.tenant, NEW.id, NEW.workflow_id, NEW.queue, NEW.type, e.event
    FROM (SELECT {_CASE.format(n="NEW", o="OLD").replace("IS DISTINCT FROM", "IS NOT")} AS event) e
    WHERE e.event IS NOT NULL;
END
""",
]


def upgrade() -> None:
    bind = op.get_bind()
    pg = bind.dialect.name == "postgresql"
    seq = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
    op.create_table(
        "events",
        sa.Column("id", seq, autoincrement=True, nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("tenant", sa.String(length=100), nullable=False),
        sa.Column("task_id", sa.Uuid(), nullable=False),
        sa.Column("workflow_id", sa.Uuid(), nullable=True),
        sa.Column("queue", sa.String(length=200), nullable=False),
        sa.Column("type", sa.String(length=200), nullable=False),
        sa.Column("event", sa.String(length=32), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_events")),
    )
    op.create_index("ix_events_task", "events", ["task_id", "id"])
    op.create_index(
        "ix_events_workflow",
        "events",
        ["workflow_id", "id"],
        postgresql_where=sa.text("workflow_id IS NOT NULL"),
        sqlite_where=sa.text("workflow_id IS NOT NULL"),
    )
    op.create_table(
        "event_cursors",
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("position", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("lease_owner", sa.String(length=200), nullable=True),
        sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_event_cursors")),
    )
    # plain ALTERs: SQLite (≥ 3.35) drops a column in place, so the table keeps its indexes
    op.execute("ALTER TABLE tasks ADD COLUMN workflow_id " + ("uuid" if pg else "CHAR(32)"))
    op.execute("ALTER TABLE tasks DROP COLUMN depends_on")
    if pg:
        for sql in PG_FUNCTIONS + PG_TRIGGERS:
            op.execute(sql)
    else:
        for sql in SQLITE_TRIGGERS:
            op.execute(sql)


def downgrade() -> None:
    bind = op.get_bind()
    pg = bind.dialect.name == "postgresql"
    for name in ("taskmill_journal_update", "taskmill_journal_insert"):
        op.execute(f"DROP TRIGGER IF EXISTS {name}" + (" ON tasks" if pg else ""))
        if pg:
            op.execute(f"DROP FUNCTION IF EXISTS {name}()")
    op.execute("ALTER TABLE tasks ADD COLUMN depends_on " + ("jsonb" if pg else "JSON"))
    op.execute(
        "UPDATE tasks SET depends_on = (SELECT "
        + ("jsonb_agg(d.depends_on::text)" if pg else "json_group_array(d.depends_on)")
        + " FROM task_dependencies d WHERE d.task_id = tasks.id)"
    )
    op.execute("ALTER TABLE tasks DROP COLUMN workflow_id")
    op.drop_table("event_cursors")
    op.drop_index("ix_events_workflow", table_name="events")
    op.drop_index("ix_events_task", table_name="events")
    op.drop_table("events")
