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
    with pytest.raises(ValueError, match="3 window hashes"):
        near_hits(stored, asked[:, :3], *LIMITS)


def stored_index(tmp_path, stored: np.ndarray) -> tuple[HashIndex, list[str]]:
    """A tenant "t" holding ``stored``, its cache loaded."""
    index = HashIndex(f"sqlite:///{tmp_path}/catalog.db")
    ids = [uuid.uuid4().hex for _ in range(len(stored))]
    with index.engine.begin() as conn:
        conn.execute(image_hashes.insert(), [
            {"tenant_id": "t", "image_id": i, "sha256": i, "pixel_sha256": i,
             "phash": to_signed(int(row[0])), "windows": row.astype(">u8").tobytes()}
            for i, row in zip(ids, stored, strict=True)])
    index.refresh("t")
    return index, ids


def delete_rows(index: HashIndex, image_ids: list[str]) -> None:
    """What another dedup actor's ``forget`` does to the table (this cache not told)."""
    with index.engine.begin() as conn:
        conn.execute(sa.delete(image_hashes).where(image_hashes.c.image_id.in_(image_ids)))


def test_near_many_equals_an_independent_scan_with_dead_rows_and_old_events(tmp_path) -> None:
    """71 look-ups (two kernel passes), 5 without window hashes (matched whole only), one
    that is a stored image itself (never its own match), a third of the stored rows
    deleted (200 through this cache, the rest by another actor, found out by the
    look-up's liveness check): for each, the live rows the row-at-a-time kernel finds."""
    stored, asked = planted(np.random.default_rng(7), 5_000, 70)
    index, ids = stored_index(tmp_path, stored)
    cached = index._cache["t"]
    gone = sorted(set(ids[::3]))
    for image_id in gone[:200]:
        index.forget("t", image_id)  # dead slots in this cache
    assert cached.dead == 200
    delete_rows(index, gone[200:])
    queries = [(f"q{j}", int(row[0]), None if j % 14 == 0 else row)
               for j, row in enumerate(asked)] + [(ids[1], int(stored[1, 0]), stored[1])]
    batched = index.near_many("t", queries, *LIMITS)
    for (image_id, phash, windows), answer in zip(queries, batched, strict=True):
        if windows is None:  # an old event: the whole-image pHash alone
            distance = np.bitwise_count(stored[:, 0] ^ np.uint64(phash)).astype(int)
            hit = distance <= LIMITS[0]
        else:  # the row-at-a-time kernel, independent of near_hits
            whole, windowed = near_distances(stored, windows)
            distance, hit = np.minimum(whole, windowed), (whole <= LIMITS[0]) | (
                windowed <= LIMITS[1])
        expected = {(ids[r], int(distance[r])) for r in np.flatnonzero(hit)
                    if ids[r] not in gone and ids[r] != image_id}
        assert sorted(answer) == sorted(expected)
    assert sum(len(a) for a in batched) > 200  # the comparison had matches to compare
    found_gone = {i for hits in index.near_many("t", queries, LIMITS[0], -1) for i, _ in hits}
    assert cached.dead > 200 and not found_gone & set(gone)  # the other actor's, now dead here


def test_a_compaction_during_the_liveness_check_kills_no_live_row(tmp_path, monkeypatch) -> None:
    """Slots move when the cache compacts; one that happens while a look-up confirms its
    matches against the table must not make the look-up mark other (live) rows dead."""
    stored, asked = planted(np.random.default_rng(3), 5_000, 20)
    index, ids = stored_index(tmp_path, stored)
    cached = index._cache["t"]
    for image_id in ids[:601]:  # an odd count: compacting moves every row by 601 slots
        index.forget("t", image_id)
    delete_rows(index, ids[602::2])  # hits among these are killed by the look-up
    check = index._alive

    def alive_then_compact(tenant_id: str, image_ids: list[str]) -> set[str]:
        with index._lock:
            cached.compact()  # as a forget elsewhere would, past a quarter dead
        return check(tenant_id, image_ids)

    monkeypatch.setattr(index, "_alive", alive_then_compact)
    found = index.near_many("t", [(f"q{j}", int(q[0]), q) for j, q in enumerate(asked)],
                            *LIMITS)
    assert cached.generation == 1 and sum(map(len, found)) > 20
    live = set(ids[601::2])
    cached_alive = {cached.image_id(s) for s in range(cached.n) if cached.alive[s]}
    assert live <= cached_alive


def test_a_query_with_the_wrong_number_of_window_hashes_is_refused(tmp_path) -> None:
    """Refused where the windows are used; with the windows off only the pHash counts."""
    index = HashIndex(f"sqlite:///{tmp_path}/catalog.db")
    index.add("t", "a", "s", "p", 5, np.zeros(len(WINDOWS), dtype=np.uint64))
    with pytest.raises(ValueError, match="3 window hashes"):
        index.near_many("t", [("b", 5, np.zeros(3, dtype=np.uint64))], *LIMITS)
    assert index.near_many("t", [("b", 5, np.zeros(3, dtype=np.uint64))], LIMITS[0], -1) \
        == [[("a", 2)]]
