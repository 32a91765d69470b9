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
