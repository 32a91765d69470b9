"""The indexer's batch step: redelivery leaves one vector; deletes win over late vectors."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np

from actors.indexer import index_batch
from deeplens.consumer_loop import Envelope
from deeplens.events import ImageDeleted, ImageIndexed, ImageProcessed
from deeplens.settings import VectorStoreSettings
from deeplens.storage import LocalStorage
from deeplens.vector_lancedb import LanceStore

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
        format="JPEG", validated_at=NOW, features=list(v), feature_model="m/x",
        processed_at=NOW)


def test_redelivered_batch_leaves_one_vector_each(tmp_path) -> None:
    storage = LocalStorage(tmp_path / "images")
    store = LanceStore(tmp_path / "vectors", VectorStoreSettings())
    events = [processed(i) for i in range(6)]
    for e in events:
        storage.put(e.storage_path, b"x")
    batch = [envelope(e, i) for i, e in enumerate(events)]
    first = index_batch(store, storage, batch)
    again = index_batch(store, storage, batch)  # the same events, delivered again
    assert store.count("m/x", "alpha") == 6
    assert [o.event.image_id for o in first] == [o.event.image_id for o in again]
    assert all(isinstance(o.event, ImageIndexed) and o.topic == "images.indexed" for o in first)


def test_delete_removes_and_a_late_vector_of_a_deleted_image_is_skipped(tmp_path) -> None:
    storage = LocalStorage(tmp_path / "images")
    store = LanceStore(tmp_path / "vectors", VectorStoreSettings())
    kept, gone = processed(1), processed(2)
    storage.put(kept.storage_path, b"x")  # img2's bytes were deleted with the image
    out = index_batch(store, storage, [envelope(kept, 0), envelope(gone, 1)])
    assert [o.event.image_id for o in out] == ["img1"]
    index_batch(store, storage, [envelope(ImageDeleted(tenant_id="alpha", image_id="img1"), 2)])
    assert store.count("m/x", "alpha") == 0
