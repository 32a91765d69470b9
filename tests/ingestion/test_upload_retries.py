"""Uploading bytes again whose first upload never got through, over real HTTP with a
real broker: a failed image starts a new attempt, and a row left pending by a request
that died is kept (published again, or settled), never dropped for a second image."""

from __future__ import annotations

import hashlib
from datetime import timedelta

import httpx
import numpy as np

from actors.indexer import index_batch
from actors.validator import usage
from deeplens.events import ImageUploaded, utcnow
from deeplens.settings import IngestionSettings
from deeplens.tombstones import Tombstones
from deeplens.vectors.factory import make_vector_store
from ingestion.api import create_app
from ingestion.catalog import Catalog
from ingestion.tables import images
from tests import images as test_images
from tests.conftest import make_settings
from tests.http_server import serve_app
from tests.ingestion import lifecycle_events as events
from tests.kafka_helpers import read_topic


def upload(client: httpx.Client, data: bytes, name: str = "photo.jpg") -> httpx.Response:
    return client.post("/v1/images", files={"file": (name, data, "image/jpeg")})


def left_pending(catalog: Catalog, tenant: str, image_id: str, minutes: float = 10) -> None:
    """The row as a request that died before settling it leaves it, ``minutes`` ago."""
    row = catalog.get(tenant, image_id)
    assert row is not None
    times = {name: getattr(row, name) - timedelta(minutes=minutes)
             for name in ("uploaded_at", "validated_at", "processed_at", "indexed_at")
             if getattr(row, name) is not None}
    with catalog.engine.begin() as conn:
        conn.execute(images.update().where(images.c.image_id == image_id).values(
            pending=True, **times))


def test_a_failed_image_uploaded_again_starts_a_new_attempt(api) -> None:
    data = test_images.jpeg(11)
    catalog = Catalog(api.settings.effective_catalog_url)
    with api.client() as client:
        first = upload(client, data, "first.jpg").json()
        [attempt] = read_topic(api.settings.kafka, "images.uploaded", expect=1)
        events.project(catalog, events.failed(attempt))  # e.g. an internal validation error
        assert client.get(f"/v1/images/{first['image_id']}").json()["status"] == "failed"

        again = upload(client, data, "again.jpg")
        assert again.status_code == 202, again.text
        body = again.json()
        assert body["image_id"] == first["image_id"], "the same image, not a second one"
        assert body["duplicate_of"] is None and body["status"] == "uploaded"
        image = client.get(f"/v1/images/{first['image_id']}").json()
        assert image["status"] == "uploaded" and image["failure_reason"] is None
        assert client.get(f"/v1/images/{first['image_id']}/content").content == data
    published = read_topic(api.settings.kafka, "images.uploaded", expect=2)
    assert [e.image_id for e in published] == [first["image_id"]] * 2
    assert published[1].original_file_name == "again.jpg"
    assert catalog.counts(api.tenant_a) == {"uploaded": 1}
    # Usage ids come from the image id: both attempts together bill one upload.
    ids = [{o.event.event_id for o in usage(e)} for e in published]  # type: ignore[arg-type]
    assert ids[0] == ids[1]


def test_a_pending_row_whose_image_was_indexed_stays_one_image_on_a_late_retry(api) -> None:
    """The request died after publishing (the broker had the event); the image went on
    to be indexed while its row stayed pending. The same bytes ten minutes later."""
    data = test_images.jpeg(12)
    catalog = Catalog(api.settings.effective_catalog_url)
    store = make_vector_store(api.settings)
    vector = np.linspace(1, 2, 8, dtype=np.float32)
    with api.client() as client:
        image_id = upload(client, data).json()["image_id"]
        [uploaded] = read_topic(api.settings.kafka, "images.uploaded", expect=1)
        assert isinstance(uploaded, ImageUploaded)
        done = events.processed(uploaded, vector=vector)
        index_batch(store, Tombstones(api.settings.effective_catalog_url),
                    [events.envelope(done)])
        events.project(catalog, events.validated(uploaded), done, events.indexed(uploaded))
        left_pending(catalog, api.tenant_a, image_id)

        again = upload(client, data, "retry.jpg")
        assert again.status_code == 202, again.text
        assert again.json()["image_id"] == image_id
        listed = client.get("/v1/images").json()
        assert [i["image_id"] for i in listed["items"]] == [image_id]
        assert listed["counts"] == {"indexed": 1}
        assert client.get(f"/v1/images/{image_id}/content").content == data
        hits = store.search(events.MODEL, api.tenant_a, vector, k=5)
        assert [h.image_id for h in hits] == [image_id]
        for hit in hits:  # every search hit reads: no vector of an image gone from the catalog
            assert client.get(f"/v1/images/{hit.image_id}").status_code == 200
    assert catalog.get(api.tenant_a, image_id).pending is None, "settled by the retry"
    assert not Tombstones(api.settings.effective_catalog_url).is_dead(api.tenant_a, image_id)


def test_a_row_left_pending_by_a_dead_request_is_published_again(api) -> None:
    """Nothing shows that the broker took the event: the retry publishes it again, under
    the same image id, and answers for it."""
    data = test_images.png(13)
    catalog = Catalog(api.settings.effective_catalog_url)
    with api.client() as client:
        image_id = upload(client, data).json()["image_id"]
        left_pending(catalog, api.tenant_a, image_id)
        again = upload(client, data)
        assert again.status_code == 202, again.text
        assert again.json()["image_id"] == image_id and again.json()["duplicate_of"] is None
        assert client.get(f"/v1/images/{image_id}/content").content == data
    published = read_topic(api.settings.kafka, "images.uploaded", expect=2)
    assert [e.image_id for e in published] == [image_id] * 2
    assert catalog.counts(api.tenant_a) == {"uploaded": 1}
    assert catalog.get(api.tenant_a, image_id).pending is None


def test_a_new_attempt_the_broker_refused_leaves_the_failed_image_as_it_was(
        tmp_path, kafka_settings, tenant) -> None:
    from deeplens.broker import free_port
    from deeplens.storage import make_storage

    dead = kafka_settings.model_copy(update={"bootstrap_servers": f"127.0.0.1:{free_port()}"})
    settings = make_settings(tmp_path, dead, tenant, tenant + "-b",
                             ingestion=IngestionSettings(ack_timeout_s=2))
    data = test_images.jpeg(14)
    settings.data_dir.mkdir(parents=True)
    catalog = Catalog(settings.effective_catalog_url)
    first = events.uploaded("f" * 32, tenant=tenant, at=utcnow()).model_copy(
        update={"sha256": hashlib.sha256(data).hexdigest()})
    make_storage(settings).put(first.storage_path, data)
    catalog.insert(first.model_dump(include=set(images.c.keys())) | {"status": "uploaded"})
    events.project(catalog, events.failed(first, reason="corrupt", message="bad"))
    before = catalog.get(tenant, first.image_id)
    with serve_app(create_app(settings)) as url:
        client = httpx.Client(base_url=url, timeout=30,
                              headers={"Authorization": f"Bearer key-{tenant}-0123456789ab"})
        answer = upload(client, data, "again.jpg")
    assert answer.status_code == 503, answer.text
    assert catalog.get(tenant, first.image_id) == before
    assert make_storage(settings).get(first.storage_path) == data
