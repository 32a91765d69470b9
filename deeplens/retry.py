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

from deeplens.events import EVENT_TYPES, ImageFailed, Stage
from deeplens.stage_sdk import (
    H_ATTEMPT,
    H_ERROR,
    H_ERROR_CLASS,
    H_EVENT_TYPE,
    H_NOT_BEFORE,
    H_ORIGIN_OFFSET,
    H_ORIGIN_PARTITION,
    H_ORIGIN_TOPIC,
    Envelope,
    Outbound,
    failure,
)
from deeplens.topics import TOPICS, retry_ladder, retry_topic


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
        H_EVENT_TYPE: type(env.event).topic,
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
