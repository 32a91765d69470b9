"""Projection and billing rules that need no broker: a dedup failure never demotes,
deleted images are never linked or billed for work, missing uploads are not billed."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

from actors.validator import validate_one
from deeplens.events import (
    DuplicateMatch,
    DuplicatesFound,
    ImageFailed,
    ImageIndexed,
    ImageUploaded,
)
from deeplens.settings import Settings
from deeplens.stage_sdk import Envelope
from deeplens.storage import LocalStorage
from ingestion.catalog import Catalog
from ingestion.projection import changes_of

NOW = datetime(2026, 11, 27, 12, tzinfo=UTC)


def envelope(event) -> Envelope:
    return Envelope(topic=event.topic, partition=0, offset=0, key=getattr(event, "image_id", ""),
                    timestamp=None, event=event)


def apply(catalog: Catalog, *envelopes: Envelope) -> None:
    catalog.apply(changes_of(list(envelopes)))


def row(image_id: str, tenant: str = "acme") -> dict:
    return {"image_id": image_id, "tenant_id": tenant, "sha256": image_id.ljust(64, "0"),
            "original_file_name": f"{image_id}.jpg", "storage_provider": "local",
            "storage_path": f"{tenant}/{image_id}.jpg", "file_size": 1,
            "mime_type": "image/jpeg", "status": "uploaded", "uploaded_at": NOW}


def test_a_dedup_failure_is_recorded_and_never_demotes_an_indexed_image(tmp_path) -> None:
    catalog = Catalog(f"sqlite:///{tmp_path}/c.db")
    catalog.insert(row("a"))
    apply(catalog, envelope(ImageIndexed(tenant_id="acme", image_id="a", feature_model="m",
                                         collection="c", indexed_at=NOW)))
    failure = ImageFailed(tenant_id="acme", image_id="a", reason="dedup_error",
                          message="bad pixels", stage="dedup",
                          failed_at=NOW + timedelta(seconds=1))
    apply(catalog, envelope(failure))
    image = catalog.get("acme", "a")
    assert image is not None and image.status == "indexed" and image.dedup_tiers == "failed"


def test_no_duplicate_link_to_or_from_a_deleted_image(tmp_path) -> None:
    catalog = Catalog(f"sqlite:///{tmp_path}/c.db")
    for image_id in ("a", "b", "c"):
        catalog.insert(row(image_id))
    catalog.delete("acme", "c")
    found = DuplicatesFound(tenant_id="acme", image_id="a", tiers=["exact", "near"], matches=[
        DuplicateMatch(image_id="b", kind="near", score=0.9),
        DuplicateMatch(image_id="c", kind="exact", score=1.0)])
    apply(catalog, envelope(found))
    assert [d.image_id for d in catalog.duplicates_of("acme", "a")] == ["b"]
    catalog.delete("acme", "a")
    late = DuplicatesFound(tenant_id="acme", image_id="a", tiers=["exact"], matches=[
        DuplicateMatch(image_id="b", kind="exact", score=1.0)])
    apply(catalog, envelope(late))  # arrives after the delete: links nothing
    assert catalog.duplicates_of("acme", "b") == []


def test_an_upload_whose_bytes_were_not_kept_is_not_billed(tmp_path) -> None:
    """The API answered 503 and removed the bytes; if the event got out anyway, the
    validator fails it as missing_object and bills no upload."""
    settings = Settings(data_dir=tmp_path)
    storage = LocalStorage(tmp_path / "images")
    ghost = ImageUploaded(tenant_id="acme", image_id="ghost", original_file_name="g.jpg",
                          storage_provider="local", storage_path="acme/gh/ghost.jpg",
                          file_size=10, mime_type="image/jpeg", sha256="0" * 64,
                          uploaded_at=NOW)
    outputs = validate_one(envelope(ghost), storage, settings)
    assert [o.topic for o in outputs] == ["images.failed"]
    assert outputs[0].event.reason == "missing_object"


def test_a_batch_in_one_transaction_ends_where_event_by_event_does(tmp_path, catalog_url) -> None:
    """Any order, redelivered, in one batch or one by one: the same rows. (Only
    ``failed_at`` may differ: a failure that reaches the catalog after a later success
    is not recorded at all, whichever way the events are applied.)"""
    import random

    from deeplens.events import ImageProcessed, ImageValidated

    def lifecycle(image_id: str, fails: bool) -> list:
        base = row(image_id) | {"uploaded_at": NOW}
        base = {k: v for k, v in base.items() if k != "status"}
        validated = ImageValidated(**base, width=8, height=6, format="JPEG",
                                   validated_at=NOW + timedelta(seconds=1))
        processed = ImageProcessed(**validated.model_dump(exclude={"event_id", "schema_version"}),
                                   features_f32="AACAPw==", feature_model="m",
                                   processed_at=NOW + timedelta(seconds=2))
        events = [validated, processed]
        if fails:  # an index failure, then a replay that succeeded
            events.append(ImageFailed(tenant_id="acme", image_id=image_id, reason="index_error",
                                      message="down", stage="indexing",
                                      failed_at=NOW + timedelta(seconds=3)))
        events.append(ImageIndexed(tenant_id="acme", image_id=image_id, feature_model="m",
                                   collection="c", uploaded_at=NOW,
                                   indexed_at=NOW + timedelta(seconds=4)))
        return events

    events = [e for i in range(6) for e in lifecycle(f"img{i}", fails=i % 2 == 0)]
    events.append(ImageFailed(tenant_id="acme", image_id="img5", reason="corrupt", message="x",
                              stage="embedding", failed_at=NOW + timedelta(seconds=9)))
    one_by_one, batched = Catalog(f"sqlite:///{tmp_path}/a.db"), Catalog(catalog_url)
    for catalog in (one_by_one, batched):
        for i in range(6):
            catalog.insert(row(f"img{i}"))
    for event in events:
        apply(one_by_one, envelope(event))
    shuffled = events * 2
    random.Random(7).shuffle(shuffled)
    apply(batched, *map(envelope, shuffled))
    for i in range(6):
        a, b = batched.get("acme", f"img{i}"), one_by_one.get("acme", f"img{i}")
        assert replace(a, failed_at=None) == replace(b, failed_at=None)
    final = {i: one_by_one.get("acme", f"img{i}") for i in range(6)}
    assert [final[i].status for i in range(6)] == ["indexed"] * 5 + ["failed"]
    assert final[0].width == 8 and final[0].pipeline_seconds == 4.0


def test_links_of_one_batch_upsert_both_ways_strongest_kind_wins(catalog_url) -> None:
    """Both images of a pair found in one batch, twice (a redelivery): one link each way,
    of the stronger kind, on SQLite and PostgreSQL alike."""
    catalog = Catalog(catalog_url)
    for image_id in ("a", "b", "c"):
        catalog.insert(row(image_id))
    a_finds_b = DuplicatesFound(tenant_id="acme", image_id="a", tiers=["exact", "near"],
                                matches=[DuplicateMatch(image_id="b", kind="near", score=0.8)])
    b_finds_a = DuplicatesFound(tenant_id="acme", image_id="b", tiers=["exact", "near"],
                                matches=[DuplicateMatch(image_id="a", kind="exact", score=1.0),
                                         DuplicateMatch(image_id="gone", kind="near", score=0.9)])
    c_alone = DuplicatesFound(tenant_id="acme", image_id="c", tiers=["exact"], matches=[])
    apply(catalog, *map(envelope, [a_finds_b, b_finds_a, c_alone, a_finds_b, b_finds_a]))
    for image_id, other in (("a", "b"), ("b", "a")):
        links = catalog.duplicates_of("acme", image_id)
        assert [(d.image_id, d.kind, d.score) for d in links] == [(other, "exact", 1.0)]
    assert catalog.get("acme", "c").dedup_tiers == "exact"
    apply(catalog, envelope(a_finds_b))  # a weaker kind later changes nothing
    assert catalog.duplicates_of("acme", "a")[0].kind == "exact"


def test_the_pipeline_settles_a_pending_row(catalog_url) -> None:
    """A row stays pending only while nothing shows that the broker took its upload
    event: a validation (or any later step), or a failure, of the image settles it,
    whatever became of the request that published it."""
    from tests.ingestion import lifecycle_events as events

    catalog = Catalog(catalog_url)
    for image_id in ("ok", "bad", "waiting"):
        catalog.insert(row(image_id) | {"pending": True})
    events.project(catalog, events.validated(events.uploaded("ok")),
                   events.failed(events.uploaded("bad")))
    assert [catalog.get("acme", i).pending for i in ("ok", "bad", "waiting")] == [
        None, None, True]
