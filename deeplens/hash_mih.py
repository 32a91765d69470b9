"""Multi-index hashing (Norouzi et al., 2012) over 64-bit pHashes: an exact radius search.

Each hash is cut into ``parts`` disjoint substrings. If two hashes are within Hamming
distance ``T``, then for any radii with ``sum(r_j + 1) == T + 1`` at least one substring
``j`` is within ``r_j`` (else the distance would be at least ``T + 1``). So probing every
table with each substring value flipped in up to ``r_j`` bits finds every hash within
``T``: a superset, which the caller verifies with the exact distance.

Each table is a counting sort of the entries by their substring (CSR offsets over all
``2**bits`` values, entry numbers in substring order): 4 bytes per entry per table.

Used by ``benchmarks/near_lookup_bench.py`` to measure it against the linear scan
(``deeplens.hash_distances``); see that script for what it costs and finds.
"""

from __future__ import annotations

import itertools
from functools import cache
from typing import Any

import numpy as np


def split_bits(parts: int, width: int = 64) -> list[tuple[int, int]]:
    """(shift, bits) of each substring: as equal as can be, wider ones first."""
    out, shift = [], width
    for j in range(parts):
        bits = width // parts + (1 if j < width % parts else 0)
        shift -= bits
        out.append((shift, bits))
    return out


def radii(parts: int, threshold: int) -> list[int]:
    """Radius per substring, ``sum(r + 1) == threshold + 1``: the pigeonhole bound."""
    total = threshold + 1 - parts
    return [total // parts + (1 if j < total % parts else 0) for j in range(parts)]


@cache
def flip_masks(bits: int, radius: int) -> np.ndarray:
    """Every ``bits``-wide mask with at most ``radius`` ones (none if radius < 0)."""
    masks = [sum(1 << b for b in combo) for r in range(radius + 1)
             for combo in itertools.combinations(range(bits), r)]
    return np.array(masks, dtype=np.uint64)


class MultiIndex:
    """A static multi-index over ``hashes`` (E uint64 entries); ``search`` returns the
    entry numbers within a Hamming radius, exactly."""

    def __init__(self, hashes: np.ndarray, parts: int = 3) -> None:
        self.hashes = np.ascontiguousarray(hashes, dtype=np.uint64).ravel()
        self.parts = parts
        self.layout = split_bits(parts)
        kernels = _kernels()
        n = len(self.hashes)
        self.offsets: list[np.ndarray] = []
        self.order: list[np.ndarray] = []
        for shift, bits in self.layout:
            offsets = np.zeros((1 << bits) + 1, dtype=np.uint32)
            order = np.empty(n, dtype=np.uint32)
            kernels["build"](self.hashes, np.uint64(shift), np.uint64((1 << bits) - 1),
                             offsets, order)
            self.offsets.append(offsets)
            self.order.append(order)

    def nbytes(self) -> int:
        """The tables' bytes (the hashes themselves are the caller's)."""
        return sum(o.nbytes for o in self.offsets) + sum(o.nbytes for o in self.order)

    def search(self, queries: np.ndarray, threshold: int) -> np.ndarray:
        """Entry numbers (sorted, unique) within ``threshold`` of any of ``queries``."""
        if threshold < 0 or not len(self.hashes):
            return np.empty(0, dtype=np.int64)
        kernels = _kernels()
        hits: list[np.ndarray] = []
        queries = np.ascontiguousarray(queries, dtype=np.uint64).ravel()
        for (shift, bits), radius, offsets, order in zip(
                self.layout, radii(self.parts, threshold), self.offsets, self.order,
                strict=True):
            if radius < 0:
                continue
            hits.append(kernels["probe"](self.hashes, offsets, order, queries,
                                         np.uint64(shift), np.uint64((1 << bits) - 1),
                                         flip_masks(bits, radius), threshold))
        return np.unique(np.concatenate(hits)) if hits else np.empty(0, dtype=np.int64)


@cache
def _kernels() -> dict[str, Any]:
    import numba

    u64 = numba.uint64

    @numba.njit(inline="always")
    def popcount(x: int) -> int:
        x = x - ((x >> u64(1)) & u64(0x5555555555555555))
        x = (x & u64(0x3333333333333333)) + ((x >> u64(2)) & u64(0x3333333333333333))
        x = (x + (x >> u64(4))) & u64(0x0F0F0F0F0F0F0F0F)
        return (x * u64(0x0101010101010101)) >> u64(56)  # type: ignore[no-any-return]

    @numba.njit(cache=True, nogil=True)
    def build(hashes: np.ndarray, shift: int, mask: int, offsets: np.ndarray,
              order: np.ndarray) -> None:
        for e in range(len(hashes)):  # counting sort: counts, prefix sums, scatter
            offsets[((hashes[e] >> shift) & mask) + 1] += 1
        for k in range(1, len(offsets)):
            offsets[k] += offsets[k - 1]
        fill = offsets[:-1].copy()
        for e in range(len(hashes)):
            key = (hashes[e] >> shift) & mask
            order[fill[key]] = e
            fill[key] += 1

    @numba.njit(cache=True, nogil=True)
    def probe(hashes: np.ndarray, offsets: np.ndarray, order: np.ndarray,
              queries: np.ndarray, shift: int, mask: int, flips: np.ndarray,
              threshold: int) -> np.ndarray:
        out = np.empty(64, dtype=np.int64)
        count = 0
        for q in queries:
            key = (q >> shift) & mask
            for f in flips:
                probe_key = key ^ f
                for i in range(offsets[probe_key], offsets[probe_key + 1]):
                    e = order[i]
                    if popcount(hashes[e] ^ q) <= threshold:
                        if count == len(out):
                            grown = np.empty(2 * count, dtype=np.int64)
                            grown[:count] = out
                            out = grown
                        out[count] = e
                        count += 1
        return out[:count]

    return {"build": build, "probe": probe}


class NearIndex:
    """The near tier's look-up (``HashIndex.near``'s rule) through multi-indexes over a
    static N x W window matrix: candidate rows from an exact radius search of every
    comparison the linear scan makes, then the linear scan's own kernel on those rows
    only, so the rows it returns are exactly the scan's.

    The scan's comparisons (``deeplens.hash_distances``): the query whole against every
    stored window (table ``windows``, N * W entries), every query window against the
    stored whole (``whole``), and the two centred windows against their own (``centred``).
    """

    def __init__(self, windows: np.ndarray, parts: int = 4) -> None:
        from deeplens.image_hashes import CENTRED

        self.windows = np.ascontiguousarray(windows, dtype=np.uint64)
        self.width = self.windows.shape[1]
        self.all = MultiIndex(self.windows.ravel(), parts)
        self.whole = MultiIndex(self.windows[:, 0].copy(), parts)
        self.centred = {k: MultiIndex(self.windows[:, k].copy(), parts) for k in CENTRED}

    def __len__(self) -> int:
        return len(self.windows)

    def nbytes(self) -> int:
        """The tables' bytes (not the window matrix, which the linear scan holds too)."""
        return (self.all.nbytes() + self.whole.nbytes()
                + sum(index.nbytes() for index in self.centred.values()))

    def candidates(self, query: np.ndarray, max_distance: int,
                   window_max_distance: int) -> np.ndarray:
        """Rows that may match: a superset of the scan's hits (sorted, unique)."""
        if window_max_distance < 0:
            return self.whole.search(query[:1], max_distance)
        found = [self.all.search(query[:1], max(max_distance, window_max_distance))
                 // self.width,
                 self.whole.search(query, window_max_distance)]
        found.extend(index.search(query[k : k + 1], window_max_distance)
                     for k, index in self.centred.items())
        return np.unique(np.concatenate(found))

    def near(self, query: np.ndarray, max_distance: int,
             window_max_distance: int) -> tuple[np.ndarray, np.ndarray]:
        """(rows, distance) of the stored rows that match, as ``near_rows`` finds them."""
        rows = self.candidates(query, max_distance, window_max_distance)
        hit, best = _matches(self.windows[rows], query, max_distance, window_max_distance)
        return rows[hit], best[hit]


def near_rows(windows: np.ndarray, query: np.ndarray, max_distance: int,
              window_max_distance: int) -> tuple[np.ndarray, np.ndarray]:
    """The reference: (rows, distance) matching by the linear scan over every row."""
    hit, best = _matches(windows, query, max_distance, window_max_distance)
    return np.flatnonzero(hit), best[hit]


def _matches(windows: np.ndarray, query: np.ndarray, max_distance: int,
             window_max_distance: int) -> tuple[np.ndarray, np.ndarray]:
    """HashIndex.near's rule on the given rows: whole <= max_distance, or windowed <=
    window_max_distance (unless it is negative); the distance is the smaller one."""
    from deeplens.hash_distances import near_distances

    whole, windowed = near_distances(windows, query)
    if window_max_distance < 0:
        windowed = np.full_like(whole, 999)
    hit = (whole <= max_distance) | (windowed <= window_max_distance)
    return hit, np.minimum(whole, windowed)
