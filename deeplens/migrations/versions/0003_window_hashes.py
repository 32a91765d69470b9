"""The near tier's window hashes: one pHash per sub-window of the hash image.

``image_hashes.windows`` holds ``len(deeplens.image_hashes.WINDOWS)`` big-endian
64-bit hashes (the whole image first). Rows written before it have none: the near
tier then compares their whole-image pHash only.

Revision ID: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    columns = {c["name"] for c in sa.inspect(op.get_bind()).get_columns("image_hashes")}
    if "windows" not in columns:
        op.add_column("image_hashes", sa.Column("windows", sa.LargeBinary, nullable=True))


def downgrade() -> None:
    op.drop_column("image_hashes", "windows")
