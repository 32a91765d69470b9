"""The indexing stage: ``images.processed`` -> vector store -> ``images.indexed``.

One upsert per model per consumer batch (the batch is bounded by size and by the
poll timeout). Only after the store took every record are ``images.indexed``
events produced, and only after those are acknowledged is the batch committed.
``images.deleted`` removes the image's vector from every collection, and a vector
of an image already deleted (its tombstone checked before and after the write) is
never left behind.
"""

from __future__ import annotations

import base64
import logging
from collections import defaultdict
from collections.abc import Callable, Sequence

import numpy as np

from deeplens.events import ImageIndexed, ImageProcessed
from deeplens.kafka import Outbound
from deeplens.settings import Settings
from deeplens.stage_sdk import Envelope, split_deleted
from deeplens.tombstones import Tombstones
from deeplens.vectors.base import VectorRecord, VectorStore, collection_name
from deeplens.vectors.factory import make_vector_store

log = logging.getLogger(__name__)

STAGE = "indexing"
TOPICS = ("images.processed", "images.deleted")


def record_of(event: ImageProcessed) -> VectorRecord:
    return VectorRecord(event.tenant_id, event.image_id, event.vector(),
                        event.original_file_name, event.uploaded_at)


def shadow_record(event: ImageProcessed, encoded: str) -> VectorRecord:
    vector = np.frombuffer(base64.b64decode(encoded), dtype="<f4")
    return VectorRecord(event.tenant_id, event.image_id, vector, event.original_file_name,
                        event.uploaded_at)


def index_batch(store: VectorStore, tombstones: Tombstones,
                batch: Sequence[Envelope]) -> list[Outbound]:
    deleted, envelopes = split_deleted(batch)
    for gone in deleted:
        store.delete(gone.tenant_id, gone.image_id)
    processed: list[ImageProcessed] = [env.event for env in envelopes]  # type: ignore[misc]
    # An image deleted before its vector arrived stays deleted (the two topics are not
    # ordered with each other): check its tombstone before the write ...
    dead = tombstones.dead((e.tenant_id, e.image_id) for e in processed)
    by_model: dict[str, list[ImageProcessed]] = defaultdict(list)
    shadows: dict[str, list[VectorRecord]] = defaultdict(list)  # a model change's other model
    for event in processed:
        if (event.tenant_id, event.image_id) in dead:
            log.info("skipping %s: deleted before it was indexed", event.image_id)
            continue
        by_model[event.feature_model].append(event)
        for model_id, encoded in event.shadow_vectors.items():
            shadows[model_id].append(shadow_record(event, encoded))
    for model_id, records in shadows.items():  # before the primary: indexed means both
        store.upsert(model_id, records)
    outputs: list[Outbound] = []
    for model_id, events in by_model.items():
        store.upsert(model_id, [record_of(e) for e in events])  # raises unless all taken
        # ... and after it: a delete published while we wrote may have been applied
        # (by another indexer) before our write landed. Undo ours.
        late = tombstones.dead((e.tenant_id, e.image_id) for e in events)
        for tenant_id, image_id in late:
            store.delete(tenant_id, image_id)
        outputs.extend(
            Outbound("images.indexed", e.image_id, ImageIndexed(
                tenant_id=e.tenant_id, image_id=e.image_id, collection=collection_name(model_id),
                feature_model=model_id, uploaded_at=e.uploaded_at))
            for e in events if (e.tenant_id, e.image_id) not in late)
    return outputs


def build_handler(settings: Settings) -> Callable[[Sequence[Envelope]], list[Outbound]]:
    store = make_vector_store(settings)
    tombstones = Tombstones(settings.effective_catalog_url)
    return lambda batch: index_batch(store, tombstones, batch)
