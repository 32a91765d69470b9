"""Large tenants on both databases: no query grows with the tenant past what the
database accepts, a delete never reloads a tenant, memory per image stays small.

300,000 ids go past SQLite's limit of bound parameters (250,000 in this build) and
PostgreSQL's (65,535): every id list is chunked. Rows are bulk-inserted, not sent
through the pipeline."""

from __future__ import annotations

import uuid

import numpy as np
import sqlalchemy as sa

from deeplens.hash_index import HashIndex, image_hashes, to_signed
from deeplens.image_hashes import WINDOWS
from deeplens.tombstones import Tombstones

BIG = 300_000
PHASH = 0x0123456789ABCDEF


def bulk_hashes(index: HashIndex, tenant: str, ids: list[str], phash: int = PHASH) -> None:
    rows = [{"tenant_id": tenant, "image_id": i, "sha256": i, "pixel_sha256": i,
             "phash": to_signed(phash), "windows": None} for i in ids]
    with index.engine.begin() as conn:
        for start in range(0, len(rows), 20_000):
            conn.execute(image_hashes.insert(), rows[start:start + 20_000])


def test_a_tenant_of_300k_images_loads_and_every_match_is_confirmed(catalog_url) -> None:
    """Every row matches: the load, and the liveness check of 300k matches, both take
    id lists past the databases' limits."""
    index = HashIndex(catalog_url)
    ids = [uuid.uuid4().hex for _ in range(BIG)]
    bulk_hashes(index, "big", ids)
    found = index.near("big", "query", PHASH, 0)
    assert len(found) == BIG and {i for i, _ in found} == set(ids)
    dead = Tombstones(catalog_url).dead(("big", i) for i in ids)
    assert dead == set()


def test_a_delete_marks_a_slot_and_never_reloads_the_tenant(tmp_path) -> None:
    url = f"sqlite:///{tmp_path}/h.db"
    index, other_actor = HashIndex(url), HashIndex(url)
    ids = [uuid.uuid4().hex for _ in range(2000)]
    bulk_hashes(index, "t", ids)
    assert len(index.near("t", "q", PHASH, 0)) == 2000
    assert len(other_actor.near("t", "q", PHASH, 0)) == 2000
    cached = index._cache["t"]
    index.forget("t", ids[0])
    other_actor.forget("t", ids[1])  # index learns of this one from its liveness check
    found = {i for i, _ in index.near("t", "q", PHASH, 0)}
    assert ids[0] not in found and ids[1] not in found and len(found) == 1998
    assert index._cache["t"] is cached, "the tenant's cache was kept, not reloaded"
    assert len(cached) == 1998
    found = {i for i, _ in index.near("t", "q", PHASH, 0)}
    assert len(found) == 1998


def test_rows_are_appended_with_amortised_growth_and_dead_slots_compacted(tmp_path) -> None:
    index = HashIndex(f"sqlite:///{tmp_path}/h.db")
    capacities = set()
    ids = [uuid.uuid4().hex for _ in range(3000)]
    for n, image_id in enumerate(ids):
        index.add("t", image_id, image_id, image_id, PHASH ^ n)
        index.near("t", image_id, PHASH ^ n, 0)
        capacities.add(len(index._cache["t"].alive))
    assert len(capacities) <= 4, "the arrays grow geometrically, not by one row"
    for image_id in ids[:2000]:
        index.forget("t", image_id)
    cached = index._cache["t"]
    assert cached.n < 3000 and len(cached) == 1000, "dead slots were reclaimed"
    survivors = {i for i, _ in index.near("t", "q", PHASH ^ 2500, 0)}
    assert survivors == {ids[2500]}


def test_memory_per_stored_image_is_under_600_bytes(tmp_path) -> None:
    index = HashIndex(f"sqlite:///{tmp_path}/h.db")
    windows = np.arange(len(WINDOWS), dtype=np.uint64)
    for n in range(1000):
        image_id = uuid.uuid4().hex
        index.add("t", image_id, image_id, image_id, int(windows[0]), windows + n)
    index.near("t", "q", 0, 0)
    cached = index._cache["t"]
    assert len(cached) == 1000 and cached.nbytes() / len(cached) <= 600


def test_ids_that_are_not_hex_keep_their_spelling(tmp_path) -> None:
    index = HashIndex(f"sqlite:///{tmp_path}/h.db")
    ids = ["a", "slow", str(uuid.uuid4()), uuid.uuid4().hex.upper(), uuid.uuid4().hex]
    bulk_hashes(index, "t", ids)
    assert sorted(i for i, _ in index.near("t", "q", PHASH, 0)) == sorted(ids)


def test_a_memory_budget_evicts_the_least_recently_used_tenant(tmp_path) -> None:
    index = HashIndex(f"sqlite:///{tmp_path}/h.db")
    for tenant in ("a", "b", "c"):
        bulk_hashes(index, tenant, [uuid.uuid4().hex for _ in range(2000)])
    index.near("a", "q", PHASH, 0)
    one_tenant = index.cached_bytes()
    index.max_bytes = int(one_tenant * 2.5)
    index.near("b", "q", PHASH, 0)
    index.near("a", "q", PHASH, 0)  # a is now the most recently used
    index.near("c", "q", PHASH, 0)
    assert list(index._cache) == ["a", "c"] and index.cached_bytes() <= index.max_bytes
    assert len(index.near("b", "q", PHASH, 0)) == 2000, "an evicted tenant reloads on demand"
    assert "a" not in index._cache


def test_a_late_row_and_a_row_appended_out_of_order_are_found_by_seq(tmp_path) -> None:
    index = HashIndex(f"sqlite:///{tmp_path}/h.db")
    with index.engine.begin() as conn:
        for seq, image_id in ((10, "ten"), (30, "thirty")):
            conn.execute(image_hashes.insert().values(
                seq=seq, tenant_id="t", image_id=image_id, sha256=image_id,
                pixel_sha256=image_id, phash=to_signed(PHASH)))
    index.near("t", "q", PHASH, 0)
    with index.engine.begin() as conn:
        conn.execute(image_hashes.insert().values(
            seq=20, tenant_id="t", image_id="twenty", sha256="x", pixel_sha256="x",
            phash=to_signed(PHASH)))
    index._cache["t"].swept_at = float("-inf")  # the next look-up sweeps
    assert sorted(i for i, _ in index.near("t", "q", PHASH, 0)) == ["ten", "thirty", "twenty"]
    index.forget("t", "twenty")
    index.forget("t", "thirty")
    assert [i for i, _ in index.near("t", "q", PHASH, 0)] == ["ten"]
    with index.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(image_hashes)).scalar() == 1


def test_tombstones_are_pruned_past_every_topic_s_retention_and_a_late_event_is_refused(
        catalog_url) -> None:
    from datetime import timedelta

    from deeplens.events import utcnow
    from deeplens.topics import TOPICS
    from ingestion.catalog import Catalog
    from tests.ingestion import lifecycle_events as events
    from tests.ingestion.test_catalog import row

    catalog, tombstones = Catalog(catalog_url), Tombstones(catalog_url)
    catalog.insert(row("gone"))
    catalog.insert(row("kept"))
    tombstones.bury("acme", "gone")  # the API's delete: tombstone, then the catalog row
    catalog.delete("acme", "gone")
    longest = timedelta(milliseconds=max(s.retention_ms for s in TOPICS.values()))
    assert tombstones.prune(utcnow() + longest) == 0, "an event may still be in a topic"
    assert tombstones.prune(utcnow() + longest + timedelta(days=2)) == 1
    assert tombstones.dead([("acme", "gone")]) == set()
    late = events.uploaded("gone")  # a replay of an event from before the delete
    events.project(catalog, events.processed(late, seconds=2))
    events.project(catalog, events.indexed(late, seconds=3))
    assert catalog.get("acme", "gone") is None, "the catalog takes no step for it"
    assert catalog.get("acme", "kept") is not None


def test_catalog_id_lists_of_300k_are_chunked(catalog_url) -> None:
    """Statuses of 300k ids, a projection batch linking 300k matches, usage of 300k
    events: each query that takes their ids stays within the database's limits."""
    from datetime import UTC, datetime

    from ingestion import lifecycle
    from ingestion.catalog import Catalog
    from tests.ingestion.test_catalog import row

    catalog = Catalog(catalog_url)
    catalog.insert(row("a"))
    catalog.insert(row("b"))
    ids = ["a", "b", *(uuid.uuid4().hex for _ in range(BIG))]
    assert catalog.statuses("acme", ids) == {"a": "uploaded", "b": "uploaded"}
    matches = [(i, "near", 0.9) for i in ids[1:]]
    with catalog.engine.begin() as conn:
        lifecycle.link(conn, [("acme", "a", ["exact", "near"], matches)])
    assert [d.image_id for d in catalog.duplicates_of("acme", "a")] == ["b"]
    at = datetime(2026, 12, 1, tzinfo=UTC)
    entries = [(f"e{n}", "acme", at, "uploads", 1.0) for n in range(BIG)]
    assert catalog.add_usage_batch(entries) == BIG
    assert catalog.add_usage_batch(entries[:10]) == 0
