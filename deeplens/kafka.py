"""Kafka clients configured the way the seed asks, and a producer that waits for acks."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Consumer, KafkaError, Message, Producer
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


class EventProducer:
    """A producer whose :meth:`send` returns only when every message is acknowledged."""

    def __init__(self, settings: KafkaSettings, prefix: str = "", **overrides: Any) -> None:
        self._producer = Producer(producer_config(settings, **overrides))
        self._prefix = prefix
        self._lock = threading.Lock()

    def send(self, messages: Iterable[Outbound], timeout_s: float = 30.0) -> list[Message]:
        """Produce and wait for every delivery report; raise DeliveryError on any failure."""
        errors: list[KafkaError] = []
        delivered: list[Message] = []

        def on_delivery(err: KafkaError | None, msg: Message) -> None:
            if err is not None:
                errors.append(err)
            else:
                delivered.append(msg)

        count = 0
        with self._lock:
            for out in messages:
                headers = list(out.headers.items()) or None
                self._produce(out, headers, on_delivery)
                count += 1
            if count == 0:
                return []
            remaining = self._producer.flush(timeout_s)
        if errors or remaining or len(delivered) != count:
            first = errors[0].str() if errors else f"{remaining} message(s) unacknowledged"
            raise DeliveryError(f"{count - len(delivered)} of {count} not delivered: {first}")
        return delivered

    def _produce(self, out: Outbound, headers: Any, on_delivery: Any) -> None:
        topic = self._prefix + out.topic
        while True:
            try:
                self._producer.produce(
                    topic, out.event.to_json(), key=out.key, headers=headers,
                    on_delivery=on_delivery,
                )
                return
            except BufferError:  # local queue full: let deliveries drain, then go on
                self._producer.poll(0.1)

    def close(self, timeout_s: float = 10.0) -> None:
        self._producer.flush(timeout_s)
