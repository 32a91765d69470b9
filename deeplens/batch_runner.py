"""One consumer batch, from raw messages to acknowledged outputs (runs in a worker thread).

Decoding: a message that cannot be decoded becomes an ``images.failed`` value and the
batch goes on. The handler's :class:`Retry` verdicts go to the stage's retry ladder.
A batch whose handler (or whose send) raises is retried in place with growing backoff;
after ``inplace_attempts`` its events climb the ladder, so one bad dependency does not
hold a partition forever. Stages without a ladder never give up.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from confluent_kafka import Message

from deeplens.consumer_parts import Batch
from deeplens.events import EVENT_TYPES, Event, EventDecodeError, ImageFailed, Stage, decode_event
from deeplens.kafka import EventProducer
from deeplens.retry import retry_or_dead_letter
from deeplens.stage_sdk import H_EVENT_TYPE, Envelope, Outbound, Retry, envelope_of
from deeplens.topics import TopicNames

log = logging.getLogger(__name__)

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
    lanes: dict[str, int] = field(default_factory=dict)  # messages handled per lane


@dataclass
class BatchRunner:
    stage: Stage
    names: TopicNames
    handler: BatchHandler
    producer: EventProducer
    stats: LoopStats
    stop: threading.Event
    has_ladder: bool
    inplace_attempts: int
    delay_scale: float = 1.0

    def run(self, batch: Batch) -> bool:
        """True once the batch's outputs are acknowledged; False if stopped first (then it
        stays uncommitted and is redelivered)."""
        backoff = 0.0
        attempts = 0
        while True:
            try:
                self._send(self._process(batch))
                return True
            except Exception as exc:  # noqa: BLE001 - any fault: back off, retry the batch
                attempts += 1
                self.stats.batch_retries += 1
                self.stats.last_error = f"{type(exc).__name__}: {exc}"
                if self.has_ladder and attempts >= self.inplace_attempts and batch.envelopes:
                    if self._climb_ladder(batch, exc):
                        return True
                backoff = min(max(backoff * 2, 0.5), 30.0)
                log.error("%s: batch of %d failed (%s); retrying in %.1fs", self.stage,
                          len(batch.coords), self.stats.last_error, backoff)
                if self.stop.wait(backoff):
                    return False

    def _process(self, batch: Batch) -> list[Outbound | Retry]:
        decoded = [self.decode(msg) for msg in batch.messages]
        batch.envelopes = [d for d in decoded if isinstance(d, Envelope)]
        batch.undecodable = [d for d in decoded if isinstance(d, Outbound)]
        outputs: list[Outbound | Retry] = list(batch.undecodable)
        if batch.envelopes:
            started = time.perf_counter()
            outputs.extend(self.handler(batch.envelopes))
            self.stats.busy_s += time.perf_counter() - started
            self.stats.handled += len(batch.envelopes)
        return outputs

    def _route(self, env: Envelope, error: str, error_class: str) -> Outbound:
        return retry_or_dead_letter(env, self.stage, error, error_class,
                                    delay_scale=self.delay_scale)

    def _count_routed(self, routed: list[Outbound]) -> None:
        for out in routed:
            if out.topic == "images.failed":
                self.stats.dead_lettered += 1
            else:
                self.stats.retried += 1

    def _send(self, outputs: list[Outbound | Retry]) -> None:
        """Produce outputs, turning per-item Retry verdicts into ladder messages."""
        routed = [self._route(o.envelope, o.error, o.error_class)
                  for o in outputs if isinstance(o, Retry)]
        self._count_routed(routed)
        ready = [o for o in outputs if not isinstance(o, Retry)] + routed
        self.producer.send(ready)
        self.stats.produced += len(ready)
        self.stats.failed_out += sum(1 for out in ready if out.topic == "images.failed")

    def _climb_ladder(self, batch: Batch, exc: Exception) -> bool:
        """Send every event of a failing batch to its next retry rung; True once acknowledged."""
        routed = [self._route(env, str(exc), type(exc).__name__) for env in batch.envelopes]
        try:
            self.producer.send(batch.undecodable + routed)
        except Exception as send_exc:  # noqa: BLE001 - the broker itself is down: keep trying
            log.error("%s: could not publish retries: %s", self.stage, send_exc)
            return False
        self._count_routed(routed)
        log.warning("%s: %d events moved to the retry ladder after %s", self.stage,
                    len(routed), type(exc).__name__)
        return True

    def decode(self, msg: Message) -> Envelope | Outbound:
        topic = self.names.logical(msg.topic())
        key = msg.key().decode(errors="replace") if msg.key() else None
        headers = {k: (v or b"").decode(errors="replace") for k, v in (msg.headers() or [])}
        try:
            event = decode_event(_model_for(topic, headers, msg.topic()), msg.value())
        except EventDecodeError as exc:
            self.stats.decode_failures += 1
            log.warning("%s: undecodable message %s[%d]@%d: %s", self.stage, topic,
                        msg.partition(), msg.offset(), exc)
            raw = msg.value() or b""
            return Outbound("images.failed", key, ImageFailed(
                image_id=key, raw=raw[:4096].decode(errors="replace"), reason=exc.reason,
                message=exc.message, stage=self.stage, error_class=type(exc).__name__,
                origin_topic=topic, origin_partition=msg.partition(), origin_offset=msg.offset(),
            ))
        ts_type, ts_ms = msg.timestamp()
        return envelope_of(
            event, topic=topic, partition=msg.partition(), offset=msg.offset(), key=key,
            timestamp=datetime.fromtimestamp(ts_ms / 1000).astimezone() if ts_type else None,
            headers=headers)


def _model_for(topic: str, headers: dict[str, str], physical: str) -> type[Event]:
    """A topic's own event type; retry topics carry any, named by the ``event-type`` header."""
    if topic in EVENT_TYPES:
        return EVENT_TYPES[topic]
    if headers.get(H_EVENT_TYPE) in EVENT_TYPES:
        return EVENT_TYPES[headers[H_EVENT_TYPE]]
    raise EventDecodeError("invalid_event", f"no usable event-type header on {physical}")
