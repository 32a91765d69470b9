"""The catalog as it stood when migrations began: images, duplicates, usage, content
hashes, tombstones.

Catalogs created before migrations (by ``create_all``) already hold some of these
tables: those are kept, and the nullable columns added since are added to them.

Revision ID: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

TZ = sa.DateTime(timezone=True)


def _image_columns() -> list[sa.Column]:
    return [
        sa.Column("image_id", sa.String(64), primary_key=True),
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("original_file_name", sa.String(512), nullable=False),
        sa.Column("storage_provider", sa.String(16), nullable=False),
        sa.Column("storage_path", sa.String(512), nullable=False),
        sa.Column("file_size", sa.BigInteger, nullable=False),
        sa.Column("mime_type", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("stage", sa.String(16)),
        sa.Column("failure_reason", sa.String(32)),
        sa.Column("failure_message", sa.Text),
        sa.Column("width", sa.Integer),
        sa.Column("height", sa.Integer),
        sa.Column("format", sa.String(8)),
        sa.Column("feature_model", sa.String(128)),
        sa.Column("uploaded_at", TZ, nullable=False),
        sa.Column("validated_at", TZ),
        sa.Column("processed_at", TZ),
        sa.Column("indexed_at", TZ),
        sa.Column("failed_at", TZ),
        sa.Column("dedup_tiers", sa.String(32)),
        sa.Column("pipeline_seconds", sa.Float),
        sa.Column("pending", sa.Boolean),
    ]


def upgrade() -> None:
    inspector = sa.inspect(op.get_bind())
    tables = set(inspector.get_table_names())
    if "images" not in tables:
        op.create_table("images", *_image_columns(),
                        sa.UniqueConstraint("tenant_id", "sha256", name="uq_images_tenant_sha256"))
    else:  # made before migrations: add what was added since (nullable columns only)
        present = {c["name"] for c in inspector.get_columns("images")}
        missing = [c for c in _image_columns() if c.name not in present and c.nullable]
        if missing:
            with op.batch_alter_table("images") as batch:
                for column in missing:
                    batch.add_column(column)
    if "duplicates" not in tables:
        op.create_table(
            "duplicates",
            sa.Column("tenant_id", sa.String(64), nullable=False),
            sa.Column("image_id", sa.String(64), primary_key=True),
            sa.Column("other_id", sa.String(64), primary_key=True),
            sa.Column("kind", sa.String(8), nullable=False),
            sa.Column("score", sa.Float, nullable=False))
    if "usage_hourly" not in tables:
        op.create_table(
            "usage_hourly",
            sa.Column("tenant_id", sa.String(64), primary_key=True),
            sa.Column("hour", TZ, primary_key=True),
            sa.Column("metric", sa.String(32), primary_key=True),
            sa.Column("quantity", sa.Float, nullable=False))
    if "usage_seen" not in tables:
        op.create_table("usage_seen", sa.Column("event_id", sa.String(36), primary_key=True))
    if "image_hashes" not in tables:
        op.create_table(
            "image_hashes",
            sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
            sa.Column("tenant_id", sa.String(64), nullable=False),
            sa.Column("image_id", sa.String(64), nullable=False),
            sa.Column("sha256", sa.String(64), nullable=False),
            sa.Column("pixel_sha256", sa.String(64), nullable=False),
            sa.Column("phash", sa.BigInteger, nullable=False),
            sa.UniqueConstraint("tenant_id", "image_id", name="uq_hashes_tenant_image"),
            sqlite_autoincrement=True)  # SQLite never reuses a deleted row's seq
    if "deleted_images" not in tables:
        op.create_table(
            "deleted_images",
            sa.Column("tenant_id", sa.String(64), primary_key=True),
            sa.Column("image_id", sa.String(64), primary_key=True),
            sa.Column("deleted_at", TZ, nullable=False))


def downgrade() -> None:
    for table in ("deleted_images", "image_hashes", "usage_seen", "usage_hourly",
                  "duplicates", "images"):
        op.drop_table(table)
