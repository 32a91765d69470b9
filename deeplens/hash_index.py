"""Content hashes of every image, per tenant: the exact and near tiers of dedup.

A table in the catalog database (``image_hashes``), written by the dedup actors.
Near-duplicate search keeps each tenant's perceptual hashes in memory as numpy
arrays and refreshes them incrementally (rows carry an increasing ``seq``), so a
tenant's millionth image is compared with a vectorised popcount, not a scan of
the database, and rows written by other dedup actors are seen too.

Two near distances per pair of images (``near_distances``):

- **whole**: the Hamming distance of the two whole-image pHashes (re-encodes,
  resizes, brightness, format changes);
- **windowed**: the smallest distance between one image whole and a window of the
  other, either way round, or between their centred windows (crops of up to 15 %
  a side, small rotations whose corners changed). See ``deeplens.image_hashes``.

Several dedup actors share the table, and each keeps its own cache, so:

- a refresh reads the rows past the highest ``seq`` it has seen and, at most every
  ``SWEEP_EVERY_S``, re-reads the ids of a window of ``REFRESH_OVERLAP`` sequence
  numbers below it: a row that took its ``seq`` early but committed late (two
  writers on PostgreSQL) is still picked up. Only ids are re-read; hashes are
  fetched for rows not yet cached (re-reading 1,000 rows of hashes per image was
  most of the dedup actor's CPU in ``ceiling_bench --profile``);
- matches from the cache are confirmed against the table before they are
  returned, so an image another actor forgot (deleted) is never reported.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import numpy as np
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

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


def to_signed(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


_POOL: ThreadPoolExecutor | None = None
_PARALLEL_ROWS = 20_000  # below this one thread is faster than handing out work


def near_distances(stored: np.ndarray, query: np.ndarray,
                   chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """(whole, windowed) distances between each row of ``stored`` (N x W window hashes,
    whole image first) and ``query`` (W).

    One fused pass per row, compiled by numba and spread over the cores: 4.0 ms for
    100,000 rows on the 2-core development machine (benchmarks/dedup_bench.py).
    Without numba, the same sums in numpy: rows in chunks that stay in the CPU's cache
    (the XOR buffer is reused, one byte per row comes out), over up to 4 threads
    (numpy releases the GIL in these loops): ~11-14 ms for 100,000 rows."""
    from deeplens.image_hashes import CENTRED

    n = len(stored)
    whole = np.empty(n, dtype=np.uint8)
    windowed = np.empty(n, dtype=np.uint8)
    kernels = _compiled_kernels()
    if kernels is not None and n:
        # Threads only where they pay: a parallel region's workers spin for a while after
        # it ends, which on a small tenant costs more CPU than the pass itself.
        kernel = kernels[1] if n >= _PARALLEL_ROWS else kernels[0]
        kernel(np.ascontiguousarray(stored), np.ascontiguousarray(query), CENTRED[0],
               CENTRED[1], whole, windowed)
        return whole.astype(np.int64), windowed.astype(np.int64)
    numpy_distances(stored, query, whole, windowed, chunk)
    return whole.astype(np.int64), windowed.astype(np.int64)


def numpy_distances(stored: np.ndarray, query: np.ndarray, whole: np.ndarray,
                    windowed: np.ndarray, chunk: int = 4096) -> None:
    """``near_distances`` in numpy alone (the fallback, and the reference in tests)."""
    global _POOL
    n = len(stored)
    parts = min(4, os.cpu_count() or 1) if n >= _PARALLEL_ROWS else 1
    step = -(-n // parts) if n else 0
    spans = [(i * step, min(n, (i + 1) * step)) for i in range(parts)]
    if parts == 1:
        _distances_into(stored, query, whole, windowed, 0, n, chunk)
    else:
        _POOL = _POOL or ThreadPoolExecutor(4, thread_name_prefix="near-distances")
        list(_POOL.map(lambda span: _distances_into(stored, query, whole, windowed, *span,
                                                    chunk), spans))


@cache
def _compiled_kernels() -> tuple[Any, Any] | None:
    """The fused distance loop compiled by numba (cached on disk), one thread and all
    cores; None without numba."""
    try:
        import numba
    except ImportError:
        log.warning("numba is not installed: near-duplicate look-ups use numpy (~3x slower)")
        return None
    u64 = numba.uint64

    @numba.njit(inline="always")
    def popcount(x: int) -> int:  # SWAR popcount of a 64-bit word
        x = x - ((x >> u64(1)) & u64(0x5555555555555555))
        x = (x & u64(0x3333333333333333)) + ((x >> u64(2)) & u64(0x3333333333333333))
        x = (x + (x >> u64(4))) & u64(0x0F0F0F0F0F0F0F0F)
        return (x * u64(0x0101010101010101)) >> u64(56)  # type: ignore[no-any-return]

    def body(stored: np.ndarray, query: np.ndarray, centre_a: int, centre_b: int,
             whole: np.ndarray, windowed: np.ndarray) -> None:
        rows, width = stored.shape
        for r in numba.prange(rows):
            full = stored[r, 0]
            best = popcount(stored[r, centre_a] ^ query[centre_a])
            best = min(best, popcount(stored[r, centre_b] ^ query[centre_b]))
            for k in range(width):
                best = min(best, popcount(stored[r, k] ^ query[0]))  # query a crop of it
                best = min(best, popcount(full ^ query[k]))  # or it a crop of the query
            whole[r] = popcount(full ^ query[0])
            windowed[r] = best

    return (numba.njit(cache=True, nogil=True)(body),
            numba.njit(parallel=True, cache=True, nogil=True)(body))


def _distances_into(stored: np.ndarray, query: np.ndarray, whole: np.ndarray,
                    windowed: np.ndarray, start: int, stop: int, chunk: int) -> None:
    from deeplens.image_hashes import CENTRED

    buffer = np.empty((min(chunk, max(stop - start, 1)), stored.shape[1]), dtype=np.uint64)
    for first in range(start, stop, chunk):
        rows = stored[first : min(first + chunk, stop)]
        xor = buffer[: len(rows)]
        np.bitwise_xor(rows, query[0], out=xor)  # the query is a crop of a stored image
        best = np.bitwise_count(xor).min(axis=1)
        whole[first : first + len(rows)] = np.bitwise_count(xor[:, 0])
        np.bitwise_xor(rows[:, :1], query[None, :], out=xor)  # or a stored one of the query
        np.minimum(best, np.bitwise_count(xor).min(axis=1), out=best)
        for k in CENTRED:  # both cropped, or both rotated: their centres agree
            np.minimum(best, np.bitwise_count(rows[:, k] ^ query[k]), out=best)
        windowed[first : first + len(rows)] = best


def _windows_of(phash: int, windows: bytes | None) -> np.ndarray:
    from deeplens.image_hashes import WINDOWS

    if windows:
        return np.frombuffer(windows, dtype=">u8").astype(np.uint64)
    # A row from before window hashes: its whole-image pHash stands in for every window.
    return np.full(len(WINDOWS), np.uint64(phash & 0xFFFFFFFFFFFFFFFF), dtype=np.uint64)


@dataclass
class _TenantHashes:
    last_seq: int = 0
    swept_at: float = float("-inf")  # monotonic time of the last overlap sweep
    ids: list[str] = field(default_factory=list)
    known: set[str] = field(default_factory=set)
    windows: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), dtype=np.uint64))


class HashIndex:
    def __init__(self, url: str) -> None:
        from deeplens.db import make_engine

        self.engine = make_engine(url)  # the catalog database; schema by deeplens/migrations
        self._cache: dict[str, _TenantHashes] = {}
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
        query = sa.select(image_hashes.c.image_id).where(
            image_hashes.c.tenant_id == tenant_id, image_hashes.c.image_id != image_id,
            sa.or_(image_hashes.c.sha256 == sha256,
                   image_hashes.c.pixel_sha256 == pixel_sha256))
        with self.engine.connect() as conn:
            return [row[0] for row in conn.execute(query)]

    def near(self, tenant_id: str, image_id: str, phash: int, max_distance: int,
             windows: np.ndarray | None = None,
             window_max_distance: int = -1) -> list[tuple[str, int]]:
        """(image_id, distance) of the tenant's images whose whole-image pHash is within
        ``max_distance``, or, given the image's window hashes, whose windowed distance
        is within ``window_max_distance``. The distance reported is the smaller one."""
        query = _windows_of(phash, None if windows is None else
                            np.asarray(windows, dtype=">u8").tobytes())
        with self._lock:
            cached = self._refresh(tenant_id)
            if not cached.ids:
                return []
            whole, windowed = near_distances(cached.windows, query)
            if windows is None or window_max_distance < 0:
                windowed = np.full_like(whole, 999)
            hit = (whole <= max_distance) | (windowed <= window_max_distance)
            best = np.minimum(whole, windowed)
            found = [(cached.ids[i], int(best[i])) for i in np.nonzero(hit)[0]
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
        now = time.monotonic()
        sweep = now - cached.swept_at >= SWEEP_EVERY_S
        low = cached.last_seq - REFRESH_OVERLAP if sweep else cached.last_seq
        t = image_hashes.c
        with self.engine.connect() as conn:
            seen = conn.execute(sa.select(t.seq, t.image_id).where(
                t.tenant_id == tenant_id, t.seq > low)).all()
            new = [image_id for _, image_id in seen if image_id not in cached.known]
            rows = conn.execute(sa.select(t.seq, t.image_id, t.phash, t.windows).where(
                t.tenant_id == tenant_id, t.image_id.in_(new)).order_by(t.seq)).all() \
                if new else []
        if sweep:
            cached.swept_at = now
        if rows:
            cached.ids.extend(r[1] for r in rows)
            cached.known.update(r[1] for r in rows)
            fresh = np.stack([_windows_of(int(r[2]), r[3]) for r in rows])
            cached.windows = (fresh if not len(cached.windows)
                              else np.concatenate([cached.windows, fresh]))
        if seen:
            cached.last_seq = max(cached.last_seq, max(seq for seq, _ in seen))
        return cached

    def forget(self, tenant_id: str, image_id: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(image_hashes.delete().where(image_hashes.c.tenant_id == tenant_id,
                                                     image_hashes.c.image_id == image_id))
        with self._lock:  # rebuilt from the table on next use
            self._cache.pop(tenant_id, None)
