"""The multi-index near look-up returns exactly the linear scan's matches."""

from __future__ import annotations

import numpy as np
import pytest

from deeplens.hash_mih import MultiIndex, NearIndex, near_rows, radii, split_bits
from deeplens.image_hashes import CENTRED, WINDOWS


def _flipped(rng: np.random.Generator, value: np.uint64, bits: int) -> np.uint64:
    """``value`` with exactly ``bits`` distinct bits flipped."""
    mask = 0
    for b in rng.choice(64, size=bits, replace=False).tolist():
        mask |= 1 << b
    return np.uint64(int(value) ^ mask)


def _random(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return rng.integers(0, 2**63, size=shape, dtype=np.int64).view(np.uint64) \
        * np.uint64(2) + rng.integers(0, 2, size=shape).astype(np.uint64)


def test_the_substrings_cover_64_bits_and_the_radii_meet_the_pigeonhole_bound() -> None:
    for parts in (2, 3, 4, 5):
        layout = split_bits(parts)
        assert sum(bits for _, bits in layout) == 64 and layout[-1][0] == 0
        for threshold in range(0, 33):
            assert sum(r + 1 for r in radii(parts, threshold)) == threshold + 1


@pytest.mark.parametrize("parts", [3, 4])
@pytest.mark.parametrize("threshold", [0, 3, 10, 12])
def test_a_radius_search_finds_every_hash_within_it_and_no_other(parts, threshold) -> None:
    rng = np.random.default_rng(parts * 100 + threshold)
    hashes = _random(rng, 4000)
    query = _random(rng, 1)[0]
    for d in range(0, 15):  # planted at every distance, a few times each
        for _ in range(3):
            hashes[rng.integers(len(hashes))] = _flipped(rng, query, d)
    found = MultiIndex(hashes, parts).search(np.array([query]), threshold)
    brute = np.flatnonzero(np.bitwise_count(hashes ^ query) <= threshold)
    np.testing.assert_array_equal(found, brute)
    assert len(brute) >= 3 * (min(threshold, 14) + 1) - 3  # the planted ones (barring overwrites)


def _planted(rng: np.random.Generator, rows: int, query: np.ndarray,
             top: int) -> np.ndarray:
    """Random rows, and rows near the query at every distance 0..top through each
    comparison the scan makes: a stored window against the query whole, the stored
    whole against a query window, a centred window against the query's, whole/whole."""
    stored = _random(rng, rows, len(WINDOWS))
    row = 0
    for d in range(top + 1):
        k = int(rng.integers(1, len(WINDOWS)))
        stored[row, k] = _flipped(rng, query[0], d)  # the query is a crop of it
        stored[row + 1, 0] = _flipped(rng, query[k], d)  # it is a crop of the query
        for i, c in enumerate(CENTRED):  # both cropped the same way
            stored[row + 2 + i, c] = _flipped(rng, query[c], d)
        stored[row + 4, 0] = _flipped(rng, query[0], d)  # a re-encode
        row += 5
    return stored


@pytest.mark.parametrize("limits", [(10, 12), (10, -1), (12, 10), (0, 0), (6, 8)])
def test_the_near_index_matches_exactly_what_the_linear_scan_matches(limits) -> None:
    rng = np.random.default_rng(sum(limits) + 50)
    query = _random(rng, len(WINDOWS))
    stored = _planted(rng, 6000, query, max(limits) + 1)
    index = NearIndex(stored)
    for q in (query, _random(rng, len(WINDOWS)), np.full(len(WINDOWS), query[0])):
        rows, best = index.near(q, *limits)
        ref_rows, ref_best = near_rows(stored, q, *limits)
        np.testing.assert_array_equal(rows, ref_rows)
        np.testing.assert_array_equal(best, ref_best)
    rows, _ = index.near(query, *limits)
    whole_limit, window_limit = limits
    expected = set()  # every comparison planted within its limit, none past it
    for d in range(max(limits) + 2):
        if d <= window_limit:
            expected.update(5 * d + j for j in range(4))
        if d <= max(whole_limit, window_limit):
            expected.add(5 * d + 4)
    assert {r for r in rows.tolist() if r < 5 * (max(limits) + 2)} == expected


def test_the_cache_s_whole_image_look_up_is_the_scan_through_appends_and_compaction(
        monkeypatch) -> None:
    """The windows-off look-up of a tenant's cache: a multi-index once it is large, rows
    appended since scanned, rebuilt past an eighth; slots compacted drop the index."""
    from deeplens import hash_cache
    from deeplens.hash_cache import TenantHashes

    monkeypatch.setattr(hash_cache, "INDEX_FROM", 1000)
    rng = np.random.default_rng(7)
    cached = TenantHashes(len(WINDOWS))
    query = _random(rng, 1)[0]
    seq = 0

    def append(rows: int) -> None:
        nonlocal seq
        windows = _random(rng, rows, len(WINDOWS))
        for i, d in enumerate(rng.integers(0, 14, size=rows // 10).tolist()):
            windows[10 * i, 0] = _flipped(rng, query, d)  # a tenth near, at 0..13
        cached.append(np.arange(seq + 1, seq + rows + 1), [f"{seq + i:032x}"
                      for i in range(rows)], windows)
        seq += rows

    def brute(radius: int) -> np.ndarray:
        column = cached.windows[: cached.n, 0]
        return np.flatnonzero(np.bitwise_count(column ^ query) <= radius)

    for rows in (500, 700, 300, 6000, 100):  # scan, index, index + tail, rebuilt, tail
        append(rows)
        for radius in (0, 6, 10):
            np.testing.assert_array_equal(cached.whole_within(query, radius), brute(radius))
    assert cached._whole is not None and 0 < cached.n - cached._indexed <= 100
    cached.kill(range(1, cached.n, 2))  # past a quarter dead: compacted
    assert cached._whole is None and cached.n == 3800
    found = cached.whole_within(query, 10)
    np.testing.assert_array_equal(found, brute(10))
    assert len(found) >= 100  # the planted rows that survived
