"""Content hashes of every image, per tenant: the exact and near tiers of dedup.

A table in the catalog database (``image_hashes``), written by the dedup actors.
Near-duplicate search keeps each tenant's perceptual hashes in memory as a numpy
array and refreshes it incrementally (rows carry an increasing ``seq``), so a
tenant's millionth image is compared with a vectorised popcount, not a scan of
the database, and rows written by other dedup actors are seen too.

Several dedup actors share the table, and each keeps its own cache, so:

- a refresh re-reads a window of ``REFRESH_OVERLAP`` sequence numbers below the
  highest it has seen: a row that took its ``seq`` early but committed late (two
  writers on PostgreSQL) is still picked up;
- matches from the cache are confirmed against the table before they are
  returned, so an image another actor forgot (deleted) is never reported.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import numpy as np
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

metadata = sa.MetaData()

image_hashes = sa.Table(
    "image_hashes",
    metadata,
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("tenant_id", sa.String(64), nullable=False),
    sa.Column("image_id", sa.String(64), nullable=False),
    sa.Column("sha256", sa.String(64), nullable=False),
    sa.Column("pixel_sha256", sa.String(64), nullable=False),
    sa.Column("phash", sa.BigInteger, nullable=False),  # 64-bit pHash, stored signed
    sa.UniqueConstraint("tenant_id", "image_id", name="uq_hashes_tenant_image"),
    sqlite_autoincrement=True,  # never reuse a deleted row's seq
)

REFRESH_OVERLAP = 1000

_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def to_signed(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def hamming(a: np.ndarray, b: int) -> np.ndarray:
    """Bit differences between each of ``a`` (uint64) and ``b``."""
    x = np.bitwise_xor(a, np.uint64(b & 0xFFFFFFFFFFFFFFFF))
    return _POPCOUNT[x.view(np.uint8)].reshape(-1, 8).sum(axis=1)


@dataclass
class _TenantHashes:
    last_seq: int = 0
    ids: list[str] = field(default_factory=list)
    known: set[str] = field(default_factory=set)
    hashes: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.uint64))


class HashIndex:
    def __init__(self, url: str) -> None:
        from deeplens.db import make_engine

        self.engine = make_engine(url)  # the catalog database; schema by deeplens/migrations
        self._cache: dict[str, _TenantHashes] = {}
        self._lock = threading.Lock()

    def add(self, tenant_id: str, image_id: str, sha256: str, pixel_sha256: str,
            phash: int) -> None:
        """Record an image's hashes (idempotent: a redelivery changes nothing)."""
        try:
            with self.engine.begin() as conn:
                conn.execute(image_hashes.insert().values(
                    tenant_id=tenant_id, image_id=image_id, sha256=sha256,
                    pixel_sha256=pixel_sha256, phash=to_signed(phash)))
        except IntegrityError:
            pass

    def exact(self, tenant_id: str, image_id: str, sha256: str, pixel_sha256: str) -> list[str]:
        """Other images of the tenant with the same bytes or the same decoded pixels."""
        query = sa.select(image_hashes.c.image_id).where(
            image_hashes.c.tenant_id == tenant_id, image_hashes.c.image_id != image_id,
            sa.or_(image_hashes.c.sha256 == sha256,
                   image_hashes.c.pixel_sha256 == pixel_sha256))
        with self.engine.connect() as conn:
            return [row[0] for row in conn.execute(query)]

    def near(self, tenant_id: str, image_id: str, phash: int,
             max_distance: int) -> list[tuple[str, int]]:
        """(image_id, Hamming distance) of the tenant's images within ``max_distance``."""
        with self._lock:
            cached = self._refresh(tenant_id)
            if not cached.ids:
                return []
            distances = hamming(cached.hashes, phash)
            close = np.nonzero(distances <= max_distance)[0]
            found = [(cached.ids[i], int(distances[i])) for i in close
                     if cached.ids[i] != image_id]
        if not found:
            return []
        alive = self._alive(tenant_id, [i for i, _ in found])
        if len(alive) < len(found):  # another actor forgot some: drop them here too
            with self._lock:
                self._cache.pop(tenant_id, None)
        return [(i, d) for i, d in found if i in alive]

    def _alive(self, tenant_id: str, image_ids: list[str]) -> set[str]:
        query = sa.select(image_hashes.c.image_id).where(
            image_hashes.c.tenant_id == tenant_id, image_hashes.c.image_id.in_(image_ids))
        with self.engine.connect() as conn:
            return {row[0] for row in conn.execute(query)}

    def _refresh(self, tenant_id: str) -> _TenantHashes:
        cached = self._cache.setdefault(tenant_id, _TenantHashes())
        query = (sa.select(image_hashes.c.seq, image_hashes.c.image_id, image_hashes.c.phash)
                 .where(image_hashes.c.tenant_id == tenant_id,
                        image_hashes.c.seq > cached.last_seq - REFRESH_OVERLAP)
                 .order_by(image_hashes.c.seq))
        with self.engine.connect() as conn:
            rows = [r for r in conn.execute(query).all() if r[1] not in cached.known]
        if rows:
            cached.ids.extend(r[1] for r in rows)
            cached.known.update(r[1] for r in rows)
            fresh = np.array([r[2] for r in rows], dtype=np.int64).view(np.uint64)
            cached.hashes = np.concatenate([cached.hashes, fresh])
            cached.last_seq = max(cached.last_seq, rows[-1][0])
        return cached

    def forget(self, tenant_id: str, image_id: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(image_hashes.delete().where(image_hashes.c.tenant_id == tenant_id,
                                                     image_hashes.c.image_id == image_id))
        with self._lock:  # rebuilt from the table on next use
            self._cache.pop(tenant_id, None)
