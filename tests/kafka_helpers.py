"""Reading a topic to the end, for assertions."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

from confluent_kafka import Consumer

from deeplens.events import EVENT_TYPES, Event, decode_event
from deeplens.kafka import make_consumer
from deeplens.settings import KafkaSettings


def read_topic(
    settings: KafkaSettings, topic: str, *, expect: int, timeout_s: float = 30.0,
    until: Callable[[list[Event]], bool] | None = None,
) -> list[Event]:
    """Events on ``topic`` (logical name) from the start, once ``expect`` arrived (or
    ``until`` holds for what arrived) or time ran out."""
    consumer: Consumer = make_consumer(settings, f"reader-{uuid.uuid4().hex}")
    consumer.subscribe([settings.topic_prefix + topic])
    events: list[Event] = []
    deadline = time.monotonic() + timeout_s
    done = until or (lambda got: len(got) >= expect)
    try:
        while not done(events) and time.monotonic() < deadline:
            for msg in consumer.consume(100, timeout=0.3):
                if msg.error() is None:
                    events.append(decode_event(EVENT_TYPES[topic], msg.value()))
    finally:
        consumer.close()
    return events


def read_raw(settings: KafkaSettings, topic: str, *, expect: int, timeout_s: float = 30.0):
    consumer: Consumer = make_consumer(settings, f"reader-{uuid.uuid4().hex}")
    consumer.subscribe([settings.topic_prefix + topic])
    out = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(out) < expect and time.monotonic() < deadline:
            out.extend(m for m in consumer.consume(100, timeout=0.3) if m.error() is None)
    finally:
        consumer.close()
    return out
