"""The catalog's tables as SQLAlchemy mapped classes: one definition of each row.

``ImageRow`` is both the ``images`` table and the value the catalog hands out (a
mapped dataclass, built from a result row; never attached to a session). The schema
itself is created and upgraded by ``deeplens/migrations``; these classes describe it
for queries, and a test checks them against a migrated database.
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, MappedAsDataclass, mapped_column


class Base(MappedAsDataclass, DeclarativeBase):
    pass


def _id(primary: bool = False) -> Mapped[str]:
    return mapped_column(sa.String(64), primary_key=primary)


def _when() -> Mapped[datetime | None]:
    return mapped_column(sa.DateTime(timezone=True))


class ImageRow(Base):
    """One image and how far it got through the pipeline."""

    __tablename__ = "images"
    __table_args__ = (sa.UniqueConstraint("tenant_id", "sha256", name="uq_images_tenant_sha256"),)

    image_id: Mapped[str] = _id(primary=True)
    tenant_id: Mapped[str] = _id()
    sha256: Mapped[str] = mapped_column(sa.String(64))
    original_file_name: Mapped[str] = mapped_column(sa.String(512))
    storage_provider: Mapped[str] = mapped_column(sa.String(16))
    storage_path: Mapped[str] = mapped_column(sa.String(512))
    file_size: Mapped[int] = mapped_column(sa.BigInteger)
    mime_type: Mapped[str] = mapped_column(sa.String(64))
    status: Mapped[str] = mapped_column(sa.String(16))
    stage: Mapped[str | None] = mapped_column(sa.String(16))
    failure_reason: Mapped[str | None] = mapped_column(sa.String(32))
    failure_message: Mapped[str | None] = mapped_column(sa.Text)
    width: Mapped[int | None] = mapped_column(sa.Integer)
    height: Mapped[int | None] = mapped_column(sa.Integer)
    format: Mapped[str | None] = mapped_column(sa.String(8))
    feature_model: Mapped[str | None] = mapped_column(sa.String(128))
    uploaded_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True))
    validated_at: Mapped[datetime | None] = _when()
    processed_at: Mapped[datetime | None] = _when()
    indexed_at: Mapped[datetime | None] = _when()
    failed_at: Mapped[datetime | None] = _when()
    # tiers that ran, comma separated
    dedup_tiers: Mapped[str | None] = mapped_column(sa.String(32), default=None)
    # upload -> indexed, set when indexed
    pipeline_seconds: Mapped[float | None] = mapped_column(sa.Float, default=None)
    # True until the broker acknowledged the upload event
    pending: Mapped[bool | None] = mapped_column(sa.Boolean, default=None)


class DuplicateLink(Base):
    """``image_id`` duplicates ``other_id`` (stored both ways), by tier and score."""

    __tablename__ = "duplicates"

    tenant_id: Mapped[str] = _id()
    image_id: Mapped[str] = _id(primary=True)
    other_id: Mapped[str] = _id(primary=True)
    kind: Mapped[str] = mapped_column(sa.String(8))
    score: Mapped[float] = mapped_column(sa.Float)


class UsageHour(Base):
    """A tenant's total of one metric in one hour."""

    __tablename__ = "usage_hourly"

    tenant_id: Mapped[str] = _id(primary=True)
    hour: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True), primary_key=True)
    metric: Mapped[str] = mapped_column(sa.String(32), primary_key=True)
    quantity: Mapped[float] = mapped_column(sa.Float)


class UsageSeen(Base):
    """Usage events already counted: a redelivered event is not billed twice."""

    __tablename__ = "usage_seen"

    event_id: Mapped[str] = mapped_column(sa.String(36), primary_key=True)


metadata = Base.metadata
images = ImageRow.__table__
duplicates = DuplicateLink.__table__
usage_hourly = UsageHour.__table__
usage_seen = UsageSeen.__table__
