"""How far each stage's consumer group is behind, read from the broker: end offsets
per partition and the groups' committed offsets (metrics, the stuck-image sweep, the
local broker's topic recycling and the benchmarks all ask the same question)."""

from __future__ import annotations

from typing import Any

from deeplens.topics import TOPICS, TopicNames


def offsets_and_lag(admin: Any, consumer: Any, names: TopicNames, stages: set[str]
                    ) -> tuple[dict[tuple[str, int], int], dict[tuple[str, str, int], int]]:
    """End offsets per (physical topic, partition), and per (stage, logical topic,
    partition) the messages the stage's group has not committed yet. Partitions are the
    broker's (topics may have more than the table's counts)."""
    from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition

    present = admin.list_topics(timeout=5).topics
    ends: dict[tuple[str, int], int] = {}
    for logical in TOPICS:
        topic = names.physical(logical)
        for pid in present[topic].partitions if topic in present else ():
            ends[(topic, pid)] = consumer.get_watermark_offsets(TopicPartition(topic, pid),
                                                                timeout=5)[1]
    lags: dict[tuple[str, str, int], int] = {}
    groups = {stage for spec in TOPICS.values() for stage in spec.groups}
    for stage in sorted(groups & stages):
        group = names.group(stage)
        request = [ConsumerGroupTopicPartitions(group)]
        answer = admin.list_consumer_group_offsets(request, request_timeout=5)
        committed = {(tp.topic, tp.partition): tp.offset
                     for tp in answer[group].result().topic_partitions}
        for logical, spec in TOPICS.items():
            if stage not in spec.groups:
                continue
            topic = names.physical(logical)
            for (t, pid), end in ends.items():
                if t == topic:
                    lags[(stage, logical, pid)] = max(end - max(committed.get((t, pid), -1), 0),
                                                      0)
    return ends, lags


SETTLED = frozenset({"STABLE", "EMPTY", "DEAD"})


def wait_until_settled(admin: Any, groups: list[str], timeout_s: float,
                       stop: Any = None) -> dict[str, str]:
    """Wait (up to ``timeout_s``) until no group of ``groups`` is rebalancing; the states
    of those still rebalancing then ({} once all settled). Kafka says PREPARING_ or
    COMPLETING_REBALANCING, tansu UNKNOWN; a group that cannot be described counts as
    unsettled. A member that leaves while another joins
    wedges the group on tansu for good (:class:`deeplens.consumer_parts.Hold`), so
    the topic recycler and the scaling controller act only on settled groups."""
    import threading
    import time

    stop = stop or threading.Event()
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            found = admin.describe_consumer_groups(groups, request_timeout=10)
            states = {g: f.result().state.name for g, f in found.items()}
        except Exception as exc:  # noqa: BLE001 - unknown is not settled
            states = dict.fromkeys(groups, f"not described: {exc}")
        unsettled = {g: s for g, s in states.items() if s not in SETTLED}
        if not unsettled or time.monotonic() > deadline or stop.wait(0.2):
            return unsettled
