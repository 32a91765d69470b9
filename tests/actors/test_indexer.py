"""The indexer's batch step: redelivery leaves one vector; deletes win over late vectors."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np

from actors.indexer import index_batch
from deeplens.events import ImageDeleted, ImageIndexed, ImageProcessed, encode_vector
from deeplens.settings import VectorStoreSettings
from deeplens.stage_sdk import Envelope
from deeplens.tombstones import Tombstones
from deeplens.vectors.lancedb import LanceStore

NOW = datetime(2026, 11, 26, tzinfo=UTC)


def envelope(event, offset: int) -> Envelope:
    return Envelope(topic=event.topic, partition=0, offset=offset, key=event.image_id,
                    timestamp=None, event=event)


def processed(i: int) -> ImageProcessed:
    v = np.zeros(8)
    v[i % 8] = 1.0
    return ImageProcessed(
        tenant_id="alpha", image_id=f"img{i}", original_file_name=f"{i}.jpg",
        storage_provider="local", storage_path=f"alpha/img{i}.jpg", file_size=1,
        mime_type="image/jpeg", sha256=f"{i:064x}", uploaded_at=NOW, width=1, height=1,
        format="JPEG", validated_at=NOW, features_f32=encode_vector(v), feature_model="m/x",
        processed_at=NOW)


def test_redelivered_batch_leaves_one_vector_each(tmp_path) -> None:
    tombstones = Tombstones(f"sqlite:///{tmp_path}/catalog.db")
    store = LanceStore(tmp_path / "vectors", VectorStoreSettings())
    events = [processed(i) for i in range(6)]
    batch = [envelope(e, i) for i, e in enumerate(events)]
    first = index_batch(store, tombstones, batch)
    again = index_batch(store, tombstones, batch)  # the same events, delivered again
    assert store.count("m/x", "alpha") == 6
    assert [o.event.image_id for o in first] == [o.event.image_id for o in again]
    assert all(isinstance(o.event, ImageIndexed) and o.topic == "images.indexed" for o in first)


def test_delete_removes_and_a_late_vector_of_a_deleted_image_is_skipped(tmp_path) -> None:
    tombstones = Tombstones(f"sqlite:///{tmp_path}/catalog.db")
    store = LanceStore(tmp_path / "vectors", VectorStoreSettings())
    kept, gone = processed(1), processed(2)
    tombstones.bury("alpha", "img2")  # img2 was deleted before its vector arrived
    out = index_batch(store, tombstones, [envelope(kept, 0), envelope(gone, 1)])
    assert [o.event.image_id for o in out] == ["img1"]
    index_batch(store, tombstones, [envelope(ImageDeleted(tenant_id="alpha", image_id="img1"), 2)])
    assert store.count("m/x", "alpha") == 0


class DeleteDuringWrite:
    """A store whose upsert lets a delete land (tombstone, then another indexer's
    delete) just before the write does: the race that used to resurrect an image."""

    def __init__(self, store: LanceStore, tombstones: Tombstones, victim: str) -> None:
        self.store, self.tombstones, self.victim = store, tombstones, victim

    def upsert(self, model_id, records) -> None:
        self.tombstones.bury("alpha", self.victim)
        self.store.delete("alpha", self.victim)  # applied by another indexer, too early
        self.store.upsert(model_id, records)

    def delete(self, tenant_id, image_id) -> int:
        return self.store.delete(tenant_id, image_id)


def test_a_delete_that_lands_during_the_write_leaves_no_vector(tmp_path) -> None:
    tombstones = Tombstones(f"sqlite:///{tmp_path}/catalog.db")
    store = LanceStore(tmp_path / "vectors", VectorStoreSettings())
    racing = DeleteDuringWrite(store, tombstones, "img4")
    out = index_batch(racing, tombstones, [envelope(processed(i), i) for i in (3, 4)])
    assert [o.event.image_id for o in out] == ["img3"]
    assert store.get_vector("m/x", "alpha", "img4") is None
    assert store.get_vector("m/x", "alpha", "img3") is not None
