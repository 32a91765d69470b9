"""Import jobs: one row per ``deeplens import`` (tenant, source, mode), its progress,
the listing cursor it resumes from, and a cancel flag any process can set.

Revision ID: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if "import_jobs" in sa.inspect(op.get_bind()).get_table_names():
        return
    op.create_table(
        "import_jobs",
        sa.Column("job_id", sa.String(64), primary_key=True),
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column("source", sa.String(512), nullable=False),
        sa.Column("copy", sa.Boolean, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("listed", sa.BigInteger, nullable=False),
        sa.Column("queued", sa.BigInteger, nullable=False),
        sa.Column("skipped", sa.BigInteger, nullable=False),
        sa.Column("refused", sa.BigInteger, nullable=False),
        sa.Column("cursor", sa.Text, nullable=True),
        sa.Column("listing_done", sa.Boolean, nullable=False),
        sa.Column("cancel", sa.Boolean, nullable=False),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("run_started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("run_queued", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("import_jobs")
