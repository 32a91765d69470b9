"""The dedup hashes: window pHashes and the compiled near-distance look-up."""

from __future__ import annotations

import numpy as np
import pytest

from deeplens.hash_index import near_distances, numpy_distances
from deeplens.image_hashes import CENTRED, HASH_SIDE, WINDOWS, phash, window_hashes


def _smooth_image(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 255, (8, 8)).astype(np.float64)
    return np.kron(coarse, np.ones((8, 8)))[:HASH_SIDE, :HASH_SIDE]


def test_the_first_window_is_the_whole_image_phash_and_windows_see_crops() -> None:
    grey = _smooth_image(1)
    windows = window_hashes(grey)
    assert windows.shape == (len(WINDOWS),) and windows.dtype == np.uint64
    assert int(windows[0]) == phash(grey)
    # The centred 70 % window, stretched to the full square, is that crop's whole hash.
    from PIL import Image

    crop = np.asarray(Image.fromarray(grey.astype(np.uint8)).crop((10, 10, 54, 54))
                      .resize((HASH_SIDE, HASH_SIDE), Image.Resampling.BILINEAR), dtype=float)
    cropped = window_hashes(crop)
    whole, windowed = near_distances(windows[None, :], cropped)
    assert windowed[0] <= 8 < whole[0], (whole, windowed)
    assert CENTRED == [16, 40]


@pytest.mark.parametrize("rows", [0, 1, 7, 25_000])
def test_the_compiled_look_up_equals_the_numpy_one(rows) -> None:
    rng = np.random.default_rng(rows)
    stored = rng.integers(0, 2**63, size=(rows, len(WINDOWS)), dtype=np.int64).view(np.uint64)
    query = rng.integers(0, 2**63, size=len(WINDOWS), dtype=np.int64).view(np.uint64)
    if rows:
        stored[rows // 2] = query  # one exact copy, and one one bit off in a window
        stored[0, 3] = query[0] ^ np.uint64(1)
    whole, windowed = near_distances(stored, query)
    ref_whole, ref_windowed = np.empty(rows, np.uint8), np.empty(rows, np.uint8)
    numpy_distances(stored, query, ref_whole, ref_windowed, chunk=1000)
    np.testing.assert_array_equal(whole, ref_whole)
    np.testing.assert_array_equal(windowed, ref_windowed)
    if rows:
        assert whole[rows // 2] == windowed[rows // 2] == 0
        assert windowed[0] <= 1
        brute = [min(min(bin(int(s) ^ int(query[0])).count("1") for s in row),
                     min(bin(int(row[0]) ^ int(q)).count("1") for q in query),
                     *(bin(int(row[k]) ^ int(query[k])).count("1") for k in CENTRED))
                 for row in stored[:5]]
        np.testing.assert_array_equal(windowed[:5], brute)
