"""Tombstones: which images were deleted, so no late event brings one back.

``images.deleted`` and the lifecycle topics are not ordered with each other, so
a vector, hash, duplicate link or usage row can arrive for an image after it was
deleted. The API writes a tombstone *before* it publishes the delete; every
writer checks tombstones before its write and again after it, undoing the write
when a delete landed in between. Because the tombstone precedes the delete
event, a delete processed by any other actor after that second check comes
later than the write, and removes it.

A table in the catalog database (``deleted_images``), one row per image, numbered
by ``seq`` as written: readers keep in step by sequence (``after``), never by clock.

Tombstones are pruned (``prune``) once no topic can still hold an event of the image
from before its delete: past the longest retention in the topic table. An event
that arrives later still (a replay of an old dead letter) finds no catalog row, and
the projection moves nothing that is not catalogued.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from deeplens.events import utcnow

metadata = sa.MetaData()

deleted_images = sa.Table(
    "deleted_images",
    metadata,
    sa.Column("tenant_id", sa.String(64), primary_key=True),
    sa.Column("image_id", sa.String(64), primary_key=True),
    sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("seq", sa.BigInteger, nullable=True),  # write order (migration 0006)
)

CHUNK = 5_000  # keys per IN (...): far below SQLite's and PostgreSQL's parameter limits

Key = tuple[str, str]  # (tenant_id, image_id)


class Tombstones:
    def __init__(self, url: str) -> None:
        from deeplens.db import make_engine

        self.engine = make_engine(url)  # the catalog database; schema by deeplens/migrations

    def bury(self, tenant_id: str, image_id: str) -> None:
        """Record a deletion (idempotent)."""
        try:  # numbered by the database (a sequence, or a trigger on SQLite)
            with self.engine.begin() as conn:
                conn.execute(deleted_images.insert().values(
                    tenant_id=tenant_id, image_id=image_id, deleted_at=utcnow()))
        except IntegrityError:
            pass

    def unbury(self, tenant_id: str, image_id: str) -> None:
        """Take a tombstone back (its delete never reached the broker)."""
        with self.engine.begin() as conn:
            conn.execute(deleted_images.delete().where(deleted_images.c.tenant_id == tenant_id,
                                                       deleted_images.c.image_id == image_id))

    def dead(self, keys: Iterable[Key]) -> set[Key]:
        """The keys among ``keys`` that were deleted."""
        wanted = set(keys)
        if not wanted:
            return set()
        by_tenant: dict[str, list[str]] = {}
        for tenant_id, image_id in sorted(wanted):
            by_tenant.setdefault(tenant_id, []).append(image_id)
        found: set[Key] = set()
        with self.engine.connect() as conn:  # by the full key: the primary key's index
            for tenant_id, ids in by_tenant.items():
                for start in range(0, len(ids), CHUNK):
                    query = sa.select(deleted_images.c.image_id).where(
                        deleted_images.c.tenant_id == tenant_id,
                        deleted_images.c.image_id.in_(ids[start:start + CHUNK]))
                    found.update((tenant_id, row[0]) for row in conn.execute(query))
        return found

    def of_tenant(self, tenant_id: str) -> set[str]:
        """Every deleted image id of a tenant: one range read of the primary key, for a
        reader that loads the whole tenant (cheaper than asking about each of its ids)."""
        query = sa.select(deleted_images.c.image_id).where(
            deleted_images.c.tenant_id == tenant_id)
        with self.engine.connect() as conn:
            return {row[0] for row in conn.execute(query)}

    def after(self, seq: int, upto: int | None = None,
              limit: int = 10_000) -> list[tuple[int, str, str]]:
        """(seq, tenant, image) of the tombstones numbered above ``seq`` (and at most
        ``upto``), in order, at most ``limit``."""
        t = deleted_images.c
        query = sa.select(t.seq, t.tenant_id, t.image_id).where(t.seq > seq)
        if upto is not None:
            query = query.where(t.seq <= upto)
        with self.engine.connect() as conn:
            return [(int(r[0]), r[1], r[2])
                    for r in conn.execute(query.order_by(t.seq).limit(limit))]

    def last_seq(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.max(deleted_images.c.seq))).scalar() or 0)

    def prune(self, now: datetime | None = None, keep: timedelta | None = None) -> int:
        """Remove tombstones older than ``keep`` (default: the longest retention of any
        topic, plus a day: by then no topic holds an event from before the delete).
        Returns how many were removed."""
        if keep is None:
            from deeplens.topics import TOPICS

            keep = timedelta(milliseconds=max(s.retention_ms for s in TOPICS.values()),
                             days=1)
        cut = (now or utcnow()) - keep
        with self.engine.begin() as conn:
            return int(conn.execute(deleted_images.delete().where(
                deleted_images.c.deleted_at < cut)).rowcount or 0)

    def since(self, when: datetime) -> list[tuple[str, str, datetime]]:
        """(tenant, image, deleted_at) of deletions recorded after ``when``."""
        query = (sa.select(deleted_images.c.tenant_id, deleted_images.c.image_id,
                           deleted_images.c.deleted_at)
                 .where(deleted_images.c.deleted_at > when).order_by(deleted_images.c.deleted_at))
        with self.engine.connect() as conn:
            return [(r[0], r[1], r[2] if r[2].tzinfo else r[2].replace(tzinfo=UTC))
                    for r in conn.execute(query)]

    def is_dead(self, tenant_id: str, image_id: str) -> bool:
        return bool(self.dead([(tenant_id, image_id)]))
