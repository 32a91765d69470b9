"""Reading ``images.failed`` back: listing dead letters and replaying them after a fix."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime

from confluent_kafka import TopicPartition

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
    """Every event on images.failed, oldest first, without joining any consumer group."""
    topic = settings.topic_prefix + "images.failed"
    consumer = make_consumer(settings, f"deeplens-dlq-reader-{uuid.uuid4().hex[:8]}")
    try:
        metadata = consumer.list_topics(topic, timeout=timeout_s).topics[topic]
        ends = {}
        for pid in metadata.partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, pid), timeout=timeout_s)
            if high > low:
                ends[pid] = high
        consumer.assign([TopicPartition(topic, pid, 0) for pid in ends])
        remaining = dict(ends)
        while remaining:
            msg = consumer.poll(timeout_s)
            if msg is None:
                break
            if msg.error() is not None:
                continue
            if msg.offset() + 1 >= remaining.get(msg.partition(), 0):
                remaining.pop(msg.partition(), None)
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
