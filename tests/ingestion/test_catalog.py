"""The catalog, hash index and tombstones on SQLite and on a real PostgreSQL server."""

from __future__ import annotations

import hashlib
import threading
from datetime import UTC, datetime, timedelta

from deeplens.hash_index import HashIndex
from deeplens.tombstones import Tombstones
from ingestion.catalog import Catalog
from tests.ingestion import lifecycle_events as events

NOW = datetime(2026, 11, 27, 12, tzinfo=UTC)


def row(image_id: str, tenant: str = "acme", at: datetime = NOW) -> dict:
    return {"image_id": image_id, "tenant_id": tenant,
            "sha256": hashlib.sha256(image_id.encode()).hexdigest(),
            "original_file_name": f"{image_id}.jpg", "storage_provider": "local",
            "storage_path": f"{tenant}/{image_id}.jpg", "file_size": 1,
            "mime_type": "image/jpeg", "status": "uploaded", "uploaded_at": at}


def test_insert_clash_list_and_counts(catalog_url) -> None:
    catalog = Catalog(catalog_url)
    for i in range(5):
        assert catalog.insert(row(f"img{i}", at=NOW + timedelta(seconds=i))) is None
    clash = catalog.insert(row("other") | {"sha256": row("img2")["sha256"]})
    assert clash is not None and clash.image_id == "img2"
    first = catalog.list("acme", limit=3)
    assert [r.image_id for r in first] == ["img4", "img3", "img2"]
    assert [r.image_id for r in catalog.list("acme", limit=3, after="img2")] == ["img1", "img0"]
    assert catalog.counts("acme") == {"uploaded": 5}
    assert catalog.get("beta", "img1") is None, "another tenant's image reads as missing"


def test_status_moves_forward_only_and_failures_clear_on_a_later_success(catalog_url) -> None:
    catalog = Catalog(catalog_url)
    catalog.insert(row("a"))
    a = events.uploaded("a")
    events.project(catalog, events.processed(a, seconds=2))
    events.project(catalog, events.validated(a, seconds=1, size=9))  # late
    image = catalog.get("acme", "a")
    assert image.status == "processed" and image.width == 9, "late fields land, status stays"
    events.project(catalog, events.failed(a, seconds=3, stage="indexing", reason="index_error"))
    assert catalog.get("acme", "a").status == "failed"
    events.project(catalog, events.indexed(a, seconds=4))  # a replay succeeded
    image = catalog.get("acme", "a")
    assert image.status == "indexed" and image.failure_reason is None
    events.project(catalog, events.failed(a, seconds=1))  # an older failure, redelivered
    assert catalog.get("acme", "a").status == "indexed"


def test_concurrent_projectors_never_move_an_image_backwards(catalog_url) -> None:
    """Several projector actors apply events of one image in any order at once, each
    through the projection's own path (``changes_of`` -> ``lifecycle.apply``)."""
    catalog = Catalog(catalog_url)
    ids = [f"c{i}" for i in range(20)]
    for image_id in ids:
        catalog.insert(row(image_id))
    steps = [events.validated, events.processed, events.indexed]

    def project(order: list) -> None:
        mine = Catalog(catalog_url)
        for image_id in ids:
            for step in order:
                events.project(mine, step(events.uploaded(image_id)))

    threads = [threading.Thread(target=project, args=(order,))
               for order in (steps, steps[::-1], [steps[1], steps[2], steps[0]])]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert {catalog.get("acme", i).status for i in ids} == {"indexed"}


def test_duplicates_both_ways_and_usage_once_per_event(catalog_url) -> None:
    catalog = Catalog(catalog_url)
    for image_id in ("a", "b"):
        catalog.insert(row(image_id))
    events.project(catalog, events.duplicates("acme", "a", ["exact", "near"],
                                               [("b", "near", 0.9)]))
    events.project(catalog, events.duplicates("acme", "b", ["exact", "near"],
                                               [("a", "exact", 1.0)]))
    assert [(d.image_id, d.kind) for d in catalog.duplicates_of("acme", "a")] == [("b", "exact")]
    assert [(d.image_id, d.kind) for d in catalog.duplicates_of("acme", "b")] == [("a", "exact")]
    assert catalog.add_usage("e1", "acme", NOW, "uploads", 1)
    assert not catalog.add_usage("e1", "acme", NOW, "uploads", 1)
    assert catalog.add_usage("e2", "acme", NOW + timedelta(minutes=5), "uploads", 1)
    assert catalog.usage("acme", NOW - timedelta(hours=1)) == {NOW: {"uploads": 2.0}}
    catalog.delete("acme", "b")
    assert catalog.duplicates_of("acme", "a") == []


def test_hash_index_and_tombstones(catalog_url) -> None:
    index, tombstones = HashIndex(catalog_url), Tombstones(catalog_url)
    index.add("acme", "a", "s" * 64, "p" * 64, 2**63 + 5)  # the top bit set: stored signed
    index.add("acme", "a", "s" * 64, "p" * 64, 2**63 + 5)  # a redelivery changes nothing
    index.add("acme", "b", "t" * 64, "p" * 64, 2**63 + 7)
    assert index.exact("acme", "b", "t" * 64, "p" * 64) == ["a"]
    assert [i for i, _ in index.near("acme", "q", 2**63 + 5, 2)] == ["a", "b"]
    tombstones.bury("acme", "a")
    tombstones.bury("acme", "a")
    assert tombstones.dead([("acme", "a"), ("acme", "b")]) == {("acme", "a")}
    assert [(t, i) for t, i, _ in tombstones.since(NOW - timedelta(days=3650))] == [("acme", "a")]


def test_usage_batches_count_once(catalog_url) -> None:
    catalog = Catalog(catalog_url)
    later = NOW + timedelta(hours=1)
    batch = [("u1", "acme", NOW, "uploads", 1), ("u2", "acme", NOW, "uploads", 1),
             ("u1", "acme", NOW, "uploads", 1),  # redelivered inside the batch
             ("b1", "acme", NOW, "upload_bytes", 300), ("u3", "acme", later, "uploads", 1),
             ("z1", "zeta", NOW, "uploads", 1)]
    assert catalog.add_usage_batch(batch) == 5
    assert catalog.add_usage_batch(batch) == 0  # the whole batch redelivered
    assert catalog.add_usage("u2", "acme", NOW, "uploads", 1) is False
    assert catalog.usage("acme", NOW) == {NOW: {"uploads": 2.0, "upload_bytes": 300.0},
                                          later: {"uploads": 1.0}}
    assert catalog.usage("zeta", NOW) == {NOW: {"uploads": 1.0}}


def test_stuck_images_come_a_page_at_a_time_each_once_oldest_first(catalog_url) -> None:
    """The restart sweep's read: pages on (uploaded_at, image_id), ties across a page
    edge included, and a write between pages (a row failed) does not shift the rest."""
    catalog = Catalog(catalog_url)
    for i in range(23):  # three images share each upload second: ties cross page edges
        catalog.insert(row(f"s{i:02d}", at=NOW + timedelta(seconds=i // 3)))
    catalog.insert(row("late", at=NOW + timedelta(hours=1)))  # after the cut-off
    seen = []
    for image in catalog.stuck(("uploaded",), NOW + timedelta(minutes=5), page=4):
        seen.append(image.image_id)
        if image.image_id == "s05":  # what reconcile does to an image whose bytes are gone
            catalog.fail("s05", "ingestion", "missing_object", "gone", NOW)
    assert seen == [f"s{i:02d}" for i in range(23)]
    assert "s05" not in [r.image_id for r in catalog.stuck(("uploaded",), NOW + timedelta(
        minutes=5), page=4)]


def test_stuck_images_are_read_as_they_are_used_not_all_at_once(catalog_url) -> None:
    """A backlog of millions is never held at once: after the first page is handed out,
    a row written further on is still found (a list read up front would miss it)."""
    catalog = Catalog(catalog_url)
    for i in range(6):
        catalog.insert(row(f"b{i}", at=NOW + timedelta(seconds=i)))
    pages = catalog.stuck(("uploaded",), NOW + timedelta(minutes=5), page=2)
    assert next(pages).image_id == "b0"
    catalog.insert(row("b9", at=NOW + timedelta(seconds=9)))
    assert [image.image_id for image in pages] == ["b1", "b2", "b3", "b4", "b5", "b9"]
