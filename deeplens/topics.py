"""The topic table (``topics.toml``) and the admin operations built on it."""

from __future__ import annotations

import logging
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources

from confluent_kafka import KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic, ResourceType

log = logging.getLogger(__name__)

_DURATION = re.compile(r"^(\d+)([smhd])$")
_UNIT_MS = {"s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}


def duration_ms(text: str) -> int:
    """'7d' -> 604800000."""
    match = _DURATION.match(text.strip())
    if not match:
        raise ValueError(f"bad duration {text!r}; use <n>s, <n>m, <n>h or <n>d")
    return int(match.group(1)) * _UNIT_MS[match.group(2)]


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    retention_ms: int
    groups: tuple[str, ...]
    doc: str
    delay_ms: int = 0


def load_topic_table() -> dict[str, TopicSpec]:
    """Logical topic name -> spec, from the packaged topics.toml (retry ladders expanded)."""
    text = resources.files("deeplens").joinpath("topics.toml").read_text()
    data = tomllib.loads(text)
    specs = {
        name: TopicSpec(
            name=name,
            partitions=int(row["partitions"]),
            retention_ms=duration_ms(row["retention"]),
            groups=tuple(row["groups"]),
            doc=row.get("doc", ""),
        )
        for name, row in data["topics"].items()
    }
    retries = data["retries"]
    for stage in retries["stages"]:
        for rung, delay in enumerate(retries["delays"], start=1):
            name = retry_topic(stage, rung)
            specs[name] = TopicSpec(
                name=name, partitions=int(retries["partitions"]),
                retention_ms=duration_ms(retries["retention"]), groups=(stage,),
                doc=f"{stage}: retry {rung}, after {delay}", delay_ms=duration_ms(delay))
    return specs


def retry_topic(stage: str, rung: int) -> str:
    return f"{stage}.retry.{rung}"


def retry_ladder(stage: str) -> list[TopicSpec]:
    """The stage's retry topics, first rung first (empty for stages without retries)."""
    return [spec for rung in range(1, 10) if (spec := TOPICS.get(retry_topic(stage, rung)))]


TOPICS = load_topic_table()


class TopicNames:
    """Maps logical names (``images.uploaded``) to physical ones, with the prefix."""

    def __init__(self, prefix: str = "") -> None:
        self.prefix = prefix

    def physical(self, logical: str) -> str:
        return self.prefix + logical

    def logical(self, physical: str) -> str:
        if self.prefix and physical.startswith(self.prefix):
            return physical[len(self.prefix) :]
        return physical

    def group(self, stage: str) -> str:
        return f"{self.prefix}deeplens-{stage}"


@dataclass(frozen=True)
class EnsureReport:
    created: list[str]
    existing: list[str]
    drift: list[str]  # human-readable lines; empty when the broker matches the table

    @property
    def ok(self) -> bool:
        return not self.drift


def wanted_partitions(overrides: Mapping[str, int] | None = None,
                      minimum: int = 0) -> dict[str, int]:
    """Partitions per topic: the table's (the seed's counts), raised to ``minimum`` and to
    any per-topic override (``DEEPLENS_KAFKA__MIN_PARTITIONS``, ``..._PARTITIONS``)."""
    overrides = overrides or {}
    unknown = set(overrides) - set(TOPICS)
    if unknown:
        raise ValueError(f"partitions set for unknown topics: {', '.join(sorted(unknown))}")
    return {name: max(spec.partitions, minimum, overrides.get(name, 0))
            for name, spec in TOPICS.items()}


def ensure_topics(
    admin: AdminClient, names: TopicNames, timeout_s: float = 15.0,
    partitions: Mapping[str, int] | None = None,
) -> EnsureReport:
    """Create every missing topic of the table (with ``partitions``, default the table's
    counts); report (never silently fix) drift."""
    present = admin.list_topics(timeout=timeout_s).topics
    wanted = dict(partitions or wanted_partitions())
    created, existing, drift = [], [], []
    missing = []
    for spec in TOPICS.values():
        physical = names.physical(spec.name)
        count = wanted.get(spec.name, spec.partitions)
        if physical in present:
            existing.append(physical)
            have = len(present[physical].partitions)
            if have < count:
                drift.append(f"{physical}: {have} partitions, {count} wanted")
            continue
        missing.append(
            NewTopic(
                physical,
                num_partitions=count,
                replication_factor=-1,
                config={"retention.ms": str(spec.retention_ms)},
            )
        )
    if missing:
        for topic, future in admin.create_topics(missing, request_timeout=timeout_s).items():
            try:
                future.result()
                created.append(topic)
            except KafkaException as exc:
                if exc.args[0].code() == 36:  # TOPIC_ALREADY_EXISTS: a concurrent ensure
                    existing.append(topic)
                else:
                    raise
    drift.extend(_retention_drift(admin, names, existing, timeout_s))
    return EnsureReport(created=created, existing=existing, drift=drift)


def _retention_drift(
    admin: AdminClient, names: TopicNames, physical_topics: list[str], timeout_s: float
) -> list[str]:
    lines = []
    for topic, retention in describe_retention(admin, physical_topics, timeout_s).items():
        declared = TOPICS[names.logical(topic)].retention_ms
        if retention is not None and retention != declared:
            lines.append(f"{topic}: retention.ms {retention}, table declares {declared}")
    return lines


def describe_retention(
    admin: AdminClient, physical_topics: list[str], timeout_s: float = 15.0
) -> dict[str, int | None]:
    """retention.ms per topic as the broker reports it (None where it reports none)."""
    if not physical_topics:
        return {}
    resources_ = [ConfigResource(ResourceType.TOPIC, t) for t in physical_topics]
    out: dict[str, int | None] = {}
    for resource, future in admin.describe_configs(resources_, request_timeout=timeout_s).items():
        entries = future.result()
        entry = entries.get("retention.ms")
        out[resource.name] = int(entry.value) if entry is not None and entry.value else None
    return out


@dataclass(frozen=True)
class TopicInfo:
    name: str
    partitions: int
    declared_partitions: int | None
    retention_ms: int | None
    end_offsets: int  # messages ever written, summed over partitions


def list_topics(admin: AdminClient, consumer, names: TopicNames, timeout_s: float = 15.0,
                partitions: Mapping[str, int] | None = None):
    """Table topics as the broker sees them; ``consumer`` reads the watermarks."""
    wanted = dict(partitions or wanted_partitions())
    present = admin.list_topics(timeout=timeout_s).topics
    physical = [names.physical(n) for n in TOPICS if names.physical(n) in present]
    retention = describe_retention(admin, physical, timeout_s)
    rows = []
    for spec in TOPICS.values():
        topic = names.physical(spec.name)
        if topic not in present:
            rows.append(TopicInfo(topic, 0, wanted[spec.name], None, 0))
            continue
        total = 0
        for pid in present[topic].partitions:
            _low, high = consumer.get_watermark_offsets(TopicPartition(topic, pid), timeout=timeout_s)
            total += max(high, 0)
        rows.append(
            TopicInfo(topic, len(present[topic].partitions), wanted[spec.name], retention[topic],
                      total)
        )
    return rows
