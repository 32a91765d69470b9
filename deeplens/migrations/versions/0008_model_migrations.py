"""Model changes: one row per migration (source, target, state), its per-tenant
backfill progress and cursor, and the one active-model row every Gateway re-reads.

Revision ID: 0008
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    existing = set(sa.inspect(op.get_bind()).get_table_names())
    if "model_migrations" not in existing:
        op.create_table(
            "model_migrations",
            sa.Column("migration_id", sa.String(64), primary_key=True),
            sa.Column("source_model", sa.String(128), nullable=False),
            sa.Column("target_model", sa.String(128), nullable=False),
            sa.Column("target_name", sa.String(128), nullable=False),
            sa.Column("target_pretrained", sa.String(512), nullable=False),
            sa.Column("target_seed", sa.Integer, nullable=False),
            sa.Column("state", sa.String(16), nullable=False),
            sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
            sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
            sa.Column("switched_at", sa.DateTime(timezone=True), nullable=True),
            sa.Column("error", sa.Text, nullable=True),
        )
    if "model_migration_tenants" not in existing:
        op.create_table(
            "model_migration_tenants",
            sa.Column("migration_id", sa.String(64), primary_key=True),
            sa.Column("tenant_id", sa.String(64), primary_key=True),
            sa.Column("done", sa.BigInteger, nullable=False),
            sa.Column("failed", sa.BigInteger, nullable=False),
            sa.Column("total", sa.BigInteger, nullable=False),
            sa.Column("complete", sa.Boolean, nullable=False),
            sa.Column("cursor_at", sa.DateTime(timezone=True), nullable=True),
            sa.Column("cursor_id", sa.String(64), nullable=True),
            sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
            sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        )
    if "active_model" not in existing:
        op.create_table(
            "active_model",
            sa.Column("slot", sa.String(16), primary_key=True),
            sa.Column("model_id", sa.String(128), nullable=False),
            sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        )


def downgrade() -> None:
    for table in ("active_model", "model_migration_tenants", "model_migrations"):
        op.drop_table(table)
