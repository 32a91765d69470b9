"""The one consumer loop every DeepLens stage runs.

Delivery is **at-least-once**: a message's offset is committed only after the
handler's output events for its batch have been acknowledged by the broker, and
only once every earlier message of its partition is done too. A crash between
produce and commit redelivers; sinks must be idempotent.

The loop thread polls; handlers run in worker threads (:mod:`deeplens.batch_runner`),
up to ``max_in_flight`` batches at once. At that bound the loop **pauses** its
partitions (it keeps polling, so the group membership stays alive) and resumes
them when work drains: slow downstream services slow consumption instead of
growing memory. A handler that raises is retried in place with growing backoff
(its batch stays in flight, so a down dependency ends in paused partitions, not
lost messages). Messages that cannot be decoded become :class:`ImageFailed`
values on ``images.failed`` and the loop goes on. The rules (what to commit, when to
pause, which retry partitions to hold) are the pure parts in :mod:`deeplens.consumer_parts`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, wait

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from deeplens.batch_runner import BatchHandler, BatchRunner, LoopStats
from deeplens.consumer_parts import (
    Backpressure,
    Batch,
    Hold,
    OffsetTracker,
    Partitions,
    RetryHolds,
)
from deeplens.events import Stage
from deeplens.kafka import EventProducer, make_consumer
from deeplens.lanes import LaneGate, LiveMarks, is_bulk
from deeplens.settings import KafkaSettings
from deeplens.stage_sdk import H_NOT_BEFORE, Envelope
from deeplens.topics import TopicNames, retry_ladder

__all__ = ["BatchHandler", "ConsumerLoop", "LoopStats"]

log = logging.getLogger(__name__)


class ConsumerLoop:
    """Poll -> decode -> handler -> produce outputs -> await acks -> commit, pipelined."""

    def __init__(
        self, *, settings: KafkaSettings, stage: Stage, topics: Sequence[str],
        handler: BatchHandler, group: str | None = None, producer: EventProducer | None = None,
        batch_size: int | None = None, max_in_flight: int = 1,
        before_commit: Callable[[Sequence[Envelope]], None] | None = None,
        inplace_attempts: int | None = None, on_fatal: Callable[[], None] | None = None,
        bulk_share: float = 0.25,
    ) -> None:
        self.names = TopicNames(settings.topic_prefix)
        self.settings = settings
        self.stage: Stage = stage
        self.ladder = [spec.name for spec in retry_ladder(stage)]
        self.topics = list(topics) + [t for t in self.ladder if t not in topics]
        self.group = self.names.group(group or stage)
        self.batch_size = batch_size or settings.batch_size
        self.max_in_flight = max(1, max_in_flight)
        self.before_commit = before_commit  # a test hook: runs after acks, before commit
        self.on_fatal = on_fatal  # e.g. exit the actor process so Ray restarts it
        self.stats = LoopStats()
        self._stop = threading.Event()
        self._wake = threading.Event()  # a batch finished: the loop has work to do
        self._thread: threading.Thread | None = None
        self.runner = BatchRunner(
            stage, self.names, handler,
            producer or EventProducer(settings, prefix=settings.topic_prefix), self.stats,
            self._stop, has_ladder=bool(self.ladder),
            # A failing batch is retried in place (partitions paused) this many times; then
            # its events climb the stage's retry ladder.
            inplace_attempts=inplace_attempts or settings.retry_inplace_attempts,
            delay_scale=settings.retry_delay_scale)
        self.offsets = OffsetTracker()
        self.backpressure = Backpressure(self.max_in_flight)
        self.holds = RetryHolds()
        self.partitions = Partitions()
        self.hold = Hold()  # the local broker's topic recycling asks (deeplens.stage_actor)
        # Live lane first where the stage reads both lanes (deeplens.lanes).
        twins = {self.names.physical(t.removesuffix(".bulk")) for t in topics if is_bulk(t)}
        twins &= {self.names.physical(t) for t in topics}
        self.lanes = LaneGate(bulk_share, self.batch_size, frozenset(twins)) if twins else None
        self.live_marks = LiveMarks()

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
        """Run until :meth:`stop`; finishes in-flight batches, commits, leaves the group.

        When :attr:`hold` is due it does that too, then opens a fresh consumer once
        released: a fresh client keeps no metadata of a topic deleted meanwhile (librdkafka
        2.16 crashes when a topic it is subscribed to is deleted on the local broker)."""
        executor = ThreadPoolExecutor(self.max_in_flight, thread_name_prefix=f"{self.stage}-work")
        try:
            while not self._stop.is_set():
                self._consume_until_asked(executor)
                if self.hold.wanted.is_set() and not self._stop.is_set():
                    self.hold.keep_away(self._stop)
        except Exception:
            log.exception("%s: consumer loop failed", self.stage)
            if self.on_fatal is not None:
                self.on_fatal()
            raise
        finally:
            executor.shutdown(wait=False, cancel_futures=True)

    def _consume_until_asked(self, executor: ThreadPoolExecutor) -> None:
        """One consumer's life: subscribe, step until stop or a hold, then finish what is
        in flight, commit and close (leaving the group)."""
        consumer = make_consumer(self.settings, self.group)
        consumer.subscribe([self.names.physical(t) for t in self.topics], on_assign=self._on_assign,
                           on_revoke=self._on_revoke, on_lost=self._on_lost)
        self.hold.subscribed()
        failures = 0
        try:
            while not self._stop.is_set() and not self.hold.due():
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
            wait(self.offsets.pending(), timeout=20.0)
            self._commit_done(consumer)
        finally:
            consumer.close()
            self._on_lost(consumer, [TopicPartition(t, p) for t, p in self.partitions.owned])

    # -- one iteration -------------------------------------------------------------
    def _step(self, consumer: Consumer, executor: ThreadPoolExecutor) -> None:
        self._commit_done(consumer)
        self.stats.in_flight = in_flight = self.offsets.in_flight()
        was_paused = self.backpressure.paused
        if self.backpressure.update(in_flight) and not was_paused:
            log.info("%s: %d batches in flight, partitions paused", self.stage, in_flight)
        self.stats.pauses = self.backpressure.pauses
        self._apply_pauses(consumer)
        if self.backpressure.paused:
            # Serve rebalance callbacks and heartbeats, but wake as soon as a batch is done
            # rather than sleeping a whole poll timeout with the downstream idle.
            messages = consumer.consume(self.batch_size, timeout=0)
            if not messages:
                self._wake.wait(self.settings.poll_timeout_s)
                self._wake.clear()
        else:
            messages = consumer.consume(self.batch_size, timeout=self.settings.poll_timeout_s)
        messages = self._hold_not_due(consumer, [m for m in messages if not self._is_error(m)])
        messages = self._admit(consumer, messages)
        if not messages:
            return
        # Messages fetched before a pause still arrive: they join the pipeline anyway,
        # so what is held in memory stays bounded by what was fetched.
        self.stats.consumed += len(messages)
        batch = Batch([(m.topic(), m.partition(), m.offset()) for m in messages], messages)
        batch.future = executor.submit(self.runner.run, batch)
        self.offsets.add(batch)
        batch.future.add_done_callback(lambda _: self._wake.set())

    def _commit_done(self, consumer: Consumer, only: set[tuple[str, int]] | None = None) -> None:
        """Commit the longest finished prefix of batches (consumption order)."""
        offsets, finished = self.offsets.pop_finished()
        if not finished:
            return
        owned = self.partitions.owned if only is None else only
        commit = [TopicPartition(t, p, o) for (t, p), o in offsets.items() if (t, p) in owned]
        if self.before_commit is not None:
            self.before_commit([env for b in finished for env in b.envelopes])
        if not commit:
            return
        try:
            consumer.commit(offsets=commit, asynchronous=False)
            self.stats.commits += 1
        except KafkaException as exc:
            # Typically a rebalance (the broker stalled past the session timeout): the
            # partitions now belong to a new generation and these offsets will be
            # redelivered there. At-least-once holds; the sinks are idempotent.
            self.stats.last_error = f"commit failed: {exc}"
            log.warning("%s: commit of %d partitions failed: %s", self.stage, len(commit), exc)

    def _hold_not_due(self, consumer: Consumer, messages: list[Message]) -> list[Message]:
        """Keep retry messages until their not-before time: rewind and hold the partition."""
        if not self.ladder or not messages:
            return messages
        coords = [(m.topic(), m.partition(), m.offset(), _not_before(m)) for m in messages]
        keep, rewind = self.holds.split(coords, int(time.time() * 1000))
        for (topic, partition), offset in rewind.items():
            consumer.seek(TopicPartition(topic, partition, offset))
        self.stats.held = len(self.holds.due)
        return [m for m, kept in zip(messages, keep, strict=True) if kept]

    def _admit(self, consumer: Consumer, messages: list[Message]) -> list[Message]:
        """Live lane first: drop (and rewind) the bulk messages the lane gate refuses."""
        if self.lanes is None:
            return messages
        coords = [(m.topic(), m.partition(), m.offset()) for m in messages]
        for topic, partition, offset in coords:
            if self.lanes.is_live(topic):
                self.live_marks.handled(topic, partition, offset)
        behind = not any(self.lanes.is_live(c[0]) for c in coords) and \
            self._live_behind(consumer)
        keep, rewind = self.lanes.admit(coords, behind)
        for (topic, partition), offset in rewind.items():
            consumer.seek(TopicPartition(topic, partition, offset))
        self.stats.lanes = dict(self.lanes.handled)
        return [m for m, kept in zip(messages, keep, strict=True) if kept]

    def _live_behind(self, consumer: Consumer) -> bool:
        """Whether a live partition has messages no poll returned yet (by the high
        watermarks the last fetches reported: no broker call)."""
        assert self.lanes is not None
        for topic, partition in self.partitions.owned:
            if self.lanes.is_live(topic):
                _, high = consumer.get_watermark_offsets(TopicPartition(topic, partition),
                                                         cached=True)
                if self.live_marks.behind(topic, partition, high):
                    return True
        return False

    def _apply_pauses(self, consumer: Consumer) -> None:
        """Pause what should be paused now: everything under backpressure, plus held retries,
        plus the bulk lane while live work waits."""
        held = self.holds.expire(int(time.time() * 1000))
        self.stats.held = len(held)
        if self.lanes is not None and self.lanes.bulk_paused:
            held = held | {tp for tp in self.partitions.owned if is_bulk(tp[0])}
        pause, resume = self.partitions.plan(self.backpressure.paused, held)
        if pause:
            consumer.pause([TopicPartition(t, p) for t, p in pause])
        if resume:
            consumer.resume([TopicPartition(t, p) for t, p in resume])

    # -- rebalance -----------------------------------------------------------------
    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.partitions.assign((p.topic, p.partition) for p in partitions)
        self.hold.joined.set()
        if partitions:
            consumer.resume(partitions)
        self.stats.assigned = sorted(self.partitions.owned)
        log.info("%s: assigned %s", self.stage, [(p.topic, p.partition) for p in partitions])

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Finish what is in flight, commit it, then let the partitions go."""
        wait(self.offsets.pending(), timeout=15.0)
        self._commit_done(consumer, only=self.partitions.owned)
        self._on_lost(consumer, partitions)
        log.info("%s: revoked %s", self.stage, [(p.topic, p.partition) for p in partitions])

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Lost (not revoked): another member may own them already; commit nothing.
        gone = {(p.topic, p.partition) for p in partitions}
        self.partitions.forget(gone)
        self.holds.forget(gone)
        self.stats.assigned = sorted(self.partitions.owned)

    def _is_error(self, msg: Message) -> bool:
        err = msg.error()
        if err is None:
            return False
        if err.code() != KafkaError._PARTITION_EOF:
            self.stats.last_error = err.str()
            log.warning("%s: consumer error: %s", self.stage, err.str())
        return True


def _not_before(msg: Message) -> int | None:
    """A retry message's due time (ms), read from its raw headers: the batch runner decodes
    the whole header set later, and only for the messages that are handled now."""
    for key, value in msg.headers() or []:
        if key == H_NOT_BEFORE and value:
            try:
                return int(value)
            except ValueError:
                return None
    return None
