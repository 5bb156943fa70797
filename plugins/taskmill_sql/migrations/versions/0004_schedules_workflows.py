"""schedules, workflows and the keys of a workflow's tasks

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01

``schedules``: one row per periodic task of a tenant (name unique in the tenant), with the next
due time indexed for the active ones. ``workflows``: one row per submitted DAG; ``status`` and
``finished_at`` are written once the last task ends (until then they are derived from the tasks).
``workflow_tasks``: the client's key of each task, in request order. The tasks themselves are
ordinary rows of ``tasks`` (with ``workflow_id``, from 0003), their edges in
``task_dependencies``.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def _json() -> sa.types.TypeEngine:
    return sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    op.create_table(
        "schedules",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("tenant", sa.String(length=100), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("cron", sa.String(length=200), nullable=True),
        sa.Column("interval", sa.Integer(), nullable=True),
        sa.Column("timezone", sa.String(length=64), nullable=False),
        sa.Column("task", _json(), nullable=False),
        sa.Column("paused", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.Column("next_run_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_run_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_task_id", sa.Uuid(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_schedules")),
        sa.UniqueConstraint("tenant", "name", name="uq_schedules_tenant_name"),
    )
    op.create_index(
        "ix_schedules_due",
        "schedules",
        ["next_run_at"],
        postgresql_where=sa.text("paused = false"),
        sqlite_where=sa.text("paused = 0"),
    )
    op.create_table(
        "workflows",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("tenant", sa.String(length=100), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=True),
        sa.Column("task_count", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), server_default="running", nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_workflows")),
    )
    op.create_index("ix_workflows_tenant_created", "workflows", ["tenant", "created_at"])
    op.create_index("ix_workflows_created", "workflows", ["created_at"])
    op.create_index(
        "ix_workflows_running",
        "workflows",
        ["created_at"],
        postgresql_where=sa.text("status = 'running'"),
        sqlite_where=sa.text("status = 'running'"),
    )
    op.create_table(
        "workflow_tasks",
        sa.Column("workflow_id", sa.Uuid(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("key", sa.String(length=200), nullable=False),
        sa.Column("task_id", sa.Uuid(), nullable=False),
        sa.PrimaryKeyConstraint("workflow_id", "position", name=op.f("pk_workflow_tasks")),
        sa.UniqueConstraint("workflow_id", "key", name="uq_workflow_tasks_workflow_id_key"),
    )


def downgrade() -> None:
    op.drop_table("workflow_tasks")
    op.drop_index("ix_workflows_running", table_name="workflows")
    op.drop_index("ix_workflows_created", table_name="workflows")
    op.drop_index("ix_workflows_tenant_created", table_name="workflows")
    op.drop_table("workflows")
    op.drop_index("ix_schedules_due", table_name="schedules")
    op.drop_table("schedules")
