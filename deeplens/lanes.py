"""Two lanes: live work (single uploads, queries) and bulk work (imports, bulk batch
uploads). A lane is a topic of its own with the live topic's events: ``<topic>.bulk``
(``topics.toml``). A stage that reads both serves the live lane first and lets bulk
take at most a share of what it handles while live work waits; with no live work
waiting, bulk runs at full speed.

``LaneGate`` is the rule, pure (no consumer): the loop shows it each poll's messages,
handles those it admits, rewinds the bulk partitions it refused, and pauses the bulk
partitions while the gate says so.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

BULK_SUFFIX = ".bulk"
Coord = tuple[str, int, int]  # topic, partition, offset


def is_bulk(topic: str) -> bool:
    return topic.endswith(BULK_SUFFIX)


def lane_of(topic: str) -> str:
    return "bulk" if is_bulk(topic) else "live"


def same_lane(live_topic: str, origin_topic: str) -> str:
    """Where a stage's output goes: the bulk lane of ``live_topic`` for bulk input."""
    return live_topic + BULK_SUFFIX if is_bulk(origin_topic) else live_topic


@dataclass
class LaneGate:
    """Admits bulk messages only as earned by live ones while live work waits:
    ``share`` of everything handled, at most (1 turns priority off). Live messages are
    those of ``live_topics`` (the bulk topics' twins); a stage's other topics pass."""

    share: float
    batch_size: int
    live_topics: frozenset[str] = frozenset()
    credit: float = 0.0
    bulk_paused: bool = False
    handled: dict[str, int] = field(default_factory=lambda: {"live": 0, "bulk": 0})

    def admit(self, coords: Sequence[Coord], live_behind: bool = False
              ) -> tuple[list[bool], dict[tuple[str, int], int]]:
        """Which of a poll's messages to handle now, and the offset to rewind each bulk
        partition to whose messages were refused (they are fetched again later).
        ``live_behind``: live messages wait past this poll (fetched behind bulk ones, or
        not fetched yet), so live work waits even if none came in this poll."""
        live = sum(self.is_live(topic) for topic, _, _ in coords)
        if live == 0 and not live_behind:  # no live work waiting: bulk at full speed
            self.credit, self.bulk_paused = 0.0, False
            self.handled["bulk"] += sum(is_bulk(topic) for topic, _, _ in coords)
            return [True] * len(coords), {}
        if self.share >= 1:
            earned = math.inf
        else:
            earned = self.credit + live * self.share / (1 - self.share)
        keep, rewind = [], {}
        taken = 0
        for topic, partition, offset in coords:
            if not is_bulk(topic):  # live, or another lane-less topic of the stage
                keep.append(True)
                continue
            # A partition is handled in order: after its first refused message, none.
            ok = (topic, partition) not in rewind and taken + 1 <= earned
            if ok:
                taken += 1
            else:
                rewind.setdefault((topic, partition), offset)
            keep.append(ok)
        self.credit = 0.0 if earned == math.inf else earned - taken
        # Bulk stays paused until it has earned a whole batch: fetching it to refuse it
        # would cost more than it moves.
        self.bulk_paused = self.credit < self.batch_size
        self.handled["live"] += live
        self.handled["bulk"] += taken
        return keep, rewind

    def is_live(self, topic: str) -> bool:
        return topic in self.live_topics if self.live_topics else not is_bulk(topic)


@dataclass
class LiveMarks:
    """Whether live messages wait that no poll returned yet (fetched behind bulk ones,
    or not fetched): a live partition's high watermark, as the last fetch reported it,
    past both the next offset this consumer would handle and the mark it had when first
    looked at (what was there before is not known to be unhandled)."""

    first: dict[tuple[str, int], int] = field(default_factory=dict)
    next: dict[tuple[str, int], int] = field(default_factory=dict)

    def handled(self, topic: str, partition: int, offset: int) -> None:
        self.next[(topic, partition)] = max(self.next.get((topic, partition), 0), offset + 1)

    def behind(self, topic: str, partition: int, high: int) -> bool:
        if high < 0:  # no fetch answered yet
            return False
        first = self.first.setdefault((topic, partition), high)
        return high > max(first, self.next.get((topic, partition), 0))
