import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime

from deeplens.consumer_loop import ConsumerLoop
from deeplens.events import ImageFailed, ImageUploaded, ImageValidated
from deeplens.kafka import EventProducer, Outbound
from tests.kafka_helpers import read_topic

NOW = datetime(2026, 11, 26, tzinfo=UTC)


def upload(i: int, tenant: str = "alpha") -> ImageUploaded:
    return ImageUploaded(
        tenant_id=tenant, image_id=f"img-{i}", original_file_name=f"{i}.jpg",
        storage_provider="local", storage_path=f"{tenant}/img-{i}", file_size=10,
        mime_type="image/jpeg", sha256=f"{i:064x}", uploaded_at=NOW,
    )


def to_validated(envelopes):
    return [
        Outbound("images.validated", e.event.image_id, ImageValidated(
            **e.event.model_dump(exclude={"event_id"}), width=1, height=1, format="JPEG",
            validated_at=NOW))
        for e in envelopes
    ]


def publish(settings, events) -> None:
    producer = EventProducer(settings, prefix=settings.topic_prefix)
    producer.send([Outbound(ev.topic, ev.image_id, ev) for ev in events])


def test_handler_dying_before_commit_gets_its_messages_again(kafka_settings) -> None:
    publish(kafka_settings, [upload(i) for i in range(20)])

    crashed = subprocess.run(
        [sys.executable, "-m", "tests.deeplens.crashing_worker",
         kafka_settings.bootstrap_servers, kafka_settings.topic_prefix],
        timeout=120, capture_output=True,
    )
    assert crashed.returncode == 17, crashed.stderr.decode()[-2000:]
    # The dead worker produced its first batch, then died before committing it.
    produced_before_crash = read_topic(kafka_settings, "images.validated", expect=1)
    assert produced_before_crash

    loop = ConsumerLoop(settings=kafka_settings, stage="validation",
                        topics=["images.uploaded"], handler=to_validated).start()
    try:
        deadline = time.monotonic() + 60
        while loop.stats.handled < 20 and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        loop.stop()
    outputs = read_topic(kafka_settings, "images.validated",
                         expect=20 + len(produced_before_crash))
    counts = Counter(e.image_id for e in outputs)
    assert set(counts) == {f"img-{i}" for i in range(20)}, "every input reaches the output"
    redelivered = {e.image_id for e in produced_before_crash}
    assert all(counts[i] == 2 for i in redelivered), "the crashed batch was delivered again"
    assert loop.stats.handled == 20  # the new member resumed from the committed offset (0)


def test_poison_messages_become_failures_and_loop_goes_on(kafka_settings) -> None:
    from confluent_kafka import Producer

    raw = Producer({"bootstrap.servers": kafka_settings.bootstrap_servers})
    topic = kafka_settings.topic_prefix + "images.uploaded"
    good = upload(1)
    unknown_version = good.model_dump(mode="json") | {"schema_version": 7}
    import json

    raw.produce(topic, b"{this is not json", key=b"bad-json", partition=0)
    raw.produce(topic, json.dumps(unknown_version).encode(), key=b"img-v7", partition=0)
    raw.produce(topic, good.to_json(), key=b"img-1", partition=0)
    raw.flush(10)

    loop = ConsumerLoop(settings=kafka_settings, stage="validation",
                        topics=["images.uploaded"], handler=to_validated).start()
    try:
        failed = read_topic(kafka_settings, "images.failed", expect=2)
        validated = read_topic(kafka_settings, "images.validated", expect=1)
    finally:
        loop.stop()
    assert loop.alive is False
    reasons = {f.image_id: f for f in failed if isinstance(f, ImageFailed)}
    assert reasons["bad-json"].reason == "malformed_json"
    assert reasons["bad-json"].raw == "{this is not json"
    assert reasons["img-v7"].reason == "unknown_schema_version"
    for failure in reasons.values():
        assert failure.origin_topic == "images.uploaded"
        assert failure.origin_partition == 0 and failure.origin_offset in (0, 1)
        assert failure.stage == "validation"
    assert [v.image_id for v in validated] == ["img-1"]
    assert loop.stats.decode_failures == 2


def test_handler_error_is_retried_with_backoff_without_loss(kafka_settings) -> None:
    publish(kafka_settings, [upload(i) for i in range(6)])
    calls = {"n": 0}

    def flaky(envelopes):
        calls["n"] += 1
        if calls["n"] == 1:
            raise ConnectionError("vector store unavailable")
        return to_validated(envelopes)

    loop = ConsumerLoop(settings=kafka_settings, stage="validation",
                        topics=["images.uploaded"], handler=flaky).start()
    try:
        outputs = read_topic(kafka_settings, "images.validated", expect=6)
    finally:
        loop.stop()
    assert {e.image_id for e in outputs} == {f"img-{i}" for i in range(6)}
    assert loop.stats.batch_retries == 1
    assert "vector store unavailable" in loop.stats.last_error


def test_slow_handler_pauses_partitions_instead_of_buffering(kafka_settings) -> None:
    publish(kafka_settings, [upload(i) for i in range(40)])
    release = __import__("threading").Event()
    seen: list[int] = []

    def slow(envelopes):
        seen.append(len(envelopes))
        release.wait(30)
        return to_validated(envelopes)

    loop = ConsumerLoop(settings=kafka_settings, stage="validation", topics=["images.uploaded"],
                        handler=slow, batch_size=4, max_in_flight=2).start()
    try:
        deadline = time.monotonic() + 30
        while loop.stats.pauses == 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1.0)  # the loop keeps polling while paused
        assert loop.stats.pauses >= 1
        held = loop.stats.consumed
        assert held <= 4 * 2 + 40 // 3 + 4, "consumption stopped near the in-flight bound"
        assert loop.stats.in_flight == 2
        release.set()
        outputs = read_topic(kafka_settings, "images.validated", expect=40)
    finally:
        release.set()
        loop.stop()
    assert {e.image_id for e in outputs} == {f"img-{i}" for i in range(40)}
    assert loop.stats.consumed == 40


def test_partitions_paused_before_a_rebalance_are_consumed_after_it(kafka_settings) -> None:
    """librdkafka keeps a pause across rebalances; the loop must resume what comes back."""
    import threading

    publish(kafka_settings, [upload(i) for i in range(30)])
    release = threading.Event()

    def slow(envelopes):
        release.wait(30)
        return to_validated(envelopes)

    first = ConsumerLoop(settings=kafka_settings, stage="validation",
                         topics=["images.uploaded"], handler=slow, batch_size=4,
                         max_in_flight=1).start()
    try:
        deadline = time.monotonic() + 30
        while first.stats.pauses == 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert first.stats.pauses >= 1, "backpressure paused the partitions"
        # A second member joins (partitions move) and leaves (they come back) while paused.
        second = ConsumerLoop(settings=kafka_settings, stage="validation",
                              topics=["images.uploaded"], handler=slow, batch_size=4).start()
        time.sleep(8)
        release.set()
        second.stop()
        outputs = read_topic(kafka_settings, "images.validated", expect=30, timeout_s=90)
    finally:
        release.set()
        first.stop()
    assert {e.image_id for e in outputs} == {f"img-{i}" for i in range(30)}


def test_a_hold_asked_while_joining_waits_for_the_join_and_the_group_goes_on(
        kafka_settings) -> None:
    """On tansu a member that leaves halfway through joining wedges its group: no later
    member is ever assigned. A hold asked right after the start (the recycler can ask
    while a consumer that came back from the previous hold is still joining) must let
    the join finish first, so the consumer that comes back after it is assigned."""
    loop = ConsumerLoop(settings=kafka_settings, stage="validation",
                        topics=["images.uploaded"], handler=to_validated).start()
    try:
        assert loop.hold.request(timeout_s=30), "the loop let go within the hold's timeout"
        assert loop.hold.joined.is_set(), "it joined its group before it left"
        loop.hold.release()
        publish(kafka_settings, [upload(i) for i in range(5)])
        deadline = time.monotonic() + 60
        while loop.stats.handled < 5 and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        loop.stop()
    assert loop.stats.handled == 5, ("the consumer back from the hold was assigned",
                                     loop.stats)
