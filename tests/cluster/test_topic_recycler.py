"""The local broker's memory stays bounded: a drained topic is recreated at a quiet
moment, and consumers carry on from the new topic's beginning."""

from __future__ import annotations

import time
from pathlib import Path

from confluent_kafka import Producer
from confluent_kafka.admin import NewTopic

from cluster.topic_recycler import TopicRecycler, drained_topics
from deeplens.broker import start_local_broker
from deeplens.kafka import admin_client, make_consumer
from deeplens.settings import KafkaSettings, Settings
from deeplens.topics import TOPICS, TopicNames, ensure_topics

NAMES = TopicNames("r.")
EVENTS = 10_000
PAYLOAD = b"e" * 3000  # about an images.processed event (a 512-d vector in base64)
BOUND_MB = 12  # what the broker may keep, over its idle size, once the topic is recycled
RETENTION_MS = 1000  # a short test retention on the topic: the memory engine ignores it


def test_only_a_large_drained_quiet_topic_is_recycled() -> None:
    topic = NAMES.physical("images.uploaded")
    ends = {(topic, 0): 500, (topic, 1): 700}
    caught_up = {("validation", "images.uploaded", 0): 0, ("validation", "images.uploaded", 1): 0}
    running = {"validation"}
    assert drained_topics(ends, caught_up, dict(ends), NAMES, running, 1000) == ["images.uploaded"]
    assert drained_topics(ends, caught_up, dict(ends), NAMES, running, 5000) == [], "small"
    assert drained_topics(ends, caught_up, None, NAMES, running, 1000) == [], "no quiet yet"
    moved = {(topic, 0): 480, (topic, 1): 700}
    assert drained_topics(ends, caught_up, moved, NAMES, running, 1000) == [], "just written"
    behind = {**caught_up, ("validation", "images.uploaded", 1): 1}
    assert drained_topics(ends, behind, dict(ends), NAMES, running, 1000) == [], "not drained"
    # no running stage reads it: nobody could say it is drained
    assert drained_topics(ends, caught_up, dict(ends), NAMES, {"usage"}, 1000) == []
    assert drained_topics(ends, caught_up, dict(ends), NAMES, running, 0) == ["images.uploaded"]
    assert drained_topics({(topic, 0): 0}, caught_up, {(topic, 0): 0}, NAMES, running, 0) == []
    # the dead letters stay for `deeplens dlq list|replay`, however drained
    failed = {(NAMES.physical("images.failed"), 0): 20_000}
    read = {("projection", "images.failed", 0): 0}
    assert drained_topics(failed, read, dict(failed), NAMES, {"projection"}, 1000) == []


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def _drain(kafka: KafkaSettings, group: str, topic: str, count: int) -> list[bytes]:
    consumer = make_consumer(kafka, group)
    consumer.subscribe([topic])
    seen: list[bytes] = []
    for _ in range(600):
        for message in consumer.consume(1000, timeout=0.5):
            if not message.error():
                seen.append(message.value())
        if len(seen) >= count:
            break
    consumer.commit(asynchronous=False)
    consumer.close()
    return seen


def test_ten_thousand_consumed_events_are_given_back(tmp_path) -> None:
    broker = start_local_broker(0, log_path=str(tmp_path / "broker.log"))
    try:
        kafka = KafkaSettings(bootstrap_servers=broker.bootstrap, topic_prefix=NAMES.prefix,
                              one_record_per_batch=True, poll_timeout_s=0.2)
        admin = admin_client(kafka)
        topic = NAMES.physical("images.processed")
        short = NewTopic(topic, num_partitions=TOPICS["images.processed"].partitions,
                         config={"retention.ms": str(RETENTION_MS)})
        for future in admin.create_topics([short]).values():
            future.result()
        ensure_topics(admin, NAMES)  # the rest of the table
        idle = _rss_mb(broker.process.pid)
        producer = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 0,
                             "batch.num.messages": 1})
        for i in range(EVENTS):
            producer.produce(topic, PAYLOAD, key=str(i))
            if i % 500 == 0:
                producer.poll(0)
        producer.flush()
        full = _rss_mb(broker.process.pid)
        assert full > idle + 20, (idle, full)  # the engine keeps every record in memory
        group = NAMES.group("indexing")
        assert len(_drain(kafka, group, topic, EVENTS)) == EVENTS
        time.sleep(3 * RETENTION_MS / 1000)  # every record is past its retention now
        kept = _rss_mb(broker.process.pid)
        assert kept > idle + 20, ("retention alone gave the memory back", idle, full, kept)

        recycler = TopicRecycler(Settings(kafka=kafka, data_dir=tmp_path), ["indexing"],
                                 min_messages=EVENTS)
        assert recycler.recycle_once() == [], "the first pass only notes the ends"
        assert recycler.recycle_once() == ["images.processed"]
        after = _rss_mb(broker.process.pid)
        print(f"broker RSS: idle {idle:.0f} MB, {EVENTS} events {full:.0f} MB, past a "
              f"{RETENTION_MS} ms retention {kept:.0f} MB, recycled {after:.0f} MB")
        assert after < idle + BOUND_MB, (idle, full, after)
        assert recycler.stats.records_dropped == EVENTS

        producer.produce(topic, b"after", key="x")  # the group resumes on the new topic
        producer.flush()
        assert _drain(kafka, group, topic, 1) == [b"after"]
        recycler.stop()
    finally:
        broker.stop()


def test_a_pass_waits_while_a_reader_group_has_a_member_joining(tmp_path) -> None:
    """On tansu a member leaving while another joins wedges the group, so a recycle pass
    asks nothing of a group until it has settled."""
    from confluent_kafka import Consumer

    broker = start_local_broker(0, log_path=str(tmp_path / "broker.log"))
    try:
        kafka = KafkaSettings(bootstrap_servers=broker.bootstrap, topic_prefix=NAMES.prefix)
        ensure_topics(admin_client(kafka), NAMES)
        recycler = TopicRecycler(Settings(kafka=kafka, data_dir=tmp_path), ["indexing"])
        assert recycler.groups_settled({"indexing"}, timeout_s=0), "no member: empty"
        member = Consumer({"bootstrap.servers": broker.bootstrap,
                           "group.id": NAMES.group("indexing"), "session.timeout.ms": 6000})
        try:
            member.subscribe([NAMES.physical("images.processed")])
            # Seen unsettled while the member joins (a join takes ~3 s on tansu; the first
            # polls may not have reached the broker yet, so look until it is joining).
            seen_joining = False
            deadline = time.monotonic() + 30
            while not member.assignment() and time.monotonic() < deadline:
                member.poll(0.1)
                if not member.assignment():
                    seen_joining |= not recycler.groups_settled({"indexing"}, timeout_s=0)
            assert member.assignment(), "the member joined"
            assert seen_joining, "the group was never reported as rebalancing during the join"
            assert recycler.groups_settled({"indexing"}, timeout_s=10)
        finally:
            member.close()
            recycler.stop()
    finally:
        broker.stop()
