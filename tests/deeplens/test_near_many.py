"""The batched near look-up (``HashIndex.near_many``, ``near_hits``) answers exactly as
one look-up per image, on the numba kernel (one thread and parallel) and on numpy."""

from __future__ import annotations

import uuid

import numpy as np
import pytest
import sqlalchemy as sa

from deeplens import hash_distances
from deeplens.hash_distances import near_distances, near_hits
from deeplens.hash_index import HashIndex, image_hashes, to_signed
from deeplens.image_hashes import CENTRED, WINDOWS

LIMITS = (10, 12)


def planted(rng: np.random.Generator, rows: int, queries: int) -> tuple[np.ndarray, np.ndarray]:
    """Random window hashes, with rows near each query through every comparison the rule
    makes (whole, a window of either side, the centred windows) at distances 8..14."""
    stored = rng.integers(0, 2**63, size=(rows, len(WINDOWS)), dtype=np.int64).view(np.uint64)
    asked = rng.integers(0, 2**63, size=(queries, len(WINDOWS)), dtype=np.int64).view(np.uint64)

    def flipped(value: np.uint64, bits: int) -> np.uint64:
        mask = sum(1 << int(b) for b in rng.choice(64, size=bits, replace=False))
        return value ^ np.uint64(mask)

    for j in range(queries):
        for n, (kind, bits) in enumerate([("whole", 10), ("whole", 11), ("crop", 12),
                                          ("crop", 13), ("wider", 12), ("centred", 12),
                                          ("centred", 14), ("whole", 8)]):
            row = stored[(j * 8 + n) * 7 % rows]
            k = int(rng.integers(1, len(WINDOWS)))
            if kind == "whole":
                row[0] = flipped(asked[j, 0], bits)
            elif kind == "crop":  # the query is a crop of the stored image
                row[k] = flipped(asked[j, 0], bits)
            elif kind == "wider":  # the stored image is a crop of the query
                row[0] = flipped(asked[j, k], bits)
            else:
                c = CENTRED[n % 2]
                row[c] = flipped(asked[j, c], bits)
    return stored, asked


def reference(stored: np.ndarray, query: np.ndarray) -> np.ndarray:
    whole, windowed = near_distances(stored, query)
    return np.flatnonzero((whole <= LIMITS[0]) | (windowed <= LIMITS[1]))


@pytest.mark.parametrize("rows", [3_000, 30_000])  # one thread, and the parallel kernel
@pytest.mark.parametrize("numba", [True, False])
def test_near_hits_finds_what_a_look_up_per_image_finds(rows, numba, monkeypatch) -> None:
    if not numba:
        monkeypatch.setattr(hash_distances, "_compiled_kernels", lambda: None)
    stored, asked = planted(np.random.default_rng(rows), rows, 40)
    masks = near_hits(stored, asked, *LIMITS)
    for j, query in enumerate(asked):
        expected = reference(stored, query)
        assert len(expected) >= 5  # the planted rows, at least those within the limits
        assert np.array_equal(np.flatnonzero(masks & np.uint64(1 << j)), expected)
    with pytest.raises(ValueError, match="at most 64"):
        near_hits(stored, np.concatenate([asked, asked]), *LIMITS)


def test_near_many_equals_near_per_image_with_dead_rows_and_old_events(tmp_path) -> None:
    """70 look-ups (two kernel passes), 5 without window hashes (matched whole only), a
    third of the stored rows deleted (200 here, the rest by another actor): for each,
    the live rows that the row-at-a-time kernel finds, with their distances."""
    stored, asked = planted(np.random.default_rng(7), 5_000, 70)
    index = HashIndex(f"sqlite:///{tmp_path}/catalog.db")
    ids = [uuid.uuid4().hex for _ in range(len(stored))]
    with index.engine.begin() as conn:
        conn.execute(image_hashes.insert(), [
            {"tenant_id": "t", "image_id": i, "sha256": i, "pixel_sha256": i,
             "phash": to_signed(int(row[0])), "windows": row.astype(">u8").tobytes()}
            for i, row in zip(ids, stored, strict=True)])
    gone = set(ids[::3])
    for image_id in list(gone)[:200]:
        index.forget("t", image_id)  # dead slots in this cache
    with index.engine.begin() as conn:  # and rows another actor forgot
        conn.execute(sa.delete(image_hashes).where(image_hashes.c.image_id.in_(list(gone)[200:])))
    queries = [(f"q{j}", int(row[0]), None if j % 14 == 0 else row)
               for j, row in enumerate(asked)]
    batched = index.near_many("t", queries, *LIMITS)
    for (_, phash, windows), answer in zip(queries, batched, strict=True):
        if windows is None:  # an old event: the whole-image pHash alone
            distance = np.bitwise_count(stored[:, 0] ^ np.uint64(phash)).astype(int)
            hit = distance <= LIMITS[0]
        else:  # the row-at-a-time kernel, independent of near_hits
            whole, windowed = near_distances(stored, windows)
            distance, hit = np.minimum(whole, windowed), (whole <= LIMITS[0]) | (
                windowed <= LIMITS[1])
        expected = {(ids[r], int(distance[r])) for r in np.flatnonzero(hit)} - {
            (i, d) for i, d in ((ids[r], int(distance[r])) for r in range(len(ids))) if i in gone}
        assert sorted(answer) == sorted(expected)
    assert sum(len(a) for a in batched) > 200  # the comparison had matches to compare


def test_a_query_with_the_wrong_number_of_window_hashes_is_refused(tmp_path) -> None:
    index = HashIndex(f"sqlite:///{tmp_path}/catalog.db")
    index.add("t", "a", "s", "p", 5, np.zeros(len(WINDOWS), dtype=np.uint64))
    with pytest.raises(ValueError, match="3 window hashes"):
        index.near_many("t", [("b", 5, np.zeros(3, dtype=np.uint64))], *LIMITS)
