"""An index for every hot query.

- a tenant's images by upload time (the listing, paged) and by status (counts, filter);
- duplicates from either side (links are stored both ways; deletes find both);
- content hashes by bytes, by pixels and by sequence (the near tier's refresh);
- tombstones by time (the search path's refresh).

Revision ID: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

INDEXES = [
    ("ix_images_tenant_uploaded", "images", ["tenant_id", "uploaded_at", "image_id"]),
    ("ix_images_tenant_status", "images", ["tenant_id", "status"]),
    ("ix_duplicates_tenant_image", "duplicates", ["tenant_id", "image_id"]),
    ("ix_duplicates_tenant_other", "duplicates", ["tenant_id", "other_id"]),
    ("ix_hashes_sha", "image_hashes", ["tenant_id", "sha256"]),
    ("ix_hashes_pixel_sha", "image_hashes", ["tenant_id", "pixel_sha256"]),
    ("ix_hashes_tenant_seq", "image_hashes", ["tenant_id", "seq"]),
    ("ix_deleted_at", "deleted_images", ["deleted_at"]),
]


def upgrade() -> None:
    inspector = sa.inspect(op.get_bind())
    for name, table, columns in INDEXES:
        if name not in {i["name"] for i in inspector.get_indexes(table)}:
            op.create_index(name, table, columns)
    if "ix_images_tenant" in {i["name"] for i in inspector.get_indexes("images")}:
        op.drop_index("ix_images_tenant", "images")  # a prefix of ix_images_tenant_uploaded


def downgrade() -> None:
    for name, table, _ in INDEXES:
        op.drop_index(name, table)
