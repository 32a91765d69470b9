"""The producer's failure paths that need no broker at all."""

from __future__ import annotations

import threading
import time

import pytest
from confluent_kafka import KafkaError

from deeplens.broker import free_port
from deeplens.events import ImageDeleted
from deeplens.kafka import DeliveryError, EventProducer, Outbound
from deeplens.settings import KafkaSettings


def test_a_fatal_error_fails_waiting_sends_at_once_instead_of_at_the_timeout() -> None:
    """After a fatal error the producer is rebuilt; what the old one held never gets a
    delivery report, so its senders must hear at once, not after delivery.timeout.ms."""
    settings = KafkaSettings(bootstrap_servers=f"127.0.0.1:{free_port()}",  # nobody there
                             delivery_timeout_ms=1_800_000)  # what "at the timeout" would wait
    producer = EventProducer(settings)
    event = ImageDeleted(tenant_id="alpha", image_id="x")
    outcome: dict[str, object] = {}

    def send() -> None:
        try:
            producer.send([Outbound(event.topic, "x", event)])
            outcome["error"] = None
        except DeliveryError as exc:
            outcome["error"] = exc

    sender = threading.Thread(target=send)
    sender.start()
    while sender.is_alive() and not any(producer._unresolved.values()):  # queued: no broker
        time.sleep(0.01)
    producer._fatal = KafkaError(KafkaError._FATAL, "injected fatal error", fatal=True)
    sender.join(120)  # a bound for a hang only: the timeout is 30 minutes away
    try:
        assert not sender.is_alive(), "send still waiting for the delivery timeout"
        assert isinstance(outcome["error"], DeliveryError)
        assert "rebuilt" in str(outcome["error"])
    finally:
        producer._closed.set()


def test_send_after_a_rebuild_uses_the_new_producer() -> None:
    settings = KafkaSettings(bootstrap_servers=f"127.0.0.1:{free_port()}",
                             delivery_timeout_ms=1_000)
    producer = EventProducer(settings)
    first = producer._producer
    producer._fatal = KafkaError(KafkaError._FATAL, "injected", fatal=True)
    event = ImageDeleted(tenant_id="alpha", image_id="y")
    with pytest.raises(DeliveryError):  # nobody listens: it times out, on the new producer
        producer.send([Outbound(event.topic, "y", event)], timeout_s=5)
    assert producer._producer is not first
    producer._closed.set()
