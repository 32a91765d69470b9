"""The scaling decisions, pure: lag, rates and queues in, wanted counts out, with the
reason in words. No Kafka, no Ray: :mod:`cluster.controller` feeds it what it read and
applies what it answers.

- **Stage actors** follow KEDA's Kafka rule: ``ceil(lag / lag_per_actor)`` actors,
  between the stage's minimum and its topic's partitions (one more member than there
  are partitions would idle). No actor is added while the stage's current rate drains
  its lag within ``drain_target_s``: a backlog about to vanish is not worth a process.
- **Embedder replicas** follow the images waiting for them (the embedding stage's lag),
  ``ceil(queued / queued_images_per_replica)``, between SERVE__REPLICAS and
  SERVE__AUTOSCALE_MAX_REPLICAS.
- **Hysteresis:** a count goes down only once the lag is ``tolerance`` below what the
  smaller count carries; a change happens only after it has been wanted, in the same
  direction, for ``upscale_delay_s`` (up) or ``downscale_delay_s`` (down).
- **Pins** (``deeplens scale NAME N``) win until released (``deeplens scale NAME auto``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from deeplens.scaling_settings import ScalingSettings


@dataclass(frozen=True)
class Decision:
    target: int  # the count to run now
    wanted: int  # what the signal asks for (before delays)
    action: str  # up | down | waiting-up | waiting-down | steady | pinned
    cause: str  # a fixed phrase (a metric label): why this count is wanted
    reason: str  # the whole story in words, numbers included
    wait_s: float = 0.0  # how long a wanted change still waits


def wanted_count(load: float, per_unit: int, current: int, minimum: int, maximum: int,
                 tolerance: float) -> int:
    """``ceil(load / per_unit)`` within [minimum, maximum]; below ``current`` only when
    the load is ``tolerance`` under what that smaller count carries (no flapping at a
    boundary)."""
    maximum = max(maximum, minimum)
    wanted = min(max(math.ceil(load / per_unit), minimum), maximum)
    if wanted < current:
        # the smallest count that still carries the load with the tolerance as headroom
        wanted = min(max(math.ceil(load / (per_unit * (1 - tolerance))), minimum), current)
    return wanted


@dataclass
class Hysteresis:
    """Delays a change until it has been wanted, in one direction, long enough."""

    up_delay_s: float
    down_delay_s: float
    _since: float | None = None
    _direction: int = 0

    def step(self, current: int, wanted: int, now: float) -> tuple[int, float]:
        """(the count to run, seconds still to wait; 0 when nothing waits)."""
        direction = (wanted > current) - (wanted < current)
        if direction == 0:
            self._since, self._direction = None, 0
            return current, 0.0
        if direction != self._direction or self._since is None:
            self._since, self._direction = now, direction
        delay = self.up_delay_s if direction > 0 else self.down_delay_s
        waited = now - self._since
        if waited >= delay:
            self._since, self._direction = None, 0
            return wanted, 0.0
        return current, delay - waited


@dataclass
class Scaler:
    """One scaled thing (a stage, or the Embedder): its bounds, pin and delays."""

    name: str
    minimum: int
    maximum: int
    hysteresis: Hysteresis
    pinned: int | None = None
    last: Decision | None = field(default=None)

    def decide(self, current: int, wanted: int, now: float, cause: str,
               detail: str = "") -> Decision:
        signal = f"{cause} ({detail})" if detail else cause
        if self.pinned is not None:
            self.hysteresis.step(current, current, now)  # forget a pending change
            return self._keep(Decision(self.pinned, self.pinned, "pinned", PINNED,
                                       f"pinned to {self.pinned} by `deeplens scale`"))
        target, wait = self.hysteresis.step(current, wanted, now)
        if target != current:
            action = "up" if target > current else "down"
            why = f"{action} {current} -> {target}: {signal}"
        elif wanted != current:
            action = "waiting-up" if wanted > current else "waiting-down"
            why = f"{action[8:]} to {wanted} in {wait:.0f} s unless it changes: {signal}"
        else:
            action, why = "steady", f"steady at {current}: {signal}"
        return self._keep(Decision(target, wanted, action, cause, why, round(wait, 1)))

    def _keep(self, decision: Decision) -> Decision:
        self.last = decision
        return decision


PINNED = "pinned by deeplens scale"
LAG = "lag above what the actors carry"
DRAINS = "backlog drains soon at the current rate"
CAPPED = "lag above what the partitions allow"
LOW_LAG = "lag within what the actors carry"
QUEUED = "images queued for the Embedder"
IDLE = "no images queued"


def stage_signal(lag: int, rate: float, current: int, minimum: int, maximum: int,
                 cfg: ScalingSettings) -> tuple[int, str, str]:
    """A stage's wanted actor count, its cause (a fixed phrase) and the numbers."""
    wanted = wanted_count(lag, cfg.lag_per_actor, current, minimum, maximum, cfg.tolerance)
    detail = f"lag {lag}, {rate:.1f}/s, {cfg.lag_per_actor} per actor"
    if wanted > current and rate > 0 and lag / rate <= cfg.drain_target_s:
        return current, DRAINS, f"{detail}: {lag / rate:.0f} s"
    if wanted == maximum and maximum < math.ceil(lag / cfg.lag_per_actor):
        return wanted, CAPPED, f"{detail}, {maximum} partitions"
    return wanted, (LAG if lag > current * cfg.lag_per_actor else LOW_LAG), detail


def embedder_signal(queued: int, busy: float | None, current: int, minimum: int,
                    maximum: int, cfg: ScalingSettings) -> tuple[int, str, str]:
    """The Embedder's wanted replica count, its cause and the numbers."""
    wanted = wanted_count(queued, cfg.queued_images_per_replica, current, minimum, maximum,
                          cfg.tolerance)
    busy_text = "" if busy is None else f", busy {busy:.0%}"
    return wanted, (QUEUED if queued else IDLE), (
        f"{queued} queued{busy_text}, {cfg.queued_images_per_replica} per replica")


def partitions_of(ends: dict[tuple[str, int], int], topics: list[str]) -> int:
    """The most partitions among ``topics`` (physical names), from the broker's ends."""
    counts = {topic: 0 for topic in topics}
    for topic, _ in ends:
        if topic in counts:
            counts[topic] += 1
    return max(counts.values(), default=1) or 1


def runs(indexes: list[int]) -> list[tuple[int, int]]:
    """Sorted indexes as (first, length) runs of consecutive numbers."""
    out: list[tuple[int, int]] = []
    for i in indexes:
        if out and out[-1][0] + out[-1][1] == i:
            out[-1] = (out[-1][0], out[-1][1] + 1)
        else:
            out.append((i, 1))
    return out
