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

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from deeplens.events import EVENT_TYPES, Event, EventDecodeError, ImageFailed, Stage, decode_event
from deeplens.kafka import EventProducer, Outbound, make_consumer
from deeplens.retry import (
    H_ATTEMPT,
    H_EVENT_TYPE,
    H_NOT_BEFORE,
    H_ORIGIN_OFFSET,
    H_ORIGIN_PARTITION,
    H_ORIGIN_TOPIC,
    Retry,
    retry_or_dead_letter,
)
from deeplens.settings import KafkaSettings
from deeplens.topics import TopicNames, retry_ladder

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
    attempt: int = 1  # 1 on first delivery; n on the (n-1)th retry rung
    origin_topic: str = ""  # where the event first arrived (a retry keeps it)
    origin_partition: int = -1
    origin_offset: int = -1


BatchHandler = Callable[[Sequence[Envelope]], Sequence["Outbound | Retry"]]


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
    failed_out: int = 0  # images.failed events produced (permanent failures, poison, DLQ)
    busy_s: float = 0.0  # time spent in the handler
    retried: int = 0  # events sent to a retry rung
    dead_lettered: int = 0
    held: int = 0  # retry partitions held until their next message is due
    last_error: str = ""
    assigned: list[tuple[str, int]] = field(default_factory=list)


@dataclass
class _Batch:
    messages: list[Message]
    envelopes: list[Envelope] = field(default_factory=list)
    undecodable: list[Outbound] = field(default_factory=list)
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
        inplace_attempts: int | None = None,
        on_fatal: Callable[[], None] | None = None,
    ) -> None:
        self.names = TopicNames(settings.topic_prefix)
        self.settings = settings
        self.stage: Stage = stage
        self.ladder = [spec.name for spec in retry_ladder(stage)]
        self.topics = list(topics) + [t for t in self.ladder if t not in topics]
        self.handler = handler
        # A failing batch is retried in place (partitions paused) this many times; then
        # its events climb the stage's retry ladder. Stages without a ladder never give up.
        self.inplace_attempts = inplace_attempts or settings.retry_inplace_attempts
        self.group = self.names.group(group or stage)
        self.batch_size = batch_size or settings.batch_size
        self.max_in_flight = max(1, max_in_flight)
        self.producer = producer or EventProducer(settings, prefix=settings.topic_prefix)
        self.before_commit = before_commit  # a test hook: runs after acks, before commit
        self.on_fatal = on_fatal  # e.g. exit the actor process so Ray restarts it
        self.stats = LoopStats()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._batches: deque[_Batch] = deque()  # in consumption order
        self._owned: set[tuple[str, int]] = set()
        self._paused = False
        self._paused_tps: set[tuple[str, int]] = set()
        self._held: dict[tuple[str, int], int] = {}  # retry partition -> due time (ms)
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
        failures = 0
        try:
            while not self._stop.is_set():
                try:
                    self._step(consumer, executor)
                    failures = 0
                except KafkaException as exc:  # a broker hiccup: log, keep polling
                    failures += 1
                    self.stats.last_error = f"KafkaException: {exc}"
                    log.warning("%s: %s (%d in a row)", self.stage, exc, failures)
                    if failures >= 50:
                        raise
                    self._stop.wait(min(0.1 * failures, 2.0))
            self._drain(consumer, timeout_s=20.0)
        except Exception:
            log.exception("%s: consumer loop failed", self.stage)
            if self.on_fatal is not None:
                self.on_fatal()
            raise
        finally:
            executor.shutdown(wait=False, cancel_futures=True)
            consumer.close()

    # -- one iteration -------------------------------------------------------------
    def _step(self, consumer: Consumer, executor: ThreadPoolExecutor) -> None:
        self._commit_done(consumer)
        in_flight = sum(1 for b in self._batches if not b.done)
        self.stats.in_flight = in_flight
        if in_flight >= self.max_in_flight:
            if not self._paused:
                self.stats.pauses += 1
                log.info("%s: %d batches in flight, partitions paused", self.stage, in_flight)
            self._paused = True
        elif self._paused and in_flight < max(1, self.max_in_flight // 2 + 1):
            self._paused = False
        self._apply_pauses(consumer)
        if self._paused:
            # Serve rebalance callbacks and heartbeats, but wake as soon as a batch is done
            # rather than sleeping a whole poll timeout with the downstream idle.
            messages = consumer.consume(self.batch_size, timeout=0)
            if not messages:
                self._wake.wait(self.settings.poll_timeout_s)
                self._wake.clear()
        else:
            messages = consumer.consume(self.batch_size, timeout=self.settings.poll_timeout_s)
        batch = self._hold_not_due(consumer, [m for m in messages if not self._is_error(m)])
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
        """Handle one batch until its outputs are acknowledged; runs in a worker thread.

        A failing batch is retried in place with growing backoff (the loop keeps its
        partitions paused meanwhile); after ``inplace_attempts`` its events go to the
        stage's retry ladder, so one bad dependency does not hold a partition forever.
        """
        backoff = 0.0
        attempts = 0
        while True:
            try:
                outputs = self._process(entry)
                self._send(outputs)
                self._finish(entry)
                return
            except Exception as exc:  # noqa: BLE001 - any fault: back off, retry the batch
                attempts += 1
                self.stats.batch_retries += 1
                self.stats.last_error = f"{type(exc).__name__}: {exc}"
                if self.ladder and attempts >= self.inplace_attempts and entry.envelopes:
                    if self._climb_ladder(entry, exc):
                        return
                backoff = min(max(backoff * 2, 0.5), 30.0)
                log.error("%s: batch of %d failed (%s); retrying in %.1fs", self.stage,
                          len(entry.messages), self.stats.last_error, backoff)
                if self._stop.wait(backoff):
                    return  # stopping: leave it uncommitted, it will be redelivered

    def _finish(self, entry: _Batch) -> None:
        entry.done = True
        self._wake.set()

    def _send(self, outputs: list[Outbound | Retry]) -> None:
        """Produce outputs, turning per-item Retry verdicts into ladder messages."""
        ready: list[Outbound] = []
        for out in outputs:
            if isinstance(out, Retry):
                routed = retry_or_dead_letter(out.envelope, self.stage, out.error, out.error_class,
                                              delay_scale=self.settings.retry_delay_scale)
                self._count_route(routed)
                ready.append(routed)
            else:
                ready.append(out)
        self.producer.send(ready)
        self.stats.produced += len(ready)
        self.stats.failed_out += sum(1 for out in ready if out.topic == "images.failed")

    def _climb_ladder(self, entry: _Batch, exc: Exception) -> bool:
        """Send every event of a failing batch to its next retry rung; True once acknowledged."""
        routed = [retry_or_dead_letter(env, self.stage, str(exc), type(exc).__name__,
                                       delay_scale=self.settings.retry_delay_scale)
                  for env in entry.envelopes]
        try:
            self.producer.send(entry.undecodable + routed)
        except Exception as send_exc:  # noqa: BLE001 - the broker itself is down: keep trying
            log.error("%s: could not publish retries: %s", self.stage, send_exc)
            return False
        for out in routed:
            self._count_route(out)
        log.warning("%s: %d events moved to the retry ladder after %s", self.stage,
                    len(routed), type(exc).__name__)
        self._finish(entry)
        return True

    def _count_route(self, out: Outbound) -> None:
        if out.topic == "images.failed":
            self.stats.dead_lettered += 1
        else:
            self.stats.retried += 1

    def _process(self, entry: _Batch) -> list[Outbound | Retry]:
        envelopes: list[Envelope] = []
        undecodable: list[Outbound] = []
        for msg in entry.messages:
            decoded = self._decode(msg)
            if isinstance(decoded, Outbound):
                undecodable.append(decoded)
            else:
                envelopes.append(decoded)
        entry.envelopes, entry.undecodable = envelopes, undecodable
        outputs: list[Outbound | Retry] = list(undecodable)
        if envelopes:
            started = time.perf_counter()
            outputs.extend(self.handler(envelopes))
            self.stats.busy_s += time.perf_counter() - started
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
        headers = {k: (v or b"").decode(errors="replace") for k, v in (msg.headers() or [])}
        retried = H_ATTEMPT in headers
        return Envelope(
            topic=topic, partition=msg.partition(), offset=msg.offset(), key=key,
            timestamp=datetime.fromtimestamp(ts_ms / 1000).astimezone() if ts_type else None,
            event=event, headers=headers,
            attempt=int(headers[H_ATTEMPT]) if retried else 1,
            origin_topic=headers.get(H_ORIGIN_TOPIC, topic) if retried else topic,
            origin_partition=int(headers.get(H_ORIGIN_PARTITION, msg.partition()))
            if retried else msg.partition(),
            origin_offset=int(headers.get(H_ORIGIN_OFFSET, msg.offset()))
            if retried else msg.offset(),
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
            try:
                consumer.commit(offsets=commit, asynchronous=False)
                self.stats.commits += 1
            except KafkaException as exc:
                # Typically a rebalance (the broker stalled past the session timeout): the
                # partitions now belong to a new generation and these offsets will be
                # redelivered there. At-least-once holds; the sinks are idempotent.
                self.stats.last_error = f"commit failed: {exc}"
                log.warning("%s: commit of %d partitions failed: %s", self.stage, len(commit),
                            exc)

    def _drain(self, consumer: Consumer, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while any(not b.done for b in self._batches) and time.monotonic() < deadline:
            time.sleep(0.05)
        self._commit_done(consumer)

    def _hold_not_due(self, consumer: Consumer, batch: list[Message]) -> list[Message]:
        """Keep retry messages until their not-before time: rewind and hold the partition."""
        if not self.ladder:
            return batch
        now = int(time.time() * 1000)
        held_now: dict[tuple[str, int], tuple[int, int]] = {}  # tp -> (offset, due)
        for msg in batch:
            tp = (msg.topic(), msg.partition())
            if tp in held_now:
                continue
            due = _header_int(msg, H_NOT_BEFORE)
            if due is not None and due > now:
                held_now[tp] = (msg.offset(), due)
        if not held_now:
            return batch
        for (topic, partition), (offset, due) in held_now.items():
            consumer.seek(TopicPartition(topic, partition, offset))
            self._held[(topic, partition)] = due
        self.stats.held = len(self._held)
        return [m for m in batch if (m.topic(), m.partition()) not in held_now
                or m.offset() < held_now[(m.topic(), m.partition())][0]]

    def _apply_pauses(self, consumer: Consumer) -> None:
        """Pause what should be paused now: everything under backpressure, plus held retries."""
        now = int(time.time() * 1000)
        self._held = {tp: due for tp, due in self._held.items() if due > now}
        self.stats.held = len(self._held)
        owned = self._owned
        wanted = set(owned) if self._paused else {tp for tp in self._held if tp in owned}
        pause = wanted - self._paused_tps
        resume = (self._paused_tps - wanted) & owned
        if pause:
            consumer.pause([TopicPartition(t, p) for t, p in pause])
        if resume:
            consumer.resume([TopicPartition(t, p) for t, p in resume])
        self._paused_tps = wanted

    # -- rebalance -----------------------------------------------------------------
    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._owned |= {(p.topic, p.partition) for p in partitions}
        self.stats.assigned = sorted(self._owned)
        # librdkafka keeps an application pause across rebalances: a partition paused
        # before a session loss comes back paused. Resume on assignment and let
        # _apply_pauses pause again only what should be.
        if partitions:
            consumer.resume(partitions)
        self._paused_tps -= {(p.topic, p.partition) for p in partitions}
        log.info("%s: assigned %s", self.stage, [(p.topic, p.partition) for p in partitions])

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Finish what is in flight, commit it, then let the partitions go."""
        revoked = {(p.topic, p.partition) for p in partitions}
        deadline = time.monotonic() + 15.0
        while any(not b.done for b in self._batches) and time.monotonic() < deadline:
            time.sleep(0.05)
        self._commit_done(consumer, only=self._owned)
        self._owned -= revoked
        self._paused_tps -= revoked
        for tp in revoked:
            self._held.pop(tp, None)
        self.stats.assigned = sorted(self._owned)
        log.info("%s: revoked %s", self.stage, sorted(revoked))

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Lost (not revoked): another member may own them already; commit nothing.
        lost = {(p.topic, p.partition) for p in partitions}
        self._owned -= lost
        self._paused_tps -= lost
        self.stats.assigned = sorted(self._owned)

    def _is_error(self, msg: Message) -> bool:
        err = msg.error()
        if err is None:
            return False
        if err.code() != KafkaError._PARTITION_EOF:
            self.stats.last_error = err.str()
            log.warning("%s: consumer error: %s", self.stage, err.str())
        return True


def _header_int(msg: Message, name: str) -> int | None:
    for key, value in msg.headers() or []:
        if key == name and value:
            try:
                return int(value.decode())
            except ValueError:
                return None
    return None


def _retry_model(msg: Message) -> type[Event]:
    """Retry topics carry any event type; the header ``event-type`` names it."""
    for key, value in msg.headers() or []:
        if key == H_EVENT_TYPE and value and value.decode() in EVENT_TYPES:
            return EVENT_TYPES[value.decode()]
    raise EventDecodeError("invalid_event", f"no usable event-type header on {msg.topic()}")
