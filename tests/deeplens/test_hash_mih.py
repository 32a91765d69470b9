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
