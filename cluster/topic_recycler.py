"""Keeps the local broker's memory bounded: drained topics are recreated at quiet moments.

tansu's ``memory://`` engine keeps every record ever written: it enforces no
``retention.ms`` and refuses DeleteRecords (measured: 10,000 events of 3 KB grow it by
~70 MB and neither a 1 s retention nor DeleteRecords gives any back). Deleting a topic
does give it all back. So, on the local broker only, a topic is deleted and created
again (same partitions and retention) when:

- it holds at least ``min_messages`` records (no churn for small amounts);
- every running stage group that reads it has committed up to its end (drained);
- nothing was written to it since the previous pass (a quiet moment);
- it is not ``images.failed``: its records are the dead letters ``deeplens dlq list``
  and ``replay`` read back later (the seed keeps them 30 days), not work in flight.

Before the delete, every actor of the stages that read those topics lets go of the
broker (:meth:`deeplens.stage_actor.StageWorker.hold`: it commits and closes its
consumer): librdkafka 2.16 crashes the whole process when a topic it is subscribed to
is deleted on tansu (measured: SIGSEGV in ``rd_kafka_metadata_cache_find``, every
time). With every reader away, the ends and lags are read again and only topics still
drained and unchanged go; then the readers come back with fresh consumers. tansu
forgets a deleted topic's committed offsets, so they start again from the new topic's
beginning (``auto.offset.reset=earliest``). A reader whose consumer is still joining
its group finishes the join first (:class:`deeplens.consumer_parts.Hold`: on tansu a
member leaving mid-join wedges the group). A reader that does not let go in time
cancels the pass. A hold has a lease (60 s), so a recycler that dies mid-pass never
leaves a stage idle for good.

A record produced between the check and the delete would be lost with the topic; the
quiet-moment rule and the second check make that unlikely, and the stuck-image sweep
(``cluster.sweeper``) re-publishes any image whose event went missing. On a real Kafka
the topics' own retention applies and this never runs.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Any

from deeplens.settings import Settings
from deeplens.topics import TOPICS, TopicNames, ensure_topics, wanted_partitions

log = logging.getLogger(__name__)

# Topics whose records are read back after every group consumed them: never recycled.
KEPT = frozenset({"images.failed"})


@dataclass
class RecycleStats:
    passes: int = 0
    recycled: dict[str, int] = field(default_factory=dict)  # logical topic -> times
    records_dropped: int = 0
    cancelled: int = 0  # passes called off: a reader did not let go, or a topic moved


def drained_topics(ends: dict[tuple[str, int], int], lags: dict[tuple[str, str, int], int],
                   previous_ends: dict[tuple[str, int], int] | None, names: TopicNames,
                   running: set[str], min_messages: int) -> list[str]:
    """The logical topics that may be recycled now (see the module's rules)."""
    ready = []
    for logical, spec in TOPICS.items():
        if logical in KEPT:
            continue
        physical = names.physical(logical)
        parts = {key: end for key, end in ends.items() if key[0] == physical}
        readers = set(spec.groups) & running
        if not parts or not readers or sum(max(e, 0) for e in parts.values()) < max(min_messages, 1):
            continue
        behind = sum(n for (stage, topic, _), n in lags.items()
                     if topic == logical and stage in readers)
        quiet = previous_ends is not None and all(previous_ends.get(k) == e
                                                  for k, e in parts.items())
        if behind == 0 and quiet:  # a group that never committed counts as behind
            ready.append(logical)
    return ready


class StageHolds:
    """Asks every running actor of some stages to let go of the broker, and back."""

    def __init__(self, settings: Settings, timeout_s: float = 30.0) -> None:
        self.settings = settings
        self.timeout_s = timeout_s

    def hold(self, stages: set[str]) -> tuple[bool, list[Any]]:
        """(whether every actor let go in time, the actors asked: release them all)."""
        import ray

        from deeplens.stage_actor import live_stage_actors

        if not ray.is_initialized():
            return True, []
        actors = [a for stage in sorted(stages)
                  for a in live_stage_actors(self.settings, stage).values()]
        refs = [a.hold.remote(self.timeout_s) for a in actors]
        try:
            answers = ray.get(refs, timeout=self.timeout_s + 10)
        except Exception as exc:  # noqa: BLE001 - a dying actor: call the pass off
            log.warning("topic recycling: a stage actor did not answer a hold: %s", exc)
            return False, actors
        return all(answers), actors

    def release(self, actors: list[Any]) -> None:
        for actor in actors:
            actor.release.remote()


class TopicRecycler:
    """Runs :meth:`recycle_once` every ``interval_s`` in a thread (``deeplens up`` on the
    local broker)."""

    def __init__(self, settings: Settings, running: list[str],
                 min_messages: int | None = None, holds: Any = None) -> None:
        self.settings = settings
        self.holds = holds or StageHolds(settings)
        self.names = TopicNames(settings.kafka.topic_prefix)
        self.running = set(running)
        self.interval_s = settings.kafka.local_broker_recycle_interval_s
        self.min_messages = (settings.kafka.local_broker_recycle_messages
                             if min_messages is None else min_messages)
        self.stats = RecycleStats()
        self._previous: dict[tuple[str, int], int] | None = None
        self._admin: Any = None
        self._consumer: Any = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> TopicRecycler:
        self._thread = threading.Thread(target=self._loop, daemon=True, name="topic-recycler")
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None

    def recycle_once(self) -> list[str]:
        from cluster.lag import offsets_and_lag

        self._connect()
        ends, lags = offsets_and_lag(self._admin, self._consumer, self.names, self.running)
        ready = drained_topics(ends, lags, self._previous, self.names, self.running,
                               self.min_messages)
        self.stats.passes += 1
        self._previous = ends
        if not ready:
            return []
        readers = {stage for t in ready for stage in TOPICS[t].groups} & self.running
        if not self.groups_settled(readers):
            self.stats.cancelled += 1
            return []
        let_go, held = self.holds.hold(readers)
        try:
            if let_go:  # nothing read them meanwhile; was anything written?
                again, lags = offsets_and_lag(self._admin, self._consumer, self.names,
                                              self.running)
                ready = [t for t in drained_topics(again, lags, ends, self.names, self.running,
                                                   self.min_messages) if t in ready]
            if not let_go or not ready:
                self.stats.cancelled += 1
                return []
            physical = [self.names.physical(t) for t in ready]
            for future in self._admin.delete_topics(physical, request_timeout=15).values():
                future.result()
            ensure_topics(self._admin, self.names, partitions=wanted_partitions(
                self.settings.kafka.partitions, self.settings.kafka.min_partitions))
        finally:
            self.holds.release(held)
        for logical, topic in zip(ready, physical, strict=True):
            dropped = sum(max(e, 0) for (t, _), e in ends.items() if t == topic)
            self.stats.records_dropped += dropped
            self.stats.recycled[logical] = self.stats.recycled.get(logical, 0) + 1
            log.info("local broker: %s drained (%d records consumed by every stage): "
                     "recreated to give its memory back", logical, dropped)
        self._previous = None  # the new topics start again from offset 0
        return ready

    def _connect(self) -> None:
        from deeplens.kafka import admin_client, make_consumer

        if self._admin is None:
            self._admin = admin_client(self.settings.kafka)
            self._consumer = make_consumer(self.settings.kafka, "deeplens-topic-recycler")

    def groups_settled(self, stages: set[str], timeout_s: float = 15.0) -> bool:
        """Whether every group of ``stages`` has settled within ``timeout_s`` (no member
        joining: on tansu a member leaving while another joins wedges the group)."""
        from cluster.lag import wait_until_settled

        self._connect()
        unsettled = wait_until_settled(self._admin, [self.names.group(s) for s in sorted(stages)],
                                       timeout_s, self._stop)
        if unsettled:
            log.info("topic recycling put off: groups still rebalancing %s", unsettled)
        return not unsettled

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.recycle_once()
            except Exception as exc:  # noqa: BLE001 - the broker may be busy: next pass
                log.warning("local broker topic recycling failed: %s", exc)
