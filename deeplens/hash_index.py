"""Content hashes of every image, per tenant: the exact and near tiers of dedup.

A table in the catalog database (``image_hashes``), written by the dedup actors.
Near-duplicate search keeps each tenant's perceptual hashes in memory as numpy
arrays and refreshes them incrementally (rows carry an increasing ``seq``), so a
tenant's millionth image is compared with a vectorised popcount, not a scan of
the database, and rows written by other dedup actors are seen too. With the windows
off (``window_max_distance < 0``) a large tenant is looked up through a multi-index
of its whole-image pHashes (``TenantHashes.whole_within``), with the same answers.
The windowed rule stays a scan: no exact index of it pays (benchmarks/RESULTS.md,
``near_lookup_bench``). A consumer batch's look-ups share one pass over the tenant's
rows (``near_many``): each row's window hashes are read once for up to 64 images.

Two near distances per pair of images (``near_distances``):

- **whole**: the Hamming distance of the two whole-image pHashes (re-encodes,
  resizes, brightness, format changes);
- **windowed**: the smallest distance between one image whole and a window of the
  other, either way round, or between their centred windows (crops of up to 15 %
  a side, small rotations whose corners changed). See ``deeplens.image_hashes``.

Several dedup actors share the table, and each keeps its own cache, so:

- a refresh reads the rows past the highest ``seq`` it has seen (in pages: a first
  load of a million rows streams) and, at most every ``SWEEP_EVERY_S``, re-reads the
  ``seq`` numbers of a window of ``REFRESH_OVERLAP`` below it: a row that took its
  ``seq`` early but committed late (two writers on PostgreSQL) is still picked up.
  Hashes are fetched for rows not yet cached only;
- matches from the cache are confirmed against the table before they are
  returned, so an image another actor forgot (deleted) is never reported; its slot
  is marked dead, as ``forget`` marks its own: a delete never reloads a tenant.

What a tenant costs: ~420 bytes per stored image (49 window hashes, a 16-byte id,
its ``seq``), arrays grown by half again when full, dead slots compacted once a
quarter of the rows are dead; ``max_bytes`` drops the least recently used tenants.
Every id list sent to the database is cut into ``IN_CHUNK`` slices.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from deeplens.hash_cache import TenantHashes, append_rows, windows_of
from deeplens.hash_distances import hits_of, near_distances, near_hits, numpy_distances

__all__ = ["HashIndex", "image_hashes", "near_distances", "numpy_distances", "to_signed"]

log = logging.getLogger(__name__)

metadata = sa.MetaData()

image_hashes = sa.Table(
    "image_hashes",
    metadata,
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("tenant_id", sa.String(64), nullable=False),
    sa.Column("image_id", sa.String(64), nullable=False),
    sa.Column("sha256", sa.String(64), nullable=False),
    sa.Column("pixel_sha256", sa.String(128), nullable=False),  # "px1:" + sha256 hex
    sa.Column("phash", sa.BigInteger, nullable=False),  # 64-bit pHash, stored signed
    sa.Column("windows", sa.LargeBinary, nullable=True),  # window pHashes, big-endian u64
    sa.UniqueConstraint("tenant_id", "image_id", name="uq_hashes_tenant_image"),
    sqlite_autoincrement=True,  # never reuse a deleted row's seq
)

REFRESH_OVERLAP = 1000
SWEEP_EVERY_S = 1.0
LOAD_PAGE = 50_000  # rows per query when a tenant loads: bounded memory while it streams
IN_CHUNK = 5_000  # ids per IN (...): far below SQLite's (32,766 by default) and PostgreSQL's (65,535) limits


def to_signed(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


Query = tuple[str, int, "np.ndarray | None"]  # image id, pHash, window pHashes (or None)


def _named(cached: TenantHashes, slots: np.ndarray, distances: np.ndarray,
           image_id: str) -> list[tuple[str, int, int]]:
    """(image id, distance, slot) of ``slots``, the look-up's own image left out."""
    named = [(cached.image_id(s), int(d), s) for s, d in
             zip(slots.tolist(), distances.tolist(), strict=True)]
    return [hit for hit in named if hit[0] != image_id]


def chunked(values: Sequence[Any], size: int = IN_CHUNK) -> Iterator[Sequence[Any]]:
    """``values`` in slices of at most ``size``: every ``IN (...)`` stays far below
    SQLite's and PostgreSQL's limits on bound parameters, whatever the tenant's size."""
    for start in range(0, len(values), size):
        yield values[start:start + size]


class HashIndex:
    def __init__(self, url: str, max_bytes: int = 0) -> None:
        """``max_bytes``: memory budget of the cached tenants (0: unbounded); past it the
        least recently used tenants are dropped, and reloaded when asked for again."""
        from deeplens.db import make_engine

        self.engine = make_engine(url)  # the catalog database; schema by deeplens/migrations
        self.max_bytes = max_bytes
        self._cache: OrderedDict[str, TenantHashes] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, tenant_id: str, image_id: str, sha256: str, pixel_sha256: str,
            phash: int, windows: np.ndarray | None = None) -> None:
        """Record an image's hashes (idempotent: a redelivery changes nothing)."""
        blob = np.asarray(windows, dtype=">u8").tobytes() if windows is not None else None
        try:
            with self.engine.begin() as conn:
                conn.execute(image_hashes.insert().values(
                    tenant_id=tenant_id, image_id=image_id, sha256=sha256,
                    pixel_sha256=pixel_sha256, phash=to_signed(phash), windows=blob))
        except IntegrityError:
            pass

    def exact(self, tenant_id: str, image_id: str, sha256: str, pixel_sha256: str) -> list[str]:
        """Other images of the tenant with the same bytes or the same decoded pixels."""
        t = image_hashes.c
        # A UNION of two index look-ups: with OR, SQLite scanned the tenant's rows (44 ms
        # per image at 100,000 stored, benchmarks/scale_bench.py).
        query = sa.union(*(sa.select(t.image_id).where(t.tenant_id == tenant_id, match,
                                                         t.image_id != image_id)
                           for match in (t.sha256 == sha256, t.pixel_sha256 == pixel_sha256)))
        with self.engine.connect() as conn:
            return [row[0] for row in conn.execute(query)]

    def near(self, tenant_id: str, image_id: str, phash: int, max_distance: int,
             windows: np.ndarray | None = None,
             window_max_distance: int = -1, refresh: bool = True) -> list[tuple[str, int]]:
        """(image_id, distance) of the tenant's images whose whole-image pHash is within
        ``max_distance``, or, given the image's window hashes, whose windowed distance
        is within ``window_max_distance``. The distance reported is the smaller one.
        ``refresh=False``: the cache as the caller's last :meth:`refresh` left it."""
        return self.near_many(tenant_id, [(image_id, phash, windows)], max_distance,
                              window_max_distance, refresh)[0]

    def near_many(self, tenant_id: str, queries: Sequence[Query], max_distance: int,
                  window_max_distance: int = -1,
                  refresh: bool = True) -> list[list[tuple[str, int]]]:
        """:meth:`near` for each of ``queries`` (image id, pHash, window hashes or None),
        in one pass over the tenant's cache per 64 images (``near_hits``): a consumer
        batch's look-ups, after one refresh that follows the batch's writes. The cache's
        lock is held through the pass (a compaction or growth would move the arrays), so
        this actor's other look-ups and forgets wait for it: ~0.6 s per 64 images at 1M
        stored (benchmarks/RESULTS.md, near_lookup_bench)."""
        from deeplens.image_hashes import WINDOWS

        # A query without window hashes (an old event) is matched whole-image only, as
        # every query is with the windows off.
        windowed = [j for j, (_, _, w) in enumerate(queries)
                    if w is not None and window_max_distance >= 0]
        whole_only = sorted(set(range(len(queries))) - set(windowed))
        for image_id, _, windows in (queries[j] for j in windowed):  # kernels: no bounds check
            if windows is not None and len(windows) != len(WINDOWS):
                raise ValueError(f"image {image_id}: {len(windows)} window hashes, "
                                 f"expected {len(WINDOWS)}")
        stacked = np.stack([windows_of(phash, np.asarray(windows, dtype=">u8").tobytes()
                                       if j in windowed else None)
                            for j, (_, phash, windows) in enumerate(queries)]) if queries else None
        found: list[list[tuple[str, int, int]]] = [[] for _ in queries]
        with self._lock:
            cached = self._cache.get(tenant_id) if not refresh else None
            cached = cached if cached is not None else self._refresh(tenant_id)
            if not len(cached) or stacked is None:
                return [[] for _ in queries]
            generation = cached.generation
            for j in whole_only:
                slots = cached.whole_within(stacked[j, 0], max_distance)
                slots = slots[cached.alive[slots]]
                found[j] = _named(cached, slots, np.bitwise_count(
                    cached.windows[slots, 0] ^ stacked[j, 0]), queries[j][0])
            for first in range(0, len(windowed), 64):
                chunk = windowed[first:first + 64]
                part = stacked[chunk]
                masks = near_hits(cached.windows[: cached.n], part, max_distance,
                                  window_max_distance)
                masks[~cached.alive[: cached.n]] = 0
                for j, (slots, best) in zip(chunk, hits_of(cached.windows, part, masks),
                                            strict=True):
                    found[j] = _named(cached, slots, best, queries[j][0])
        everyone = sorted({i for hits in found for i, _, _ in hits})
        if not everyone:
            return [[] for _ in queries]
        alive = self._alive(tenant_id, everyone)
        if len(alive) < len(everyone):  # another actor forgot some: drop their slots here too
            with self._lock:  # unless the slots moved meanwhile (a compaction)
                if self._cache.get(tenant_id) is cached and cached.generation == generation:
                    cached.kill(s for hits in found for i, _, s in hits if i not in alive)
        return [[(i, d) for i, d, _ in hits if i in alive] for hits in found]

    def refresh(self, tenant_id: str) -> None:
        """Bring the tenant's cache up to date now (what every ``near`` does first)."""
        with self._lock:
            self._refresh(tenant_id)

    def _alive(self, tenant_id: str, image_ids: list[str]) -> set[str]:
        out: set[str] = set()
        with self.engine.connect() as conn:
            for part in chunked(image_ids):
                out.update(row[0] for row in conn.execute(sa.select(image_hashes.c.image_id)
                           .where(image_hashes.c.tenant_id == tenant_id,
                                  image_hashes.c.image_id.in_(part))))
        return out

    def cached_bytes(self) -> int:
        return sum(c.nbytes() for c in self._cache.values())

    def _refresh(self, tenant_id: str) -> TenantHashes:
        """The tenant's cache brought up to date: rows past the highest ``seq`` seen, in
        pages (a first load of a large tenant streams), and now and then an overlap sweep
        for rows that committed late. Called with the lock held."""
        from deeplens.image_hashes import WINDOWS

        cached = self._cache.get(tenant_id)
        if cached is None:
            cached = self._cache[tenant_id] = TenantHashes(len(WINDOWS))
        self._cache.move_to_end(tenant_id)
        now = time.monotonic()
        t = image_hashes.c
        columns = (t.seq, t.image_id, t.phash, t.windows)
        with self.engine.connect() as conn:
            if now - cached.swept_at >= SWEEP_EVERY_S and cached.last_seq:
                cached.swept_at = now
                recent = [r[0] for r in conn.execute(sa.select(t.seq).where(
                    t.tenant_id == tenant_id, t.seq > cached.last_seq - REFRESH_OVERLAP,
                    t.seq <= cached.last_seq))]
                missing = [s for s, slot in zip(recent, cached.slots_of(recent).tolist(),
                                                strict=True) if slot < 0]
                for part in chunked(missing):
                    append_rows(cached, conn.execute(sa.select(*columns).where(
                        t.tenant_id == tenant_id, t.seq.in_(part)).order_by(t.seq)).all())
            elif not cached.last_seq:
                cached.swept_at = now
            while True:
                rows = conn.execute(sa.select(*columns).where(
                    t.tenant_id == tenant_id, t.seq > cached.last_seq)
                    .order_by(t.seq).limit(LOAD_PAGE)).all()
                append_rows(cached, rows)
                if len(rows) < LOAD_PAGE:
                    break
        self._evict(keep=tenant_id)
        return cached

    def _evict(self, keep: str) -> None:
        """Drop least recently used tenants while the cache is over its budget."""
        if not self.max_bytes:
            return
        total = self.cached_bytes()
        for tenant in list(self._cache):
            if total <= self.max_bytes:
                break
            if tenant != keep:
                total -= self._cache.pop(tenant).nbytes()
                log.info("near-duplicate cache over budget: dropped tenant %s", tenant)

    def forget(self, tenant_id: str, image_id: str) -> None:
        """Delete the image's hashes; its slot in this actor's cache is marked dead (no
        reload: other actors drop theirs when a look-up finds the row gone)."""
        with self.engine.begin() as conn:
            gone = [row[0] for row in conn.execute(image_hashes.delete().where(
                image_hashes.c.tenant_id == tenant_id, image_hashes.c.image_id == image_id)
                .returning(image_hashes.c.seq))]
        if gone:
            with self._lock:
                cached = self._cache.get(tenant_id)
                if cached is not None:
                    cached.kill(int(s) for s in cached.slots_of(gone).tolist())
