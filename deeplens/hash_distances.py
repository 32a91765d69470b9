"""The near tier's distance kernels: whole-image and windowed Hamming distances between
one image's window pHashes and every stored image of a tenant (``deeplens.hash_index``
keeps the stored matrix; ``deeplens.image_hashes`` makes the hashes)."""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

_POOL: ThreadPoolExecutor | None = None
_PARALLEL_ROWS = 20_000  # below this one thread is faster than handing out work


def near_distances(stored: np.ndarray, query: np.ndarray,
                   chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """(whole, windowed) distances between each row of ``stored`` (N x W window hashes,
    whole image first) and ``query`` (W).

    One fused pass per row, compiled by numba and spread over the cores. Without numba,
    the same sums in numpy: rows in chunks that stay in the CPU's cache (the XOR buffer
    is reused, one byte per row comes out), over up to 4 threads (numpy releases the GIL
    in these loops). Timed by ``benchmarks/dedup_bench.py`` (``results/dedup.json``,
    ``lookup_ms``: the numba kernel over 100,000 rows); no figure is kept here, where
    no test would notice it going stale."""
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


def near_hits(stored: np.ndarray, queries: np.ndarray, whole_limit: int,
              window_limit: int) -> np.ndarray:
    """For up to 64 ``queries`` (Q x W) at once: per row of ``stored`` a bit mask, bit j
    set where the row is near query j (whole <= ``whole_limit`` or windowed <=
    ``window_limit``, the distances of ``near_distances``).

    One pass over the stored rows for a whole batch of look-ups: a row's window hashes
    are read once for every query of the batch, where a look-up per image read the
    tenant's matrix once per image (``benchmarks/near_lookup_bench.py`` measures both)."""
    from deeplens.image_hashes import CENTRED

    if len(queries) > 64:
        raise ValueError("near_hits takes at most 64 queries (one bit each)")
    if len(queries) and len(stored) and queries.shape[1] != stored.shape[1]:
        raise ValueError(f"queries have {queries.shape[1]} window hashes, the stored rows "
                         f"{stored.shape[1]}")  # the compiled loops do not check bounds
    n = len(stored)
    masks = np.zeros(n, dtype=np.uint64)
    kernels = _compiled_kernels()
    if kernels is not None and n:
        kernel = kernels[3] if n >= _PARALLEL_ROWS else kernels[2]
        kernel(np.ascontiguousarray(stored), np.ascontiguousarray(queries, dtype=np.uint64),
               CENTRED[0], CENTRED[1], whole_limit, window_limit, masks)
        return masks
    for j, query in enumerate(queries):  # numpy: one pass per query
        whole, windowed = near_distances(stored, query)
        masks[(whole <= whole_limit) | (windowed <= window_limit)] |= np.uint64(1 << j)
    return masks


def hits_of(stored: np.ndarray, queries: np.ndarray, masks: np.ndarray,
            rows: np.ndarray | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per query of a ``near_hits`` pass: (its rows, ascending; their distance, the smaller
    of whole and windowed). ``rows``: where to look (default: every row with a bit set)."""
    rows = np.flatnonzero(masks) if rows is None else rows
    out = []
    for bit, query in enumerate(queries):
        hit = rows[(masks[rows] >> np.uint64(bit)) & np.uint64(1) == 1]
        whole, windowed = near_distances(stored[hit], query)
        out.append((hit, np.minimum(whole, windowed)))
    return out


@cache
def _compiled_kernels() -> tuple[Any, Any, Any, Any] | None:
    """The fused distance loops compiled by numba (``deeplens.hash_kernels``, cached on
    disk): per row and batched, one thread and all cores; None without numba."""
    try:
        from deeplens import hash_kernels as k
    except ImportError:
        log.warning("numba is not installed: near-duplicate look-ups use numpy (~3x slower)")
        return None
    return k.rows_one, k.rows_parallel, k.batch_one, k.batch_parallel


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
