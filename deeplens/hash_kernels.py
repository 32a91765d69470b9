"""The near tier's compiled loops (numba, cached on disk; imported only where numba is
installed, by ``deeplens.hash_distances``).

``popcount`` is LLVM's ``ctpop``, so the vectoriser can use the CPU's vector popcount
(AVX-512 VPOPCNTQ where there is one) instead of a bit-twiddling sequence.

- ``rows``: one query against every stored row, (whole, windowed) distance per row;
- ``batch``: up to 64 queries against every stored row in one pass, a bit mask per row.
  Rows go in blocks of ``BLOCK``, each block turned column-major first, so the innermost
  loop runs over a block's rows (one vector lane per row) with the query's hash
  broadcast. Against the row-major form of the same loop (the inner loop over a row's
  49 windows, a horizontal minimum per row and query) it took 2-3x fewer ns per row and
  query in prototype runs at 300k and 1M rows (2026-12-08, not kept);
  ``benchmarks/near_lookup_bench.py`` records what ``HashIndex.near_many`` costs."""

from __future__ import annotations

from typing import Any

import numba
import numpy as np
from numba import types
from numba.extending import intrinsic

u64 = numba.uint64
BLOCK = 32  # rows per column-major block: 49 x 32 x 8 bytes stay in L1


@intrinsic
def popcount(typingctx: Any, x: Any) -> Any:  # noqa: ARG001 - numba's intrinsic signature
    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:  # noqa: ARG001
        return builder.ctpop(args[0])

    return types.uint64(types.uint64), codegen


def _rows(stored: np.ndarray, query: np.ndarray, centre_a: int, centre_b: int,
          whole: np.ndarray, windowed: np.ndarray) -> None:
    rows, width = stored.shape
    for r in numba.prange(rows):
        full = stored[r, 0]
        best = min(popcount(stored[r, centre_a] ^ query[centre_a]),
                   popcount(stored[r, centre_b] ^ query[centre_b]))
        for k in range(width):
            best = min(best, popcount(stored[r, k] ^ query[0]),  # query a crop of it
                       popcount(full ^ query[k]))  # or it a crop of the query
        whole[r] = popcount(full ^ query[0])
        windowed[r] = best


def _batch(stored: np.ndarray, queries: np.ndarray, centre_a: int, centre_b: int,
           whole_limit: int, window_limit: int, masks: np.ndarray) -> None:
    rows, width = stored.shape
    for b in numba.prange((rows + BLOCK - 1) // BLOCK):
        first = b * BLOCK
        count = min(rows, first + BLOCK) - first
        block = np.zeros((width, BLOCK), np.uint64)  # column-major copy of the block
        for i in range(count):
            for k in range(width):
                block[k, i] = stored[first + i, k]
        best = np.empty(BLOCK, np.uint64)
        found = np.zeros(BLOCK, np.uint64)
        for j in range(queries.shape[0]):
            q0, qa, qb = queries[j, 0], queries[j, centre_a], queries[j, centre_b]
            for i in range(BLOCK):
                best[i] = min(popcount(block[centre_a, i] ^ qa), popcount(block[centre_b, i] ^ qb))
            for k in range(width):
                qk = queries[j, k]
                for i in range(BLOCK):
                    best[i] = min(best[i], popcount(block[k, i] ^ q0), popcount(block[0, i] ^ qk))
            bit = u64(1) << u64(j)
            for i in range(BLOCK):
                if best[i] <= window_limit or popcount(block[0, i] ^ q0) <= whole_limit:
                    found[i] |= bit
        for i in range(count):
            masks[first + i] = found[i]


rows_one = numba.njit(cache=True, nogil=True)(_rows)
rows_parallel = numba.njit(parallel=True, cache=True, nogil=True)(_rows)
batch_one = numba.njit(cache=True, nogil=True)(_batch)
batch_parallel = numba.njit(parallel=True, cache=True, nogil=True)(_batch)
