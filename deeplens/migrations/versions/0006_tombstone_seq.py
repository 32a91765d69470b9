"""Tombstones get a write sequence: ``deleted_images.seq``.

Readers that keep deletions in step (the search path's in-memory index) read the
tombstones past the highest ``seq`` they have seen, never "deleted after a time": a
clock 10 s behind on the node that wrote a tombstone no longer hides it.

PostgreSQL numbers rows with a sequence (``BIGSERIAL``, existing rows numbered as the
column is added). SQLite cannot add an auto-numbered column: existing rows take their
``rowid``, and a trigger numbers each new row ``max(seq) + 1`` in its insert's
transaction (SQLite has one writer at a time, so two never take the same number).

Revision ID: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

INDEX = "ix_deleted_seq"
TRIGGER = "deleted_images_number"


def upgrade() -> None:
    bind = op.get_bind()
    inspector = sa.inspect(bind)
    if "seq" not in {c["name"] for c in inspector.get_columns("deleted_images")}:
        if bind.dialect.name == "postgresql":
            op.execute("ALTER TABLE deleted_images ADD COLUMN seq BIGSERIAL")
        else:
            op.add_column("deleted_images", sa.Column("seq", sa.BigInteger, nullable=True))
            op.execute("UPDATE deleted_images SET seq = rowid")
    if bind.dialect.name == "sqlite":
        op.execute(f"DROP TRIGGER IF EXISTS {TRIGGER}")
        op.execute(f"""CREATE TRIGGER {TRIGGER} AFTER INSERT ON deleted_images
            WHEN NEW.seq IS NULL BEGIN
            UPDATE deleted_images SET seq = (SELECT COALESCE(MAX(seq), 0) + 1
                                             FROM deleted_images)
            WHERE rowid = NEW.rowid; END""")
    if INDEX not in {i["name"] for i in inspector.get_indexes("deleted_images")}:
        op.create_index(INDEX, "deleted_images", ["seq"])


def downgrade() -> None:
    op.execute(f"DROP TRIGGER IF EXISTS {TRIGGER}")
    op.drop_index(INDEX, "deleted_images")
    op.drop_column("deleted_images", "seq")
