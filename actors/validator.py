"""The validation stage: ``images.uploaded`` -> ``images.validated`` | ``images.failed``.

Each upload also meters ``tenant.usage`` (one upload, its bytes). Event ids of
those usage events are derived from the image id, so a redelivered upload is
counted once by the aggregator.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Sequence

from actors.validation import Invalid, validate_image
from deeplens.events import (
    FailureReason,
    ImageUploaded,
    ImageValidated,
    Stage,
    utcnow,
)
from deeplens.kafka import Outbound
from deeplens.lanes import same_lane
from deeplens.settings import Settings
from deeplens.stage_sdk import Envelope, failure, usage_event
from deeplens.storage import ObjectMissing, Storage, make_storage
from deeplens.usage_batch import fold_usage

log = logging.getLogger(__name__)

STAGE = "validation"
TOPICS = ("images.uploaded", "images.uploaded.bulk")  # the live lane, then the bulk lane
_USAGE_NS = uuid.UUID("6f1c1f3e-3a0f-4d8e-9d7e-4d6c2b1a0f11")


def failed(env: Envelope, reason: FailureReason, message: str, stage: Stage = STAGE,
           exc: BaseException | None = None) -> Outbound:
    return failure(env, reason, message, stage, type(exc).__name__ if exc else "")


def usage(upload: ImageUploaded) -> list[Outbound]:
    def one(metric: str, quantity: float) -> Outbound:
        return usage_event(upload.tenant_id, metric, quantity, image_id=upload.image_id,
                           namespace=_USAGE_NS, occurred_at=upload.uploaded_at)
    return [one("uploads", 1), one("upload_bytes", upload.file_size)]


def validate_one(env: Envelope, storage: Storage, settings: Settings) -> list[Outbound]:
    upload = env.event
    assert isinstance(upload, ImageUploaded)
    try:
        data = storage.get(upload.storage_path)
    except ObjectMissing as exc:  # no upload was kept (the API answered 503): nothing billed
        return [failed(env, "missing_object", str(exc), exc=exc)]
    out = usage(upload)
    try:
        verdict = validate_image(data, settings.ingestion)
    except Exception as exc:  # noqa: BLE001 - a bad image never stops its batch
        log.exception("validation of %s crashed", upload.image_id)
        return [*out, failed(env, "internal_error", f"{type(exc).__name__}: {exc}", exc=exc)]
    if isinstance(verdict, Invalid):
        log.info("image %s/%s failed validation: %s", upload.tenant_id, upload.image_id,
                 verdict.reason)
        return [*out, failed(env, verdict.reason, verdict.message)]
    validated = ImageValidated(
        **upload.model_dump(exclude={"event_id", "schema_version"}),
        width=verdict.width, height=verdict.height, format=verdict.format,
        validated_at=utcnow(),
    )
    # Bulk work stays on its lane (deeplens.lanes), so the feeders serve live work first.
    topic = same_lane("images.validated", env.origin_topic)
    return [*out, Outbound(topic, upload.image_id, validated)]


def build_handler(settings: Settings) -> Callable[[Sequence[Envelope]], list[Outbound]]:
    """The batch handler the consumer loop runs for this stage."""
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = settings.ingestion.max_image_pixels
    storage = make_storage(settings)

    def handle(batch: Sequence[Envelope]) -> list[Outbound]:
        # Storage errors other than a missing object are transient: they propagate,
        # and the loop rewinds and retries the batch.
        # Usage is folded per tenant per batch (deeplens.usage_batch): same totals.
        return fold_usage([out for env in batch for out in validate_one(env, storage, settings)])

    return handle
