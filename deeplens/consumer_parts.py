"""The consumer loop's rules, as pure parts that need no broker to test.

- :class:`OffsetTracker`: batches in consumption order; what may be committed is
  the longest finished prefix, so an offset is never committed past unfinished work.
- :class:`Backpressure`: pause at ``max_in_flight`` batches, resume below about half.
- :class:`RetryHolds`: a retry message that is not yet due holds its partition
  (rewound to it) until its not-before time.
- :class:`Partitions`: what is owned and paused through rebalances; which partitions
  to pause and resume, given the two above.
- :class:`Hold`: a request, from another thread, that the loop let go of the broker
  for a moment (the local broker's topic recycling), with a lease that ends it.

Partitions are ``(physical topic, partition)`` pairs throughout.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterable
from concurrent.futures import Future
from dataclasses import dataclass, field

TP = tuple[str, int]


@dataclass
class Batch:
    """One consumer batch: its messages' coordinates and, once decoded, its envelopes."""

    coords: list[tuple[str, int, int]]  # (topic, partition, offset) of every message
    messages: list = field(default_factory=list)
    envelopes: list = field(default_factory=list)
    undecodable: list = field(default_factory=list)
    future: Future[bool] | None = None  # resolves True once its outputs are acknowledged

    @property
    def finished(self) -> bool:
        f = self.future
        return f is not None and f.done() and not f.cancelled() and f.exception() is None \
            and f.result() is True

    def last_offsets(self) -> dict[TP, int]:
        top: dict[TP, int] = {}
        for topic, partition, offset in self.coords:
            top[(topic, partition)] = max(top.get((topic, partition), -1), offset)
        return top


class OffsetTracker:
    """Batches in consumption order; the finished prefix is what may be committed."""

    def __init__(self) -> None:
        self._batches: deque[Batch] = deque()
        self._lock = threading.Lock()

    def add(self, batch: Batch) -> None:
        with self._lock:
            self._batches.append(batch)

    def in_flight(self) -> int:
        with self._lock:
            return sum(1 for b in self._batches if not b.finished)

    def pending(self) -> list[Future[bool]]:
        """Futures of batches not yet finished (to wait on before a commit or a revoke)."""
        with self._lock:
            return [b.future for b in self._batches if b.future is not None and not b.finished]

    def pop_finished(self) -> tuple[dict[TP, int], list[Batch]]:
        """The next offset to commit per partition, for the longest finished prefix."""
        offsets: dict[TP, int] = {}
        finished: list[Batch] = []
        with self._lock:
            while self._batches and self._batches[0].finished:
                batch = self._batches.popleft()
                finished.append(batch)
                for tp, last in batch.last_offsets().items():
                    offsets[tp] = max(offsets.get(tp, -1), last + 1)
        return offsets, finished


@dataclass
class Backpressure:
    """Pause at ``max_in_flight`` batches; resume once fewer than about half are in flight."""

    max_in_flight: int
    paused: bool = False
    pauses: int = 0

    def update(self, in_flight: int) -> bool:
        if in_flight >= self.max_in_flight:
            if not self.paused:
                self.pauses += 1
            self.paused = True
        elif self.paused and in_flight < max(1, self.max_in_flight // 2 + 1):
            self.paused = False
        return self.paused


@dataclass
class RetryHolds:
    """Retry partitions held until their next message is due (times in ms)."""

    due: dict[TP, int] = field(default_factory=dict)

    def split(self, coords: list[tuple[str, int, int, int | None]],
              now_ms: int) -> tuple[list[bool], dict[TP, int]]:
        """For (topic, partition, offset, not-before or None) in batch order: which to keep,
        and the offset to rewind each newly held partition to. A partition is held from its
        first message that is not yet due; that message and later ones wait."""
        held: dict[TP, tuple[int, int]] = {}
        for topic, partition, offset, not_before in coords:
            tp = (topic, partition)
            if tp not in held and not_before is not None and not_before > now_ms:
                held[tp] = (offset, not_before)
        keep = [(t, p) not in held or o < held[(t, p)][0] for t, p, o, _ in coords]
        for tp, (_, due) in held.items():
            self.due[tp] = due
        return keep, {tp: offset for tp, (offset, _) in held.items()}

    def expire(self, now_ms: int) -> set[TP]:
        """Drop holds that are due; the partitions still held."""
        self.due = {tp: due for tp, due in self.due.items() if due > now_ms}
        return set(self.due)

    def forget(self, tps: Iterable[TP]) -> None:
        for tp in tps:
            self.due.pop(tp, None)


@dataclass
class Partitions:
    """The partitions this consumer owns and those it has paused, through rebalances."""

    owned: set[TP] = field(default_factory=set)
    paused: set[TP] = field(default_factory=set)

    def assign(self, tps: Iterable[TP]) -> None:
        # librdkafka keeps an application pause across rebalances: the loop resumes what
        # it is given and pauses again only what should be (plan).
        tps = set(tps)
        self.owned |= tps
        self.paused -= tps

    def forget(self, tps: Iterable[TP]) -> None:
        tps = set(tps)
        self.owned -= tps
        self.paused -= tps

    def plan(self, backpressured: bool, held: set[TP]) -> tuple[set[TP], set[TP]]:
        """(to pause, to resume) now: everything owned under backpressure, else only the
        held retry partitions."""
        wanted = set(self.owned) if backpressured else held & self.owned
        pause, resume = wanted - self.paused, (self.paused - wanted) & self.owned
        self.paused = wanted
        return pause, resume


class Hold:
    """Let go of the broker for a moment, asked from another thread.

    The asker calls :meth:`request` and waits until the loop says it has let go (it
    finished what was in flight, committed and closed its consumer); it calls
    :meth:`release` when done. The loop stays away until released, or until the lease
    ends: an asker that died never leaves a stage idle for longer than ``lease_s``.

    A consumer still joining its group is not closed until it has joined (or
    ``join_grace_s`` passed): on tansu 0.6 a member that leaves in the middle of a join
    wedges its group for good, and no later member of that group is ever assigned a
    partition (measured: a consumer closed 0.5 s after subscribing, then fresh members
    waited 60 s with no assignment, while a new group on the same topics was assigned
    in 3 s).
    """

    def __init__(self, lease_s: float = 60.0, join_grace_s: float = 20.0) -> None:
        self.lease_s = lease_s
        self.join_grace_s = join_grace_s
        self.wanted = threading.Event()
        self.joined = threading.Event()  # the current consumer has had an assignment
        self._subscribed_at = 0.0
        self._holding = threading.Event()

    def request(self, timeout_s: float) -> bool:
        """Ask the loop to let go; True once it has (within ``timeout_s``)."""
        self.wanted.set()
        return self._holding.wait(timeout_s)

    def release(self) -> None:
        self.wanted.clear()

    def subscribed(self) -> None:
        """The loop's side: a fresh consumer subscribed and is joining its group."""
        self.joined.clear()
        self._subscribed_at = time.monotonic()

    def due(self) -> bool:
        """Whether the loop should let go now: asked, and its consumer is not halfway
        through joining its group (or the join is taking too long to wait for)."""
        return self.wanted.is_set() and (
            self.joined.is_set() or time.monotonic() - self._subscribed_at > self.join_grace_s)

    def keep_away(self, stop: threading.Event, poll_s: float = 0.05) -> None:
        """The loop's side, with its consumer closed: say so, then wait for the release,
        the lease's end or ``stop``."""
        self._holding.set()
        ends = time.monotonic() + self.lease_s
        while self.wanted.is_set() and not stop.is_set() and time.monotonic() < ends:
            stop.wait(poll_s)
        self.wanted.clear()
        self._holding.clear()
