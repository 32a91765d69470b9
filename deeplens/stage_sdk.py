"""What a stage handler needs, in one place: its input, its verdicts and its outputs.

A handler receives :class:`Envelope` values (a decoded event with its Kafka
coordinates beside it) and returns, per item, an :class:`Outbound` to publish or a
:class:`Retry` verdict (a transient failure the consumer loop sends up the stage's
retry ladder). :func:`failure` builds the ``images.failed`` value of a permanent
failure; :func:`usage_event` the ``tenant.usage`` value of a metered quantity.

Retried events carry their history in Kafka headers (``H_*``), as Kafka Connect's
dead-letter headers do; :func:`envelope_of` reads them back.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from deeplens.events import (
    Event,
    FailureReason,
    ImageDeleted,
    ImageFailed,
    ImageProcessed,
    Stage,
    TenantUsage,
)
from deeplens.kafka import Outbound

__all__ = ["Envelope", "Outbound", "Retry", "envelope_of", "failure", "split_deleted",
           "usage_event"]

H_EVENT_TYPE = "event-type"
H_ATTEMPT = "attempt"
H_NOT_BEFORE = "not-before-ms"
H_ORIGIN_TOPIC = "origin-topic"
H_ORIGIN_PARTITION = "origin-partition"
H_ORIGIN_OFFSET = "origin-offset"
H_ERROR_CLASS = "error-class"
H_ERROR = "error-message"


@dataclass(frozen=True)
class Envelope:
    """A decoded event with its Kafka coordinates beside it, not inside it."""

    topic: str  # logical name, prefix removed
    partition: int
    offset: int
    key: str | None
    timestamp: datetime | None
    event: Event
    headers: dict[str, str] = field(default_factory=dict)
    attempt: int = 1  # 1 on first delivery; n on the (n-1)th retry rung
    origin_topic: str = ""  # where the event first arrived (a retry keeps it)
    origin_partition: int = -1
    origin_offset: int = -1


@dataclass(frozen=True)
class Retry:
    """A handler's verdict for one item: transient failure, try it again later."""

    envelope: Envelope
    error: str
    error_class: str = ""


def envelope_of(event: Event, *, topic: str, partition: int, offset: int, key: str | None,
                timestamp: datetime | None, headers: dict[str, str]) -> Envelope:
    """An envelope for a delivered event; a retried one keeps its attempt count and origin."""
    if H_ATTEMPT not in headers:
        return Envelope(topic, partition, offset, key, timestamp, event, headers, 1,
                        topic, partition, offset)
    return Envelope(
        topic, partition, offset, key, timestamp, event, headers,
        attempt=int(headers[H_ATTEMPT]),
        origin_topic=headers.get(H_ORIGIN_TOPIC, topic),
        origin_partition=int(headers.get(H_ORIGIN_PARTITION, partition)),
        origin_offset=int(headers.get(H_ORIGIN_OFFSET, offset)),
    )


def failure(env: Envelope, reason: FailureReason, message: str, stage: Stage,
            error_class: str = "") -> Outbound:
    """A permanent failure (or a dead letter) of one event, as an ``images.failed`` value."""
    event = env.event
    return Outbound("images.failed", env.key, ImageFailed(
        tenant_id=getattr(event, "tenant_id", None), image_id=getattr(event, "image_id", None),
        event=event.model_dump(mode="json"), event_type=type(event).topic, reason=reason,
        message=message[:2000], stage=stage, attempt=env.attempt, error_class=error_class,
        origin_topic=env.origin_topic, origin_partition=env.origin_partition,
        origin_offset=env.origin_offset,
    ))


def usage_event(tenant_id: str, metric: str, quantity: float, *, image_id: str | None = None,
                namespace: uuid.UUID | None = None, occurred_at: datetime | None = None) -> Outbound:
    """A ``tenant.usage`` value. For an image, its event id is derived from the image and the
    metric in the stage's ``namespace``, so a redelivered image is metered once."""
    fields: dict = {"tenant_id": tenant_id, "metric": metric, "quantity": quantity}
    if image_id is not None:
        if namespace is None:
            raise ValueError("usage of an image needs its stage's namespace")
        fields["event_id"] = uuid.uuid5(namespace, f"{image_id}/{metric}")
        fields["image_id"] = image_id
    if occurred_at is not None:
        fields["occurred_at"] = occurred_at
    return Outbound("tenant.usage", tenant_id, TenantUsage(**fields))


def split_deleted(batch: Sequence[Envelope]) -> tuple[list[ImageDeleted], list[Envelope]]:
    """A batch of ``images.processed`` and ``images.deleted``: the deletions, and the
    envelopes of processed images (in batch order)."""
    deleted = [env.event for env in batch if isinstance(env.event, ImageDeleted)]
    processed = [env for env in batch if isinstance(env.event, ImageProcessed)]
    return deleted, processed  # type: ignore[return-value]
