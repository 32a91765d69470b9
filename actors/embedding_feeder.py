"""The embedding stage: ``images.validated`` -> Embedder (Ray Serve) -> ``images.processed``.

Feeders are the Kafka side of the GPU path: they read validated images, fetch
their bytes and send a whole consumer batch to the Embedder deployment in one
handle call (``embed_images``); the Embedder's ``@serve.batch`` forms batches
across every feeder's items. What comes back per image is its vector, its dedup
hashes and a JPEG thumbnail, all from the Embedder's one decode; the feeder stores
the thumbnail beside the original and publishes ``images.processed`` (version 2:
vector as base64 float32, hashes, thumbnail path). The number of batches in flight
is bounded by the consumer loop, which pauses its partitions at the bound. Each batch
goes out as one call per running Embedder replica (``ReplicaCount``), so the calls in
flight grow with the replicas and a replica the scaling controller adds gets work.

An image the Embedder cannot decode fails alone (``images.failed``, reason
``corrupt``, ``stage=embedding``). A fault of the Embedder itself (replica gone,
overloaded, device error) raises, so the batch is retried and nothing is failed for it.
"""

from __future__ import annotations

import base64
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from actors.validator import failed
from deeplens import serve_names
from deeplens.events import ImageProcessed, ImageValidated, encode_vector, utcnow
from deeplens.image_hashes import hex64
from deeplens.kafka import Outbound
from deeplens.model_catalog import ModelView
from deeplens.model_view import CachedModelView
from deeplens.settings import Settings
from deeplens.stage_sdk import Envelope, Retry, usage_event
from deeplens.storage import ObjectMissing, Storage, make_storage, thumbnail_path
from deeplens.tombstones import Tombstones
from deeplens.usage_batch import fold_usage

log = logging.getLogger(__name__)

STAGE = "embedding"
TOPICS = ("images.validated", "images.validated.bulk")  # the live lane, then the bulk lane
_USAGE_NS = uuid.UUID("0b6f3d0e-51c4-4a4f-9a55-1f0f3c9c7e21")
IO_THREADS = 8  # storage reads and thumbnail writes of one batch run side by side (S3)
REPLICA_REFRESH_S = 5.0  # how old the running-replica count may be
MIN_CALL_IMAGES = 4  # a call smaller than this would only split @serve.batch's batches


class EmbedderUnavailable(RuntimeError):
    """The Embedder could not answer (a transient fault: the batch is retried)."""


def processed_event(event: ImageValidated, result: Any, thumbnail: str | None,
                    shadows: dict[str, str] | None = None) -> ImageProcessed:
    fields = set(ImageValidated.model_fields) - {"event_id", "schema_version"}
    return ImageProcessed(
        **event.model_dump(include=fields),
        features_f32=encode_vector(result.vector), feature_model=result.model_id,
        processed_at=utcnow(),
        phash=hex64(result.phash) if result.phash is not None else None,
        window_hashes=base64.b64encode(result.windows).decode() if result.windows else None,
        pixel_fingerprint=result.fingerprint, thumbnail_path=thumbnail,
        shadow_vectors=shadows or {},
    )


def usage(event: ImageValidated, metric: str, quantity: float) -> Outbound:
    return usage_event(event.tenant_id, metric, quantity, image_id=event.image_id,
                       namespace=_USAGE_NS)


def _fetch(storage: Storage, pool: ThreadPoolExecutor,
           batch: Sequence[Envelope]) -> list[bytes | ObjectMissing]:
    def one(env: Envelope) -> bytes | ObjectMissing:
        event = env.event
        assert isinstance(event, ImageValidated)
        try:
            return storage.get(event.storage_path)
        except ObjectMissing as exc:  # other storage errors propagate: the batch is retried
            return exc

    return list(pool.map(one, batch)) if len(batch) > 1 else [one(e) for e in batch]


def _store_thumbnails(storage: Storage, pool: ThreadPoolExecutor, tombstones: Tombstones,
                      sent: list[tuple[Envelope, bytes]], results: list[Any]) -> dict[int, str]:
    """Write each embedded image's thumbnail beside it, before its event says so; a delete
    that raced these writes takes its thumbnail too. Returns id(envelope) -> path."""
    thumbs = {id(env): thumbnail_path(env.event.storage_path)  # type: ignore[union-attr]
              for (env, _), result in zip(sent, results, strict=True)
              if result.ok and result.thumbnail}
    writes = [(thumbs[id(env)], result.thumbnail)
              for (env, _), result in zip(sent, results, strict=True) if id(env) in thumbs]
    list(pool.map(lambda write: storage.put(*write), writes))
    if writes:
        by_key = {(env.event.tenant_id, env.event.image_id): thumbs[id(env)]  # type: ignore[union-attr]
                  for env, _ in sent if id(env) in thumbs}
        for key in tombstones.dead(by_key):
            storage.delete(by_key[key])
    return thumbs


class ReplicaCount:
    """The Embedder's running replicas, asked of Serve at most every ``REPLICA_REFRESH_S``
    (1 when Serve cannot say)."""

    def __init__(self, ask: Callable[[], int | None] | None = None) -> None:
        self._ask = ask or serve_names.running_embedder_replicas
        self._value, self._at = 1, -REPLICA_REFRESH_S

    def __call__(self) -> int:
        now = time.monotonic()
        if now - self._at >= REPLICA_REFRESH_S:
            self._at = now
            try:
                self._value = max(1, self._ask() or 1)
            except Exception:  # noqa: BLE001 - Serve busy: keep the last count
                pass
        return self._value


def split(items: list[bytes], parts: int) -> list[list[bytes]]:
    """``items`` in up to ``parts`` contiguous chunks of near-equal size, none smaller
    than ``MIN_CALL_IMAGES`` unless the whole batch is (order kept)."""
    parts = max(1, min(parts, len(items) // MIN_CALL_IMAGES or 1))
    size, extra = divmod(len(items), parts)
    chunks, start = [], 0
    for i in range(parts):
        end = start + size + (1 if i < extra else 0)
        chunks.append(items[start:end])
        start = end
    return chunks


def embed_spread(handle: Any, images: list[bytes], replicas: int) -> list[Any]:
    """One ``embed_images`` call per replica, all in flight at once; results in order."""
    calls = [handle.embed_images.remote(chunk) for chunk in split(images, replicas)]
    return [result for call in calls for result in call.result(timeout_s=300)]


def shadow_vectors(view: ModelView, handles: dict[str, Any],
                   sent: list[tuple[Envelope, bytes]], results: list[Any]
                   ) -> dict[int, dict[str, str]]:
    """During a model change, the embedded images by the other model too (dual-write):
    id(envelope) -> {model id: encoded vector}. A failed call raises (the batch is
    retried), so no image indexed meanwhile lacks its other model's vector."""
    ok = [(env, data, r) for (env, data), r in zip(sent, results, strict=True) if r.ok]
    others = view.embed_with(ok[0][2].model_id) if ok else []
    out: dict[int, dict[str, str]] = {}
    for model_id in others:
        if model_id not in handles:
            handles[model_id] = serve_names.model_handle(model_id)
        try:
            answers = handles[model_id].embed_vectors.remote(
                [data for _, data, _ in ok]).result(timeout_s=300)
        except Exception as exc:  # noqa: BLE001 - its replica gone or busy: retry the batch
            raise EmbedderUnavailable(f"{model_id} Embedder call failed: {exc}") from exc
        for (env, _, _), answer in zip(ok, answers, strict=True):
            if answer.ok and answer.model_id == model_id:
                out.setdefault(id(env), {})[model_id] = encode_vector(answer.vector)
    return out


def build_handler(settings: Settings,
                  embedder: Any = None) -> Callable[[Sequence[Envelope]], list[Outbound | Retry]]:
    """The batch handler; ``embedder`` is a Serve handle (looked up by name if not given)."""
    storage = make_storage(settings)
    tombstones = Tombstones(settings.effective_catalog_url)
    view = CachedModelView(settings.effective_catalog_url)
    shadow_handles: dict[str, Any] = {}
    pool = ThreadPoolExecutor(IO_THREADS, thread_name_prefix="feeder-io")
    handles: list[Any] = [embedder] if embedder is not None else []
    replicas = ReplicaCount(None if embedder is None else (lambda: 1))

    def embedder_handle() -> Any:
        # Looked up on first use, so feeders may start before the Embedder and wait for it.
        if not handles:
            try:
                handles.append(serve_names.embedder_handle())
            except Exception as exc:  # noqa: BLE001 - Serve or the app not up (yet)
                raise EmbedderUnavailable(f"no Embedder deployment: {exc}") from exc
        return handles[0]

    def handle_batch(batch: Sequence[Envelope]) -> list[Outbound | Retry]:
        handle = embedder_handle()
        outputs: list[Outbound | Retry] = []
        sent: list[tuple[Envelope, bytes]] = []
        for env, data in zip(batch, _fetch(storage, pool, batch), strict=True):
            if isinstance(data, ObjectMissing):
                outputs.append(failed(env, "missing_object", str(data), stage=STAGE, exc=data))
            else:
                sent.append((env, data))
        if not sent:
            return outputs
        started = time.perf_counter()
        try:  # a list of bytes in, a list of results out, spread over the replicas
            results = embed_spread(handle, [data for _, data in sent], replicas())
        except Exception as exc:  # noqa: BLE001 - replica gone, timeout, overload: retry
            raise EmbedderUnavailable(f"Embedder call failed: {type(exc).__name__}: {exc}") from exc
        per_image_ms = (time.perf_counter() - started) * 1000 / len(sent)
        thumbs = _store_thumbnails(storage, pool, tombstones, sent, results)
        shadows = shadow_vectors(view(), shadow_handles, sent, results)
        for (env, _), result in zip(sent, results, strict=True):
            event = env.event
            assert isinstance(event, ImageValidated)
            if result.ok:
                outputs.append(Outbound("images.processed", event.image_id,
                                        processed_event(event, result, thumbs.get(id(env)),
                                                        shadows.get(id(env)))))
                outputs.append(usage(event, "images_embedded", 1))
                outputs.append(usage(event, "embedding_ms", round(per_image_ms, 3)))
            elif result.error_kind == "decode":
                outputs.append(failed(env, "corrupt", result.error or "", stage=STAGE))
            else:  # a device error on this item (e.g. out of memory even alone): later
                outputs.append(Retry(env, f"Embedder device error: {result.error}",
                                     "EmbedderDeviceError"))
        return fold_usage(outputs)  # usage per tenant per batch, same totals

    return handle_batch
