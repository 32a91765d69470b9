"""Reading ``images.failed`` back: listing dead letters and replaying them after a fix."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime

from confluent_kafka import KafkaError, TopicPartition

from deeplens.events import EventDecodeError, ImageFailed, decode_event
from deeplens.kafka import EventProducer, make_consumer
from deeplens.retry import replay
from deeplens.settings import KafkaSettings

# Failures worth replaying after a fix: the retry ladder gave up, or a bug crashed a
# handler. Permanent verdicts on the image itself (corrupt, too small) are not.
REPLAYABLE = frozenset({"transient_exhausted", "internal_error", "index_error"})


@dataclass(frozen=True)
class DeadLetter:
    offset: int
    failure: ImageFailed


def read_failures(settings: KafkaSettings, timeout_s: float = 10.0) -> Iterator[DeadLetter]:
    """Every event on images.failed, oldest first, without joining any consumer group.

    Reads each partition to its end (the consumer's end-of-partition event), not to a
    watermark: a watermark is only as true as the broker's ListOffsets answer."""
    topic = settings.topic_prefix + "images.failed"
    consumer = make_consumer(settings, f"deeplens-dlq-reader-{uuid.uuid4().hex[:8]}",
                             **{"enable.partition.eof": True})
    try:
        metadata = consumer.list_topics(topic, timeout=timeout_s).topics[topic]
        remaining = set(metadata.partitions)
        consumer.assign([TopicPartition(topic, pid, 0) for pid in remaining])
        while remaining:
            msg = consumer.poll(timeout_s)
            if msg is None:
                break  # the broker went quiet: what was read is all there is to show
            if msg.error() is not None:
                if msg.error().code() == KafkaError._PARTITION_EOF:
                    remaining.discard(msg.partition())
                continue
            try:
                yield DeadLetter(msg.offset(), decode_event(ImageFailed, msg.value()))
            except EventDecodeError:
                continue
    finally:
        consumer.close()


def select(letters: Iterator[DeadLetter], *, stage: str | None = None,
           since: datetime | None = None, replayable_only: bool = True) -> list[DeadLetter]:
    chosen = []
    for letter in letters:
        f = letter.failure
        if replayable_only and f.reason not in REPLAYABLE:
            continue
        if stage and f.stage != stage:
            continue
        if since and f.failed_at < since:
            continue
        chosen.append(letter)
    return chosen


def replay_letters(settings: KafkaSettings, letters: list[DeadLetter]) -> tuple[int, int]:
    """Re-publish to each letter's stage ladder (due now); (replayed, skipped)."""
    outbound = [o for o in (replay(letter.failure) for letter in letters) if o is not None]
    if outbound:
        EventProducer(settings, prefix=settings.topic_prefix).send(outbound)
    return len(outbound), len(letters) - len(outbound)
