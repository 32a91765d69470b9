"""Retry ladders and dead letters.

A transient failure of an event in stage S goes to ``S.retry.1`` (due 10 s
later), then ``S.retry.2`` (1 min), ``S.retry.3`` (10 min); past the last rung
it is dead-lettered to ``images.failed`` with reason ``transient_exhausted``.
Permanent failures (a corrupt image) go to ``images.failed`` at once. Every
retried or failed event carries its attempt count and its origin (topic,
partition, offset) and the error's class and message, as Kafka Connect's DLQ
headers do.

Ordering: a retried event is processed after events that arrived later on its
origin partition. Every DeepLens sink is keyed by image id and idempotent, and
the catalog never moves an image backwards, so this reordering is harmless.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from deeplens.events import EVENT_TYPES, Event, FailureReason, ImageFailed, Stage
from deeplens.kafka import Outbound
from deeplens.topics import TOPICS, retry_ladder, retry_topic

if TYPE_CHECKING:
    from deeplens.consumer_loop import Envelope

H_EVENT_TYPE = "event-type"
H_ATTEMPT = "attempt"
H_NOT_BEFORE = "not-before-ms"
H_ORIGIN_TOPIC = "origin-topic"
H_ORIGIN_PARTITION = "origin-partition"
H_ORIGIN_OFFSET = "origin-offset"
H_ERROR_CLASS = "error-class"
H_ERROR = "error-message"


@dataclass(frozen=True)
class Retry:
    """A handler's verdict for one item: transient failure, try it again later."""

    envelope: Envelope
    error: str
    error_class: str = ""


def event_type_of(event: Event) -> str:
    return type(event).topic


def failure(env: Envelope, reason: FailureReason, message: str, stage: Stage,
            error_class: str = "") -> Outbound:
    """A permanent failure (or a dead letter) of one event, as an ``images.failed`` value."""
    event = env.event
    return Outbound("images.failed", env.key, ImageFailed(
        tenant_id=getattr(event, "tenant_id", None), image_id=getattr(event, "image_id", None),
        event=event.model_dump(mode="json"), event_type=event_type_of(event), reason=reason,
        message=message[:2000], stage=stage, attempt=env.attempt, error_class=error_class,
        origin_topic=env.origin_topic, origin_partition=env.origin_partition,
        origin_offset=env.origin_offset,
    ))


def retry_or_dead_letter(env: Envelope, stage: Stage, error: str, error_class: str,
                         now_ms: int | None = None, delay_scale: float = 1.0) -> Outbound:
    """The next rung of the stage's ladder for this event, or its dead letter."""
    ladder = retry_ladder(stage)
    rung = env.attempt  # attempt 1 failed -> rung 1, ...
    if rung > len(ladder):
        return failure(env, "transient_exhausted",
                       f"gave up after {env.attempt} attempts: {error}", stage, error_class)
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    spec = ladder[rung - 1]
    return Outbound(spec.name, env.key, env.event, headers={
        H_EVENT_TYPE: event_type_of(env.event),
        H_ATTEMPT: str(env.attempt + 1),
        H_NOT_BEFORE: str(now_ms + int(spec.delay_ms * delay_scale)),
        H_ORIGIN_TOPIC: env.origin_topic,
        H_ORIGIN_PARTITION: str(env.origin_partition),
        H_ORIGIN_OFFSET: str(env.origin_offset),
        H_ERROR_CLASS: error_class,
        H_ERROR: error[:500],
    })


def replay(failed: ImageFailed) -> Outbound | None:
    """Re-publish a dead letter to the first rung of its stage's ladder, due now."""
    if failed.event is None or failed.event_type not in EVENT_TYPES:
        return None
    if retry_topic(failed.stage, 1) not in TOPICS:
        return None
    event = EVENT_TYPES[failed.event_type].model_validate(failed.event)
    return Outbound(retry_topic(failed.stage, 1), failed.image_id, event, headers={
        H_EVENT_TYPE: failed.event_type,
        H_ATTEMPT: "1",
        H_NOT_BEFORE: "0",
        H_ORIGIN_TOPIC: failed.origin_topic,
        H_ORIGIN_PARTITION: str(failed.origin_partition),
        H_ORIGIN_OFFSET: str(failed.origin_offset),
    })
