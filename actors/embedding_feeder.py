"""The embedding stage: ``images.validated`` -> Embedder (Ray Serve) -> ``images.processed``.

Feeders are the Kafka side of the GPU path: they read validated images, fetch
their bytes and send them to the Embedder deployment through a handle, so the
Embedder's ``@serve.batch`` forms batches across every feeder's requests. The
number of requests in flight is bounded by batch size x batches in flight; at the
bound the consumer loop pauses its partitions.

An image the Embedder cannot decode fails alone (``images.failed``,
``stage=embedding``). A fault of the Embedder itself (replica gone, overloaded,
device error) raises, so the batch is retried and nothing is failed for it.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from actors.validator import failed
from deeplens.consumer_loop import Envelope
from deeplens.events import ImageProcessed, ImageValidated, TenantUsage, utcnow
from deeplens.kafka import Outbound
from deeplens.retry import Retry
from deeplens.settings import Settings
from deeplens.storage import ObjectMissing, make_storage

log = logging.getLogger(__name__)

STAGE = "embedding"
TOPICS = ("images.validated",)
EMBEDDER_APP = "embedder"
_USAGE_NS = uuid.UUID("0b6f3d0e-51c4-4a4f-9a55-1f0f3c9c7e21")


class EmbedderUnavailable(RuntimeError):
    """The Embedder could not answer (a transient fault: the batch is retried)."""


def encode_features(vector: Any) -> list[float]:
    """Unit-norm float32 vector -> JSON floats rounded to 8 decimals (below float32 resolution)."""
    return [round(float(x), 8) for x in vector]


def processed_event(event: ImageValidated, vector: Any, model_id: str) -> ImageProcessed:
    return ImageProcessed(
        **event.model_dump(exclude={"event_id", "schema_version"}),
        features=encode_features(vector), feature_model=model_id, processed_at=utcnow(),
    )


def usage_event(event: ImageValidated, metric: str, quantity: float) -> Outbound:
    event_id = uuid.uuid5(_USAGE_NS, f"{event.image_id}/{metric}")
    return Outbound("tenant.usage", event.tenant_id, TenantUsage(
        event_id=event_id, tenant_id=event.tenant_id, metric=metric,  # type: ignore[arg-type]
        quantity=quantity, image_id=event.image_id))


def build_handler(settings: Settings,
                  embedder: Any = None) -> Callable[[Sequence[Envelope]], list[Outbound | Retry]]:
    """The batch handler; ``embedder`` is a Serve handle (looked up by name if not given)."""
    storage = make_storage(settings)
    handles: list[Any] = [embedder] if embedder is not None else []

    def embedder_handle() -> Any:
        # Looked up on first use, so feeders may start before the Embedder and wait for it.
        if not handles:
            from ray import serve

            try:
                handles.append(serve.get_deployment_handle("Embedder", app_name=EMBEDDER_APP))
            except Exception as exc:  # noqa: BLE001 - Serve or the app not up (yet)
                raise EmbedderUnavailable(f"no Embedder deployment: {exc}") from exc
        return handles[0]

    def handle_batch(batch: Sequence[Envelope]) -> list[Outbound | Retry]:
        handle = embedder_handle()
        outputs: list[Outbound | Retry] = []
        pending: list[tuple[Envelope, Any]] = []
        started = time.perf_counter()
        for env in batch:
            event = env.event
            assert isinstance(event, ImageValidated)
            try:
                data = storage.get(event.storage_path)
            except ObjectMissing as exc:
                outputs.append(failed(env, "missing_object", str(exc), stage=STAGE, exc=exc))
                continue
            pending.append((env, handle.embed.remote(data)))
        try:
            results = [(env, response.result(timeout_s=300)) for env, response in pending]
        except Exception as exc:  # noqa: BLE001 - replica gone, timeout, overload: retry
            raise EmbedderUnavailable(f"Embedder call failed: {type(exc).__name__}: {exc}") from exc
        per_image_ms = (time.perf_counter() - started) * 1000 / max(len(pending), 1)
        for env, result in results:
            event = env.event
            assert isinstance(event, ImageValidated)
            if result.ok:
                outputs.append(Outbound("images.processed", event.image_id,
                                        processed_event(event, result.vector, result.model_id)))
                outputs.append(usage_event(event, "images_embedded", 1))
                outputs.append(usage_event(event, "embedding_ms", round(per_image_ms, 3)))
            elif result.error_kind == "decode":
                outputs.append(failed(env, "embedding_error", result.error or "", stage=STAGE))
            else:  # a device error on this item (e.g. out of memory even alone): later
                outputs.append(Retry(env, f"Embedder device error: {result.error}",
                                     "EmbedderDeviceError"))
        return outputs

    return handle_batch
