"""wake SQL-broker workers from the database: NOTIFY on every commit that queues tasks

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28

A statement-level trigger sends ``NOTIFY taskmill_tasks, '<queue>'`` for each queue that got
queued tasks, inside the writing transaction: the notification is delivered at commit (never for
a rolled-back write) and costs no round trip of its own, where a separate ``pg_notify`` after
each submit cost one. SQLite has no NOTIFY; its workers poll.
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

FUNCTION = """
CREATE OR REPLACE FUNCTION taskmill_notify_queued() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    q text;
BEGIN
    FOR q IN SELECT DISTINCT queue FROM new_rows WHERE status = 'queued' LOOP
        PERFORM pg_notify('taskmill_tasks', q);
    END LOOP;
    RETURN NULL;
END
$$
"""


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(FUNCTION)
    op.execute(
        "CREATE TRIGGER taskmill_notify_insert AFTER INSERT ON tasks REFERENCING NEW TABLE AS new_rows "
        "FOR EACH STATEMENT EXECUTE FUNCTION taskmill_notify_queued()"
    )
    op.execute(
        "CREATE TRIGGER taskmill_notify_update AFTER UPDATE ON tasks REFERENCING NEW TABLE AS new_rows "
        "FOR EACH STATEMENT EXECUTE FUNCTION taskmill_notify_queued()"
    )


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("DROP TRIGGER IF EXISTS taskmill_notify_update ON tasks")
    op.execute("DROP TRIGGER IF EXISTS taskmill_notify_insert ON tasks")
    op.execute("DROP FUNCTION IF EXISTS taskmill_notify_queued()")
