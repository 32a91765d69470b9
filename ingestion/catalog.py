"""The image catalog: one row per image, its status through the pipeline.

SQLite in the data dir by default, PostgreSQL (any SQLAlchemy URL) through
``DEEPLENS_CATALOG_URL``. Rows are written by the upload API and advanced by the
projection that consumes the lifecycle topics. The tables are described in
``ingestion/tables.py``; the schema is created and upgraded by ``deeplens/migrations``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from ingestion import lifecycle
from ingestion.lifecycle import KIND_RANK
from ingestion.tables import ImageRow, duplicates, images, usage_hourly, usage_seen

__all__ = ["Catalog", "DuplicateRow", "ImageRow", "images"]

@dataclass(frozen=True)
class DuplicateRow:
    image_id: str
    kind: str
    score: float


# What an attempt at an image writes to its row (``reattempt`` clears, ``restore`` undoes).
_ATTEMPT = ("status", "stage", "failure_reason", "failure_message", "validated_at",
            "processed_at", "indexed_at", "pipeline_seconds", "dedup_tiers",
            "original_file_name", "uploaded_at")


def _aware(value: Any) -> Any:
    """SQLite hands datetimes back naive; they were stored as UTC."""
    if isinstance(value, datetime) and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


class Catalog:
    def __init__(self, url: str) -> None:
        from deeplens.db import make_engine

        self.engine = make_engine(url)  # the schema comes from deeplens/migrations

    def _row(self, row: Any) -> ImageRow:
        return ImageRow(**{k: _aware(v) for k, v in row._mapping.items()})

    def insert(self, values: dict[str, Any]) -> ImageRow | None:
        """Insert a new image; on the same (tenant, sha256) return the existing row instead."""
        try:
            with self.engine.begin() as conn:
                conn.execute(images.insert().values(**values))
            return None
        except IntegrityError:
            existing = self.find_by_sha256(values["tenant_id"], values["sha256"])
            if existing is None:  # the unique clash was on image_id: a real error
                raise
            return existing

    def acknowledge(self, image_id: str) -> None:
        """The broker acknowledged the image's upload event: the row is settled."""
        with self.engine.begin() as conn:
            conn.execute(images.update().where(images.c.image_id == image_id)
                         .values(pending=None))

    def reattempt(self, image_id: str, file_name: str, at: datetime) -> bool:
        """Start a new attempt at a failed image under its id: back to pending
        ``uploaded``, the failure and the earlier attempt's step times cleared (``failed_at``
        stays). False if the image is not failed (another request started one first)."""
        with self.engine.begin() as conn:
            return conn.execute(images.update().where(
                images.c.image_id == image_id, images.c.status == "failed").values(
                dict.fromkeys(_ATTEMPT, None) | {
                    "status": "uploaded", "stage": lifecycle.STAGE_OF_STATUS["uploaded"],
                    "original_file_name": file_name, "uploaded_at": at, "pending": True})
            ).rowcount > 0

    def restore(self, previous: ImageRow) -> None:
        """Undo ``reattempt`` whose event the broker did not take: the row as it was,
        unless the pipeline moved it meanwhile."""
        with self.engine.begin() as conn:
            conn.execute(images.update().where(
                images.c.image_id == previous.image_id, images.c.status == "uploaded",
                images.c.pending == sa.true()).values(
                {c: getattr(previous, c) for c in _ATTEMPT} | {"pending": None}))

    def statuses(self, tenant_id: str, image_ids: list[str]) -> dict[str, str]:
        out: dict[str, str] = {}
        with self.engine.connect() as conn:
            for start in range(0, len(image_ids), lifecycle.IN_CHUNK):
                out.update((row[0], row[1]) for row in conn.execute(
                    sa.select(images.c.image_id, images.c.status).where(
                        images.c.tenant_id == tenant_id,
                        images.c.image_id.in_(image_ids[start:start + lifecycle.IN_CHUNK]))))
        return out

    def find_by_sha256(self, tenant_id: str, sha256: str) -> ImageRow | None:
        query = images.select().where(images.c.tenant_id == tenant_id, images.c.sha256 == sha256)
        with self.engine.connect() as conn:
            row = conn.execute(query).first()
        return self._row(row) if row else None

    def get(self, tenant_id: str, image_id: str) -> ImageRow | None:
        """The row if it belongs to the tenant; another tenant's image reads as missing."""
        query = images.select().where(images.c.image_id == image_id,
                                      images.c.tenant_id == tenant_id)
        with self.engine.connect() as conn:
            row = conn.execute(query).first()
        return self._row(row) if row else None

    def list(self, tenant_id: str, *, status: str | None = None, limit: int = 100,
             after: str | None = None) -> list[ImageRow]:
        """A tenant's images, newest first; ``after`` is the last image_id of the previous page."""
        query = images.select().where(images.c.tenant_id == tenant_id)
        if status is not None:
            query = query.where(images.c.status == status)
        if after is not None:
            anchor = self.get(tenant_id, after)
            if anchor is not None:
                query = query.where(sa.or_(
                    images.c.uploaded_at < anchor.uploaded_at,
                    sa.and_(images.c.uploaded_at == anchor.uploaded_at,
                            images.c.image_id < anchor.image_id)))
        query = query.order_by(images.c.uploaded_at.desc(), images.c.image_id.desc()).limit(limit)
        with self.engine.connect() as conn:
            return [self._row(r) for r in conn.execute(query)]

    def delete(self, tenant_id: str, image_id: str) -> bool:
        """Remove the image's row, then its links. The row first: its DELETE waits for a
        projection that is linking the image (``lifecycle.link`` holds a lock on the row),
        so the links that projection commits are seen, and removed, by the second
        statement (READ COMMITTED on PostgreSQL)."""
        query = images.delete().where(images.c.image_id == image_id,
                                      images.c.tenant_id == tenant_id)
        with self.engine.begin() as conn:
            removed = conn.execute(query).rowcount > 0
            conn.execute(duplicates.delete().where(
                duplicates.c.tenant_id == tenant_id,
                sa.or_(duplicates.c.image_id == image_id, duplicates.c.other_id == image_id)))
            return removed

    def duplicates_of(self, tenant_id: str, image_id: str) -> list[DuplicateRow]:
        query = (sa.select(duplicates.c.other_id, duplicates.c.kind, duplicates.c.score)
                 .where(duplicates.c.tenant_id == tenant_id, duplicates.c.image_id == image_id)
                 .order_by(duplicates.c.score.desc()))
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        return sorted((DuplicateRow(r[0], r[1], r[2]) for r in rows),
                      key=lambda d: (KIND_RANK.get(d.kind, 9), -d.score))

    def fail(self, image_id: str, stage: str, reason: str, message: str, at: datetime) -> bool:
        with self.engine.begin() as conn:
            return lifecycle.fail(conn, [lifecycle.failure_row(image_id, stage, reason, message,
                                                               at)]) > 0

    def apply(self, changes: lifecycle.Changes) -> None:
        """A consumer batch's lifecycle writes, in one transaction."""
        with self.engine.begin() as conn:
            lifecycle.apply(conn, changes)

    def latency_buckets(self, bounds: list[float]) -> tuple[list[int], int, float]:
        """Cumulative counts of upload->indexed seconds <= each bound, total, and sum."""
        col = images.c.pipeline_seconds
        columns = [sa.func.sum(sa.case((col <= b, 1), else_=0)) for b in bounds]
        query = sa.select(*columns, sa.func.count(col), sa.func.sum(col)).where(col.is_not(None))
        with self.engine.connect() as conn:
            row = conn.execute(query).one()
        return [int(v or 0) for v in row[:-2]], int(row[-2] or 0), float(row[-1] or 0.0)

    def add_usage(self, event_id: str, tenant_id: str, at: datetime, metric: str,
                  quantity: float) -> bool:
        """Add to the tenant's hourly total, once per event id; False if already counted."""
        hour = at.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
        key = (usage_hourly.c.tenant_id == tenant_id, usage_hourly.c.hour == hour,
               usage_hourly.c.metric == metric)
        try:
            with self.engine.begin() as conn:
                conn.execute(usage_seen.insert().values(event_id=event_id))
                updated = conn.execute(usage_hourly.update().where(*key).values(
                    quantity=usage_hourly.c.quantity + quantity)).rowcount
                if not updated:
                    conn.execute(usage_hourly.insert().values(
                        tenant_id=tenant_id, hour=hour, metric=metric, quantity=quantity))
            return True
        except IntegrityError:
            return False

    def add_usage_batch(self, entries: list[tuple[str, str, datetime, str, float]]) -> int:
        """``add_usage`` for a consumer batch of (event_id, tenant, at, metric, quantity):
        one transaction, one total per (tenant, hour, metric). Ids already counted are
        skipped; should another actor count one of them meanwhile (a unique clash), the
        batch falls back to one transaction per event. Returns how many were counted."""
        if not entries:
            return 0
        ids = [e[0] for e in entries]
        try:
            with self.engine.begin() as conn:
                seen = {row[0] for start in range(0, len(ids), lifecycle.IN_CHUNK)
                        for row in conn.execute(sa.select(usage_seen.c.event_id).where(
                            usage_seen.c.event_id.in_(ids[start:start + lifecycle.IN_CHUNK])))}
                fresh = {e[0]: e for e in entries if e[0] not in seen}  # one per id
                if not fresh:
                    return 0
                conn.execute(usage_seen.insert(), [{"event_id": i} for i in fresh])
                totals: dict[tuple[str, datetime, str], float] = defaultdict(float)
                for _, tenant_id, at, metric, quantity in fresh.values():
                    hour = at.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
                    totals[(tenant_id, hour, metric)] += quantity
                for (tenant_id, hour, metric), quantity in totals.items():
                    key = (usage_hourly.c.tenant_id == tenant_id, usage_hourly.c.hour == hour,
                           usage_hourly.c.metric == metric)
                    if not conn.execute(usage_hourly.update().where(*key).values(
                            quantity=usage_hourly.c.quantity + quantity)).rowcount:
                        conn.execute(usage_hourly.insert().values(
                            tenant_id=tenant_id, hour=hour, metric=metric, quantity=quantity))
                return len(fresh)
        except IntegrityError:  # a concurrent actor counted some of these ids first
            return sum(self.add_usage(*entry) for entry in entries)

    def usage(self, tenant_id: str, since: datetime) -> dict[datetime, dict[str, float]]:
        query = (sa.select(usage_hourly.c.hour, usage_hourly.c.metric, usage_hourly.c.quantity)
                 .where(usage_hourly.c.tenant_id == tenant_id, usage_hourly.c.hour >= since)
                 .order_by(usage_hourly.c.hour))
        out: dict[datetime, dict[str, float]] = {}
        with self.engine.connect() as conn:
            for hour, metric, quantity in conn.execute(query):
                out.setdefault(_aware(hour), {})[metric] = quantity
        return out

    def stuck(self, statuses: tuple[str, ...], uploaded_before: datetime,
              page: int = 1000) -> Iterator[ImageRow]:
        """Images still in one of ``statuses`` that were uploaded before the cut-off, oldest
        first (what ``deeplens reconcile`` and the restart sweep re-publish). Read a page at
        a time on (uploaded_at, image_id), each page on its own short connection: a backlog
        of millions is never held in memory, and the caller may write between pages."""
        after: tuple[datetime, str] | None = None
        while True:
            query = images.select().where(images.c.status.in_(statuses),
                                          images.c.uploaded_at < uploaded_before)
            if after is not None:
                query = query.where(sa.tuple_(images.c.uploaded_at, images.c.image_id)
                                    > sa.tuple_(sa.literal(after[0]), sa.literal(after[1])))
            query = query.order_by(images.c.uploaded_at, images.c.image_id).limit(page)
            with self.engine.connect() as conn:
                raw = conn.execute(query).all()
            yield from (self._row(r) for r in raw)
            if len(raw) < page:
                return
            after = (raw[-1].uploaded_at, raw[-1].image_id)  # as stored, for the next page

    def oldest_unfinished(self, statuses: tuple[str, ...] = ("uploaded", "validated",
                                                              "processed")) -> datetime | None:
        """Upload time of the oldest image not yet indexed or failed, over every tenant
        (one look-up per status on ``ix_images_status_uploaded``)."""
        oldest = None
        with self.engine.connect() as conn:
            for status in statuses:
                when = conn.execute(sa.select(sa.func.min(images.c.uploaded_at)).where(
                    images.c.status == status)).scalar()
                if when is not None:
                    when = when if when.tzinfo else when.replace(tzinfo=UTC)
                    oldest = when if oldest is None else min(oldest, when)
        return oldest

    def counts_by_tenant(self) -> dict[str, dict[str, int]]:
        """Images per status, per tenant (for operators)."""
        query = (sa.select(images.c.tenant_id, images.c.status, sa.func.count())
                 .group_by(images.c.tenant_id, images.c.status))
        out: dict[str, dict[str, int]] = {}
        with self.engine.connect() as conn:
            for tenant, status, n in conn.execute(query):
                out.setdefault(tenant, {})[status] = n
        return out

    def counts(self, tenant_id: str | None = None) -> dict[str, int]:
        query = sa.select(images.c.status, sa.func.count()).group_by(images.c.status)
        if tenant_id is not None:
            query = query.where(images.c.tenant_id == tenant_id)
        with self.engine.connect() as conn:
            return {status: n for status, n in conn.execute(query)}
