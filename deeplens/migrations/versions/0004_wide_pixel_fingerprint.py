"""Room for the pixel fingerprint's scheme: ``image_hashes.pixel_sha256`` was
``VARCHAR(64)``, but the Embedder writes ``px1:`` plus 64 hex digits (68 characters,
``deeplens.image_hashes.fingerprint``). SQLite never enforced the width; PostgreSQL
refused every insert (``StringDataRightTruncation``), so dedup failed every image.

Widened to ``FINGERPRINT_WIDTH`` (128), leaving room for a longer scheme name or digest
without another migration. Widening a ``VARCHAR`` is a catalog-only change on
PostgreSQL (no table rewrite, no long lock); the index on it is kept.

Revision ID: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

FINGERPRINT_WIDTH = 128


def _resize(old: int, new: int) -> None:
    # SQLite ignores VARCHAR widths, and rebuilding its table (batch mode) would drop the
    # AUTOINCREMENT that keeps a deleted row's seq from being reused: nothing to do there.
    if op.get_bind().dialect.name == "sqlite":
        return
    op.alter_column("image_hashes", "pixel_sha256", existing_type=sa.String(old),
                    type_=sa.String(new), existing_nullable=False)


def upgrade() -> None:
    _resize(64, FINGERPRINT_WIDTH)


def downgrade() -> None:
    _resize(FINGERPRINT_WIDTH, 64)
