"""An index for unfinished images across tenants: ``(status, uploaded_at)``.

The stuck-image sweep (``cluster/sweeper.py``) and the age of the oldest unfinished
image (``/metrics``, the alert on images stuck for minutes) ask "images in these
statuses, oldest first" over every tenant; ``ix_images_tenant_status`` starts with the
tenant and cannot answer that without a scan of every row.

Revision ID: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

NAME = "ix_images_status_uploaded"


def upgrade() -> None:
    if NAME not in {i["name"] for i in sa.inspect(op.get_bind()).get_indexes("images")}:
        op.create_index(NAME, "images", ["status", "uploaded_at"])


def downgrade() -> None:
    op.drop_index(NAME, "images")
