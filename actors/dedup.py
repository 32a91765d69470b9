"""The duplicate-detection stage: ``images.processed`` -> ``duplicates.found``.

Three tiers, cheapest first, each within the tenant:

- **exact**: the same bytes (sha256) or the same decoded pixels (a re-save that
  only changed metadata or PNG compression: the pixel fingerprint);
- **near**: perceptual hash (pHash, 64 bits) within a Hamming distance, whole image
  against whole image, or one image whole against a window of the other (crops,
  small rotations; ``deeplens.hash_index.near_distances``);
- **similar**: cosine similarity of the model's vectors above a threshold; off
  for random-weight models, whose scores mean nothing.

Each image's hashes (and vector) are written *before* the look-up, so of two
near-identical images processed at the same moment by two actors the later
look-up always sees the earlier write: they end up linked. One
``duplicates.found`` event per image says which tiers ran, even with no match.

The hashes come on the event (version 2), computed by the Embedder from its one
decode: this stage reads no image bytes. Only a version-1 event, written before
the Embedder sent hashes, makes it fetch and decode the image.
"""

from __future__ import annotations

import base64
import io
import logging
import time
from collections.abc import Callable, Sequence

import numpy as np
from sqlalchemy.exc import OperationalError

from actors.indexer import record_of
from deeplens.events import (
    DuplicateKind,
    DuplicateMatch,
    DuplicatesFound,
    ImageProcessed,
)
from deeplens.formats import upright_rgb
from deeplens.hash_index import HashIndex
from deeplens.hash_writes import add_many, exact_many
from deeplens.image_hashes import pillow_parts, window_hashes
from deeplens.kafka import Outbound
from deeplens.settings import DedupThresholds, Settings
from deeplens.stage_sdk import Envelope, failure, split_deleted
from deeplens.storage import ObjectMissing, Storage, StorageUnavailable, make_storage
from deeplens.tombstones import Tombstones
from deeplens.vectors.base import VectorStore, VectorStoreUnavailable, is_random_init
from deeplens.vectors.factory import make_search_store

log = logging.getLogger(__name__)

STAGE = "dedup"
PRUNE_EVERY_S = 3600.0
TOPICS = ("images.processed", "images.deleted")


Hashes = tuple[str, int, "np.ndarray | None"]  # fingerprint, pHash, window pHashes
Near = list[tuple[str, int]]  # (other image, distance)


def content_hashes(data: bytes) -> Hashes:
    """(pixel fingerprint, 64-bit pHash, window pHashes) by decoding the bytes with
    Pillow, as the Embedder's Pillow path does. Only for events that carry no hashes."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        rgb = upright_rgb(img)
    grey, print_, _ = pillow_parts(rgb, data)  # a JPEG: of its coded data, as the Embedder
    windows = window_hashes(grey)
    return print_, int(windows[0]), windows


def event_hashes(event: ImageProcessed, storage: Storage) -> Hashes:
    """The hashes the event carries; a version-1 event's from its bytes (ObjectMissing
    if the image is gone)."""
    if event.pixel_fingerprint is not None and event.phash is not None:
        windows = (np.frombuffer(base64.b64decode(event.window_hashes), dtype=">u8")
                   .astype(np.uint64) if event.window_hashes else None)
        return event.pixel_fingerprint, int(event.phash, 16), windows
    return content_hashes(storage.get(event.storage_path))


def tiers_for(event: ImageProcessed) -> list[DuplicateKind]:
    if is_random_init(event.feature_model):  # random weights: similarity means nothing
        return ["exact", "near"]
    return ["exact", "near", "similar"]


def find_duplicates(event: ImageProcessed, hashes: Hashes, index: HashIndex,
                    store: VectorStore, limits: DedupThresholds,
                    written: bool = False, exact: list[str] | None = None,
                    near: Near | None = None) -> DuplicatesFound:
    """``written``: the image's hashes are recorded already and the tenant's near cache
    refreshed since (``dedup_batch`` writes a batch's in one transaction, then refreshes
    once); otherwise they are written here, then looked up. ``exact`` and ``near``: the
    exact and near tiers' answers, when the batch looked them up for all its images at
    once (``exact_many``, ``HashIndex.near_many``)."""
    pixel_sha, phash, windows = hashes
    tenant, image_id = event.tenant_id, event.image_id
    if not written:
        index.add(tenant, image_id, event.sha256, pixel_sha, phash, windows)
    matches: dict[str, DuplicateMatch] = {}
    if exact is None:
        exact = index.exact(tenant, image_id, event.sha256, pixel_sha)
    for other in exact:
        matches[other] = DuplicateMatch(image_id=other, kind="exact", score=1.0)
    if near is None:
        near = index.near(tenant, image_id, phash, limits.near_max_distance, windows,
                          limits.near_window_max_distance, refresh=not written)
    for other, distance in near:
        if other not in matches:
            matches[other] = DuplicateMatch(image_id=other, kind="near",
                                            score=round(1 - distance / 64, 4))
    tiers = tiers_for(event)
    if "similar" in tiers:
        store.upsert(event.feature_model, [record_of(event)])  # idempotent with the indexer
        for hit in store.search(event.feature_model, tenant, record_of(event).vector,
                                k=limits.similar_k, exclude=frozenset({image_id})):
            if hit.score >= limits.similar_min_score and hit.image_id not in matches:
                matches[hit.image_id] = DuplicateMatch(image_id=hit.image_id, kind="similar",
                                                       score=round(hit.score, 4))
    ranked = sorted(matches.values(), key=lambda m: (_KIND_ORDER[m.kind], -m.score))
    return DuplicatesFound(tenant_id=tenant, image_id=image_id, tiers=tiers,
                           matches=ranked[: limits.max_matches])


_KIND_ORDER = {"exact": 0, "near": 1, "similar": 2}


# Failures that are the infrastructure's, not the image's: the batch is retried.
TRANSIENT = (OperationalError, VectorStoreUnavailable)


def _hashes_of(pending: Sequence[Envelope], storage: Storage,
               outputs: dict[tuple[str, str], Outbound]) -> list[tuple[Envelope, Hashes]]:
    """Each image's hashes; one whose bytes are gone is skipped, one that cannot be
    hashed fails alone (into ``outputs``)."""
    hashed = []
    for env in pending:
        event = env.event
        assert isinstance(event, ImageProcessed)
        try:  # other storage errors are transient: they propagate and the batch is retried
            hashed.append((env, event_hashes(event, storage)))
        except ObjectMissing:
            log.info("skipping %s: deleted before dedup", event.image_id)
        except StorageUnavailable:
            raise
        except Exception as exc:  # noqa: BLE001 - a version-1 image Pillow cannot decode
            outputs[(event.tenant_id, event.image_id)] = failure(
                env, "dedup_error", f"{type(exc).__name__}: {exc}", STAGE, type(exc).__name__)
    return hashed


def _look_up(limits: dict[str, DedupThresholds], index: HashIndex,
             hashed: Sequence[tuple[Envelope, Hashes]],
             ) -> tuple[dict[str, dict[str, list[str]]], dict[tuple[str, str], Near]]:
    """Each tenant's exact matches in one query, and its near matches in one pass over its
    cache, after the batch's writes (what a look-up per image after its own write would
    see). A batch whose near look-up fails for a reason of its own (a malformed image)
    leaves its images to look up one by one, so only that image fails."""
    exact: dict[str, dict[str, list[str]]] = {}
    near: dict[tuple[str, str], Near] = {}
    for tenant in {env.event.tenant_id for env, _ in hashed}:
        mine = [(env.event.image_id, env.event.sha256, hashes)
                for env, hashes in hashed if env.event.tenant_id == tenant]
        exact[tenant] = exact_many(index, tenant, [(i, sha, h[0]) for i, sha, h in mine])
        try:
            answers = index.near_many(tenant, [(i, h[1], h[2]) for i, _, h in mine],
                                      limits[tenant].near_max_distance,
                                      limits[tenant].near_window_max_distance)
        except TRANSIENT:
            raise
        except Exception as exc:  # noqa: BLE001 - one bad image: each looks up alone below
            log.warning("batched near look-up failed (%s): one image at a time", exc)
            index.refresh(tenant)
            continue
        near.update(((tenant, i), found) for (i, _, _), found in zip(mine, answers, strict=True))
    return exact, near


def dedup_batch(settings: Settings, storage: Storage, index: HashIndex, store: VectorStore,
                tombstones: Tombstones, batch: Sequence[Envelope]) -> list[Outbound]:
    """Each image alone: one that cannot be deduplicated fails by itself (as a dedup
    failure, which never demotes it), and an image deleted at any moment leaves
    neither hashes nor a vector behind."""
    deleted, pending = split_deleted(batch)
    for gone in deleted:
        # Only the hashes are dedup's own. The similar tier's vector (an idempotent
        # upsert of the indexer's record) is removed by the indexer's delete, and a
        # write of ours that lands after it is undone by the tombstone re-check below.
        index.forget(gone.tenant_id, gone.image_id)
    dead = tombstones.dead((e.event.tenant_id, e.event.image_id) for e in pending)
    outputs: dict[tuple[str, str], Outbound] = {}
    hashed = _hashes_of([env for env in pending if (env.event.tenant_id, env.event.image_id)
                         not in dead], storage, outputs)
    # Every image's hashes in one transaction, then each looks (a batch's copies of one
    # another find each other, both ways).
    add_many(index, [(env.event.tenant_id, env.event.image_id, env.event.sha256, *hashes)
                     for env, hashes in hashed])
    limits = {t: settings.dedup.for_tenant(t) for t in {env.event.tenant_id for env, _ in hashed}}
    exact, near = _look_up(limits, index, hashed)
    for env, hashes in hashed:
        event = env.event
        assert isinstance(event, ImageProcessed)
        key = (event.tenant_id, event.image_id)
        try:
            found = find_duplicates(event, hashes, index, store,
                                    limits[event.tenant_id], written=True,
                                    exact=exact[event.tenant_id][event.image_id],
                                    near=near.get(key))
        except TRANSIENT:
            raise  # the store or database is down: retry the batch (every sink is idempotent)
        except Exception as exc:  # noqa: BLE001 - this image's fault: it alone fails
            log.warning("dedup of %s/%s failed: %s", event.tenant_id, event.image_id, exc)
            outputs[key] = failure(env, "dedup_error", f"{type(exc).__name__}: {exc}", STAGE,
                                   type(exc).__name__)
            continue
        outputs[key] = Outbound("duplicates.found", event.image_id, found)
    # A delete published while we wrote: undo our hashes and vector, say nothing.
    for tenant_id, image_id in tombstones.dead(outputs):
        index.forget(tenant_id, image_id)
        store.delete(tenant_id, image_id)
        del outputs[(tenant_id, image_id)]
    return list(outputs.values())


def build_handler(settings: Settings) -> Callable[[Sequence[Envelope]], list[Outbound]]:
    storage = make_storage(settings)
    index = HashIndex(settings.effective_catalog_url, max_bytes=settings.dedup.cache_max_mb << 20)
    store = make_search_store(settings)  # the similar tier searches: in memory, like search
    tombstones = Tombstones(settings.effective_catalog_url)
    pruned_at = [time.monotonic()]

    def handle(batch: Sequence[Envelope]) -> list[Outbound]:
        if time.monotonic() - pruned_at[0] >= PRUNE_EVERY_S:  # tombstones past every topic
            pruned_at[0] = time.monotonic()
            log.info("pruned %d tombstones", tombstones.prune())
        return dedup_batch(settings, storage, index, store, tombstones, batch)

    return handle
