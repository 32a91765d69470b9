"""The one consumer loop every DeepLens stage runs.

Delivery is **at-least-once**: a message's offset is committed only after the
handler's output events for its batch have been acknowledged by the broker, and
only once every earlier message of its partition is done too. A crash between
produce and commit redelivers; sinks must be idempotent.

The loop thread polls; handlers run in worker threads, up to
``max_in_flight`` batches at once. At that bound the loop **pauses** its
partitions (it keeps polling, so the group membership stays alive) and resumes
them when work drains: slow downstream services slow consumption instead of
growing memory. A handler that raises is retried in place with growing backoff
(its batch stays in flight, so a down dependency ends in paused partitions, not
lost messages). Messages that cannot be decoded become :class:`ImageFailed`
values on ``images.failed`` and the loop goes on.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
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
    pauses: int = 0
    in_flight: int = 0
    last_error: str = ""
    assigned: list[tuple[str, int]] = field(default_factory=list)


@dataclass
class _Batch:
    messages: list[Message]
    envelopes: list[Envelope] = field(default_factory=list)
    done: bool = False
    future: Future[None] | None = None

    def last_offsets(self) -> dict[tuple[str, int], int]:
        top: dict[tuple[str, int], int] = {}
        for msg in self.messages:
            tp = (msg.topic(), msg.partition())
            top[tp] = max(top.get(tp, -1), msg.offset())
        return top


class ConsumerLoop:
    """Poll -> decode -> handler -> produce outputs -> await acks -> commit, pipelined."""

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
        max_in_flight: int = 1,
        before_commit: Callable[[Sequence[Envelope]], None] | None = None,
    ) -> None:
        self.names = TopicNames(settings.topic_prefix)
        self.settings = settings
        self.stage: Stage = stage
        self.topics = list(topics)
        self.handler = handler
        self.group = self.names.group(group or stage)
        self.batch_size = batch_size or settings.batch_size
        self.max_in_flight = max(1, max_in_flight)
        self.producer = producer or EventProducer(settings, prefix=settings.topic_prefix)
        self.before_commit = before_commit  # a test hook: runs after acks, before commit
        self.stats = LoopStats()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._batches: deque[_Batch] = deque()  # in consumption order
        self._owned: set[tuple[str, int]] = set()
        self._paused = False
        self._lock = threading.Lock()
        self._wake = threading.Event()  # a worker finished: the loop has work to do

    # -- lifecycle -----------------------------------------------------------------
    def start(self) -> ConsumerLoop:
        self._thread = threading.Thread(target=self.run, name=f"loop-{self.stage}", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 30.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def run(self) -> None:
        """Run until :meth:`stop`; finishes in-flight batches, commits, leaves the group."""
        consumer = make_consumer(self.settings, self.group)
        self._consumer = consumer
        executor = ThreadPoolExecutor(self.max_in_flight, thread_name_prefix=f"{self.stage}-work")
        consumer.subscribe(
            [self.names.physical(t) for t in self.topics],
            on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost,
        )
        try:
            while not self._stop.is_set():
                self._step(consumer, executor)
            self._drain(consumer, timeout_s=20.0)
        finally:
            executor.shutdown(wait=False, cancel_futures=True)
            consumer.close()

    # -- one iteration -------------------------------------------------------------
    def _step(self, consumer: Consumer, executor: ThreadPoolExecutor) -> None:
        self._commit_done(consumer)
        in_flight = sum(1 for b in self._batches if not b.done)
        self.stats.in_flight = in_flight
        if in_flight >= self.max_in_flight:
            self._set_paused(consumer, True)
        elif self._paused and in_flight < max(1, self.max_in_flight // 2 + 1):
            self._set_paused(consumer, False)
        if self._paused:
            # Serve rebalance callbacks and heartbeats, but wake as soon as a batch is done
            # rather than sleeping a whole poll timeout with the downstream idle.
            messages = consumer.consume(self.batch_size, timeout=0)
            if not messages:
                self._wake.wait(self.settings.poll_timeout_s)
                self._wake.clear()
        else:
            messages = consumer.consume(self.batch_size, timeout=self.settings.poll_timeout_s)
        batch = [m for m in messages if not self._is_error(m)]
        if not batch:
            return
        # Messages fetched before a pause still arrive: they join the pipeline anyway,
        # so what is held in memory stays bounded by what was fetched.
        self.stats.consumed += len(batch)
        entry = _Batch(batch)
        with self._lock:
            self._batches.append(entry)
        entry.future = executor.submit(self._work, entry)

    def _work(self, entry: _Batch) -> None:
        """Handle one batch until it succeeds (or the loop stops); runs in a worker thread."""
        backoff = 0.0
        while True:
            try:
                outputs = self._process(entry)
                self.producer.send(outputs)
                self.stats.produced += len(outputs)
                entry.done = True
                self._wake.set()
                return
            except Exception as exc:  # noqa: BLE001 - any fault: back off, retry the batch
                self.stats.batch_retries += 1
                self.stats.last_error = f"{type(exc).__name__}: {exc}"
                backoff = min(max(backoff * 2, 0.5), 30.0)
                log.error("%s: batch of %d failed (%s); retrying in %.1fs", self.stage,
                          len(entry.messages), self.stats.last_error, backoff)
                if self._stop.wait(backoff):
                    return  # stopping: leave it uncommitted, it will be redelivered

    def _process(self, entry: _Batch) -> list[Outbound]:
        envelopes: list[Envelope] = []
        outputs: list[Outbound] = []
        for msg in entry.messages:
            decoded = self._decode(msg)
            if isinstance(decoded, Outbound):
                outputs.append(decoded)
            else:
                envelopes.append(decoded)
        entry.envelopes = envelopes
        if envelopes:
            outputs.extend(self.handler(envelopes))
            self.stats.handled += len(envelopes)
        return outputs

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

    # -- commits -------------------------------------------------------------------
    def _commit_done(self, consumer: Consumer, only: set[tuple[str, int]] | None = None) -> None:
        """Commit the longest finished prefix of batches (consumption order)."""
        offsets: dict[tuple[str, int], int] = {}
        finished: list[_Batch] = []
        with self._lock:
            while self._batches and self._batches[0].done:
                entry = self._batches.popleft()
                finished.append(entry)
                for tp, last in entry.last_offsets().items():
                    offsets[tp] = max(offsets.get(tp, -1), last)
        if not finished:
            return
        owned = self._owned if only is None else only
        commit = [TopicPartition(t, p, o + 1) for (t, p), o in offsets.items() if (t, p) in owned]
        if self.before_commit is not None:
            self.before_commit([env for e in finished for env in e.envelopes])
        if commit:
            consumer.commit(offsets=commit, asynchronous=False)
            self.stats.commits += 1

    def _drain(self, consumer: Consumer, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while any(not b.done for b in self._batches) and time.monotonic() < deadline:
            time.sleep(0.05)
        self._commit_done(consumer)

    def _set_paused(self, consumer: Consumer, paused: bool) -> None:
        if paused == self._paused:
            return
        assignment = consumer.assignment()
        if assignment:
            (consumer.pause if paused else consumer.resume)(assignment)
        self._paused = paused
        if paused:
            self.stats.pauses += 1
            log.info("%s: %d batches in flight, partitions paused", self.stage, self.max_in_flight)

    # -- rebalance -----------------------------------------------------------------
    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._owned |= {(p.topic, p.partition) for p in partitions}
        self.stats.assigned = sorted(self._owned)
        if self._paused and partitions:
            consumer.pause(partitions)
        log.info("%s: assigned %s", self.stage, [(p.topic, p.partition) for p in partitions])

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Finish what is in flight, commit it, then let the partitions go."""
        revoked = {(p.topic, p.partition) for p in partitions}
        deadline = time.monotonic() + 15.0
        while any(not b.done for b in self._batches) and time.monotonic() < deadline:
            time.sleep(0.05)
        self._commit_done(consumer, only=self._owned)
        self._owned -= revoked
        self.stats.assigned = sorted(self._owned)
        log.info("%s: revoked %s", self.stage, sorted(revoked))

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Lost (not revoked): another member may own them already; commit nothing.
        self._owned -= {(p.topic, p.partition) for p in partitions}
        self.stats.assigned = sorted(self._owned)

    def _is_error(self, msg: Message) -> bool:
        err = msg.error()
        if err is None:
            return False
        if err.code() != KafkaError._PARTITION_EOF:
            self.stats.last_error = err.str()
            log.warning("%s: consumer error: %s", self.stage, err.str())
        return True


def _retry_model(msg: Message) -> type[Event]:
    """Retry topics carry any event type; the header ``event-type`` names it."""
    for key, value in msg.headers() or []:
        if key == "event-type" and value and value.decode() in EVENT_TYPES:
            return EVENT_TYPES[value.decode()]
    raise EventDecodeError("invalid_event", f"no usable event-type header on {msg.topic()}")
