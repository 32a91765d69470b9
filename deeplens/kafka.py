"""Kafka clients configured the way the seed asks, and a producer that waits for acks."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from concurrent.futures import Future, wait
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer
from confluent_kafka.admin import AdminClient

from deeplens.events import Event
from deeplens.settings import KafkaSettings

log = logging.getLogger(__name__)


def _common(settings: KafkaSettings) -> dict[str, Any]:
    if not settings.bootstrap_servers:
        raise RuntimeError(
            "no Kafka bootstrap servers: set DEEPLENS_KAFKA__BOOTSTRAP_SERVERS or start the "
            "local broker (deeplens up / deeplens broker)"
        )
    conf: dict[str, Any] = {
        "bootstrap.servers": settings.bootstrap_servers,
        "client.id": settings.client_id,
        "security.protocol": settings.security_protocol,
        # librdkafka's own log lines go through Python logging, not raw stderr.
        "logger": logging.getLogger("librdkafka"),
    }
    if settings.sasl_mechanism:
        conf["sasl.mechanism"] = settings.sasl_mechanism
        conf["sasl.username"] = settings.sasl_username
        conf["sasl.password"] = settings.sasl_password.get_secret_value()
    return conf


def producer_config(settings: KafkaSettings, **overrides: Any) -> dict[str, Any]:
    """The seed's producer: retries, idempotence, lz4.

    The seed asks for ``Acks.Leader`` *and* ``EnableIdempotence``; librdkafka refuses
    that pair (idempotence requires acks=all), and acks=all is also what makes an
    acknowledged event survive a leader failure, so DeepLens uses ``all``.
    """
    conf = _common(settings) | {
        "acks": "all",
        "enable.idempotence": True,
        "retries": max(settings.producer_retries, 1),
        "compression.type": settings.compression_type,
        "linger.ms": settings.linger_ms,
        "delivery.timeout.ms": settings.delivery_timeout_ms,
    }
    if settings.one_record_per_batch:  # the local broker's watermarks count batches
        conf["batch.num.messages"] = 1
    return conf | overrides


def consumer_config(settings: KafkaSettings, group_id: str, **overrides: Any) -> dict[str, Any]:
    """The seed's consumer: a group per stage, earliest, manual commits."""
    conf = _common(settings) | {
        "group.id": group_id,
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
        "enable.partition.eof": False,
        "session.timeout.ms": settings.session_timeout_ms,
        # Several actors of one stage share partitions without moving all of them.
        "partition.assignment.strategy": "cooperative-sticky",
    }
    return conf | overrides


def admin_client(settings: KafkaSettings) -> AdminClient:
    return AdminClient(_common(settings))


def make_consumer(settings: KafkaSettings, group_id: str, **overrides: Any) -> Consumer:
    return Consumer(consumer_config(settings, group_id, **overrides))


@dataclass(frozen=True)
class Outbound:
    """An event to publish: logical topic name, key (image id or tenant), payload."""

    topic: str
    key: str | None
    event: Event
    headers: dict[str, str] = field(default_factory=dict)


class DeliveryError(RuntimeError):
    """The broker did not acknowledge every message of a send."""


def _settle(future: Future[Message], result: Message | None = None,
            error: BaseException | None = None) -> None:
    """Resolve a future once; a second outcome (a late report after a rebuild) is dropped."""
    from concurrent.futures import InvalidStateError

    try:
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)  # type: ignore[arg-type]
    except InvalidStateError:
        pass


def _outcome(futures: list[Future[Message]], done: set[Future[Message]]) -> list[Message]:
    """Every message's report, or DeliveryError naming how many failed or went unanswered."""
    errors = [f.exception() for f in done if f.exception() is not None]
    pending = len(futures) - len(done)
    if errors or pending:
        first = str(errors[0]) if errors else f"{pending} message(s) unacknowledged"
        raise DeliveryError(f"{len(errors) + pending} of {len(futures)} not delivered: {first}")
    return [f.result() for f in futures]


class EventProducer:
    """A thread-safe producer whose :meth:`send` returns once every message is acknowledged.

    A background thread serves delivery reports, so concurrent callers (HTTP
    requests, loop threads) wait only for their own messages.
    """

    def __init__(self, settings: KafkaSettings, prefix: str = "", **overrides: Any) -> None:
        self._config = producer_config(settings, **overrides) | {"error_cb": self._on_error}
        self._producer = Producer(self._config)
        self._fatal: KafkaError | None = None
        self._rebuild_lock = threading.Lock()
        # Futures not yet resolved, per producer generation: a rebuilt producer's old
        # futures would never resolve, so they are failed at once instead.
        self._generation = 0
        self._unresolved: dict[int, set[Future[Message]]] = {0: set()}
        self._unresolved_lock = threading.Lock()
        self._prefix = prefix
        self._wait_s = settings.delivery_timeout_ms / 1000 + 5
        self._closed = threading.Event()
        self._poller = threading.Thread(target=self._serve_reports, daemon=True,
                                        name="producer-reports")
        self._poller.start()

    def _serve_reports(self) -> None:
        while not self._closed.is_set():
            self._producer.poll(0.1)
            if self._fatal is not None:  # fail what it strands now, not at the timeout
                self._rebuild_if_fatal()

    def _on_error(self, err: KafkaError) -> None:
        if err.fatal():  # e.g. an idempotence sequence error after a broker stall
            log.error("producer fatal error, it will be rebuilt: %s", err.str())
            self._fatal = err

    def _rebuild_if_fatal(self) -> None:
        """An idempotent producer that hit a fatal error refuses every later message:
        replace it (what it had queued has already failed and will be retried)."""
        with self._rebuild_lock:
            if self._fatal is None:
                return
            old, self._producer = self._producer, Producer(self._config)
            reason = self._fatal.str()
            self._fatal = None
            with self._unresolved_lock:
                stranded = self._unresolved.pop(self._generation, set())
                self._generation += 1
                self._unresolved[self._generation] = set()
            try:
                old.purge()
            except Exception:  # noqa: BLE001 - a fatal producer may refuse even that
                pass
        for future in stranded:  # their delivery reports will never come
            _settle(future, error=DeliveryError(
                f"producer failed fatally and was rebuilt ({reason}); not delivered"))

    def send(self, messages: Iterable[Outbound], timeout_s: float | None = None) -> list[Message]:
        """Produce and wait for every delivery report; raise DeliveryError on any failure.

        ``delivery.timeout.ms`` bounds how long librdkafka tries, so by the time this
        returns or raises the outcome of every message is final.
        """
        futures = self._produce_all(messages)
        if not futures:
            return []
        done, _pending = wait(futures, timeout=timeout_s or self._wait_s)
        return _outcome(futures, done)

    async def send_async(self, messages: Iterable[Outbound],
                         timeout_s: float | None = None) -> list[Message]:
        """:meth:`send` for an event loop: the delivery reports resolve asyncio futures,
        so a request waiting for its acknowledgement holds no thread."""
        import asyncio

        futures = self._produce_all(messages)
        if not futures:
            return []
        waiting = {asyncio.wrap_future(f): f for f in futures}
        done, _pending = await asyncio.wait(waiting, timeout=timeout_s or self._wait_s)
        return _outcome(futures, {waiting[d] for d in done})

    def _produce_all(self, messages: Iterable[Outbound]) -> list[Future[Message]]:
        self._rebuild_if_fatal()
        futures: list[Future[Message]] = []
        for out in messages:
            future: Future[Message] = Future()
            self._produce(out, future)
            futures.append(future)
        return futures

    def _produce(self, out: Outbound, future: Future[Message]) -> None:
        def on_delivery(err: KafkaError | None, msg: Message) -> None:
            with self._unresolved_lock:
                for pending in self._unresolved.values():
                    pending.discard(future)
            if err is not None:
                if err.fatal() or err.code() == KafkaError._MSG_TIMED_OUT:
                    # A timed-out idempotent producer may be left waiting on a sequence
                    # the broker never saw (seen with the local broker after a stall):
                    # every later message then times out too. Start a fresh one.
                    self._fatal = err
                _settle(future, error=DeliveryError(err.str()))
            else:
                _settle(future, result=msg)

        headers = list(out.headers.items()) or None
        while True:
            with self._unresolved_lock:
                generation = self._generation
                self._unresolved[generation].add(future)
            try:
                self._producer.produce(
                    self._prefix + out.topic, out.event.to_json(), key=out.key,
                    headers=headers, on_delivery=on_delivery,
                )
                return
            except BufferError:  # local queue full: deliveries drain it
                self._forget(generation, future)
                time.sleep(0.05)
            except KafkaException as exc:  # the producer is in a fatal state: rebuild once
                self._forget(generation, future)
                error = exc.args[0] if exc.args else None
                if isinstance(error, KafkaError) and error.fatal():
                    self._fatal = error
                    self._rebuild_if_fatal()
                    continue
                raise

    def _forget(self, generation: int, future: Future[Message]) -> None:
        with self._unresolved_lock:
            self._unresolved.get(generation, set()).discard(future)

    def close(self, timeout_s: float = 10.0) -> None:
        self._producer.flush(timeout_s)
        self._closed.set()
        self._poller.join(2)
