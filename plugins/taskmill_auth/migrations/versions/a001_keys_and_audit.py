"""API keys and the audit log, owned by the auth plugin

Revision ID: a001
Revises:
Create Date: 2026-12-01

Databases created before the plugin had its own migrations already hold both tables (the SQL
plugin's 0001 made them): they are kept as they are and only this plugin's version table is
written.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "a001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    existing = set(sa.inspect(op.get_bind()).get_table_names())
    if "api_keys" not in existing:
        op.create_table(
            "api_keys",
            sa.Column("id", sa.String(length=64), nullable=False),
            sa.Column("name", sa.String(length=200), nullable=True),
            sa.Column("tenant", sa.String(length=100), nullable=False),
            sa.Column("role", sa.String(length=16), nullable=False),
            sa.Column("prefix", sa.String(length=32), nullable=False),
            sa.Column("key_hash", sa.String(length=128), nullable=False),
            sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
            sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True),
            sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
            sa.PrimaryKeyConstraint("id", name="pk_api_keys"),
            sa.UniqueConstraint("prefix", name="uq_api_keys_prefix"),
        )
    if "audit_log" not in existing:
        op.create_table(
            "audit_log",
            sa.Column(
                "seq",
                sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
                autoincrement=True,
                nullable=False,
            ),
            sa.Column("at", sa.DateTime(timezone=True), nullable=False),
            sa.Column("actor", sa.String(length=200), nullable=False),
            sa.Column("tenant", sa.String(length=100), nullable=False),
            sa.Column("action", sa.String(length=64), nullable=False),
            sa.Column("target", sa.String(length=200), nullable=True),
            sa.Column(
                "details",
                sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
                nullable=True,
            ),
            sa.PrimaryKeyConstraint("seq", name="pk_audit_log"),
        )
        op.create_index("ix_audit_log_tenant_at", "audit_log", ["tenant", "at"])


def downgrade() -> None:
    op.drop_index("ix_audit_log_tenant_at", table_name="audit_log")
    op.drop_table("audit_log")
    op.drop_table("api_keys")
