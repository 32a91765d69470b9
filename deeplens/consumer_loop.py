"""The one consumer loop every DeepLens stage runs.

Delivery is **at-least-once**: a batch's offsets are committed only after the
handler's output events have been acknowledged by the broker. A crash between
produce and commit therefore redelivers the batch; sinks must be idempotent.

The loop polls in its own thread (never inside an event loop). Messages that
cannot be decoded become :class:`ImageFailed` values on ``images.failed`` and
the loop goes on; a handler that raises is treated as a transient fault of the
whole batch: the partitions are rewound to the batch start and retried with
backoff, so nothing is committed that was not processed.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from confluent_kafka import Consumer, KafkaError, Message, TopicPartition

from deeplens.events import EVENT_TYPES, Event, EventDecodeError, ImageFailed, Stage, decode_event
from deeplens.kafka import EventProducer, Outbound, make_consumer
from deeplens.settings import KafkaSettings
from deeplens.topics import TopicNames

log = logging.getLogger(__name__)


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


BatchHandler = Callable[[Sequence[Envelope]], Sequence[Outbound]]


@dataclass
class LoopStats:
    consumed: int = 0
    handled: int = 0
    decode_failures: int = 0
    produced: int = 0
    commits: int = 0
    batch_retries: int = 0
    last_error: str = ""
    assigned: list[tuple[str, int]] = field(default_factory=list)


class ConsumerLoop:
    """Poll -> decode -> handler -> produce outputs -> await acks -> commit."""

    def __init__(
        self,
        *,
        settings: KafkaSettings,
        stage: Stage,
        topics: Sequence[str],
        handler: BatchHandler,
        group: str | None = None,
        producer: EventProducer | None = None,
        batch_size: int | None = None,
        before_commit: Callable[[Sequence[Envelope]], None] | None = None,
    ) -> None:
        self.names = TopicNames(settings.topic_prefix)
        self.settings = settings
        self.stage: Stage = stage
        self.topics = list(topics)
        self.handler = handler
        self.group = self.names.group(group or stage)
        self.batch_size = batch_size or settings.batch_size
        self.producer = producer or EventProducer(settings, prefix=settings.topic_prefix)
        self.before_commit = before_commit  # a test hook: runs after acks, before commit
        self.stats = LoopStats()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._consumer: Consumer | None = None
        self._backoff_s = 0.0
        self.paused = False

    # -- lifecycle -----------------------------------------------------------------
    def start(self) -> ConsumerLoop:
        self._thread = threading.Thread(target=self.run, name=f"loop-{self.stage}", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 15.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def run(self) -> None:
        """Run until :meth:`stop`; closes the consumer (leaving the group) on exit."""
        consumer = make_consumer(self.settings, self.group)
        self._consumer = consumer
        consumer.subscribe(
            [self.names.physical(t) for t in self.topics],
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_revoke,
        )
        try:
            while not self._stop.is_set():
                self.poll_once(consumer)
        finally:
            consumer.close()
            self._consumer = None

    # -- one iteration -------------------------------------------------------------
    def poll_once(self, consumer: Consumer) -> int:
        messages = consumer.consume(self.batch_size, timeout=self.settings.poll_timeout_s)
        batch = [m for m in messages if not self._is_error(m)]
        if not batch:
            return 0
        self.stats.consumed += len(batch)
        try:
            outputs, envelopes = self._process(batch)
            self.producer.send(outputs)
            self.stats.produced += len(outputs)
            if self.before_commit is not None:
                self.before_commit(envelopes)
            self._commit(consumer, batch)
        except Exception as exc:  # noqa: BLE001 - any fault: rewind, back off, retry
            self._rewind(consumer, batch, exc)
            return 0
        self._backoff_s = 0.0
        return len(batch)

    def _process(self, batch: list[Message]) -> tuple[list[Outbound], list[Envelope]]:
        envelopes: list[Envelope] = []
        outputs: list[Outbound] = []
        for msg in batch:
            decoded = self._decode(msg)
            if isinstance(decoded, Outbound):
                outputs.append(decoded)
            else:
                envelopes.append(decoded)
        if envelopes:
            outputs.extend(self.handler(envelopes))
            self.stats.handled += len(envelopes)
        return outputs, envelopes

    def _decode(self, msg: Message) -> Envelope | Outbound:
        topic = self.names.logical(msg.topic())
        key = msg.key().decode(errors="replace") if msg.key() else None
        try:
            model = EVENT_TYPES[topic] if topic in EVENT_TYPES else _retry_model(msg)
            event = decode_event(model, msg.value())
        except EventDecodeError as exc:
            self.stats.decode_failures += 1
            log.warning("%s: undecodable message %s[%d]@%d: %s", self.stage, topic,
                        msg.partition(), msg.offset(), exc)
            raw = msg.value() or b""
            failed = ImageFailed(
                image_id=key, raw=raw[:4096].decode(errors="replace"), reason=exc.reason,
                message=exc.message, stage=self.stage, error_class=type(exc).__name__,
                origin_topic=topic, origin_partition=msg.partition(), origin_offset=msg.offset(),
            )
            return Outbound("images.failed", key, failed)
        ts_type, ts_ms = msg.timestamp()
        return Envelope(
            topic=topic, partition=msg.partition(), offset=msg.offset(), key=key,
            timestamp=datetime.fromtimestamp(ts_ms / 1000).astimezone() if ts_type else None,
            event=event,
            headers={k: (v or b"").decode(errors="replace") for k, v in (msg.headers() or [])},
        )

    def _commit(self, consumer: Consumer, batch: list[Message]) -> None:
        consumer.commit(offsets=_next_offsets(batch), asynchronous=False)
        self.stats.commits += 1

    def _rewind(self, consumer: Consumer, batch: list[Message], exc: Exception) -> None:
        """Seek every partition of the batch back to its first message, then back off."""
        self.stats.batch_retries += 1
        self.stats.last_error = f"{type(exc).__name__}: {exc}"
        self._backoff_s = min(max(self._backoff_s * 2, 0.5), 30.0)
        log.error("%s: batch of %d failed (%s); retrying in %.1fs", self.stage, len(batch),
                  self.stats.last_error, self._backoff_s)
        firsts: dict[tuple[str, int], int] = {}
        for msg in batch:
            tp = (msg.topic(), msg.partition())
            firsts[tp] = min(firsts.get(tp, msg.offset()), msg.offset())
        for (topic, partition), offset in firsts.items():
            try:
                consumer.seek(TopicPartition(topic, partition, offset))
            except Exception as seek_exc:  # noqa: BLE001 - partition revoked meanwhile
                log.info("seek %s[%d] skipped: %s", topic, partition, seek_exc)
        self._stop.wait(self._backoff_s)

    # -- rebalance -----------------------------------------------------------------
    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.stats.assigned.extend((p.topic, p.partition) for p in partitions)
        log.info("%s: assigned %s", self.stage, [(p.topic, p.partition) for p in partitions])

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Batches are handled and committed synchronously inside poll_once, so at a
        # rebalance callback (which runs inside consume()) nothing processed is
        # uncommitted and nothing uncommitted was processed: dropping is safe.
        revoked = {(p.topic, p.partition) for p in partitions}
        self.stats.assigned = [tp for tp in self.stats.assigned if tp not in revoked]
        log.info("%s: revoked %s", self.stage, sorted(revoked))

    def _is_error(self, msg: Message) -> bool:
        err = msg.error()
        if err is None:
            return False
        if err.code() != KafkaError._PARTITION_EOF:
            self.stats.last_error = err.str()
            log.warning("%s: consumer error: %s", self.stage, err.str())
        return True


def _next_offsets(batch: list[Message]) -> list[TopicPartition]:
    top: dict[tuple[str, int], int] = {}
    for msg in batch:
        tp = (msg.topic(), msg.partition())
        top[tp] = max(top.get(tp, -1), msg.offset())
    return [TopicPartition(t, p, o + 1) for (t, p), o in top.items()]


def _retry_model(msg: Message) -> type[Event]:
    """Retry topics carry any event type; the header ``event-type`` names it."""
    for key, value in msg.headers() or []:
        if key == "event-type" and value and value.decode() in EVENT_TYPES:
            return EVENT_TYPES[value.decode()]
    raise EventDecodeError("invalid_event", f"no usable event-type header on {msg.topic()}")
