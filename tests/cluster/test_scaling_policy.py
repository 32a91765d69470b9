"""The scaling decisions, pure: lag and queues to counts, delays, hysteresis and pins."""

from __future__ import annotations

from cluster.scaling_policy import (
    CAPPED,
    DRAINS,
    IDLE,
    LAG,
    LOW_LAG,
    QUEUED,
    Hysteresis,
    Scaler,
    embedder_signal,
    partitions_of,
    stage_signal,
    wanted_count,
)
from deeplens.scaling_settings import ScalingSettings

CFG = ScalingSettings(lag_per_actor=100, queued_images_per_replica=50, drain_target_s=60,
                      upscale_delay_s=30, downscale_delay_s=600, tolerance=0.1)


def test_lag_asks_for_one_actor_per_lag_threshold_within_the_bounds() -> None:
    assert wanted_count(0, 100, 1, 1, 3, 0.1) == 1
    assert wanted_count(101, 100, 1, 1, 3, 0.1) == 2
    assert wanted_count(250, 100, 1, 1, 3, 0.1) == 3
    assert wanted_count(10_000, 100, 1, 1, 3, 0.1) == 3, "never past the partitions"
    assert wanted_count(0, 100, 2, 2, 3, 0.1) == 2, "never under the minimum"


def test_fewer_are_wanted_only_once_the_lag_is_clearly_below_the_smaller_count() -> None:
    # 3 actors, lag 195: 2 would carry 200, but with 10 % headroom only 180
    assert wanted_count(195, 100, 3, 1, 3, 0.1) == 3
    assert wanted_count(170, 100, 3, 1, 3, 0.1) == 2
    assert wanted_count(0, 100, 3, 1, 3, 0.1) == 1


def test_a_backlog_the_stage_drains_soon_by_itself_adds_no_actor() -> None:
    assert stage_signal(500, 20.0, 1, 1, 3, CFG) == (  # 25 s at its rate
        1, DRAINS, "lag 500, 20.0/s, 100 per actor: 25 s")
    assert stage_signal(500, 2.0, 1, 1, 3, CFG) == (  # 250 s, and 5 wanted
        3, CAPPED, "lag 500, 2.0/s, 100 per actor, 3 partitions")
    assert stage_signal(500, 0.0, 1, 1, 6, CFG)[:2] == (5, LAG), "no rate yet: KEDA's rule"
    assert stage_signal(150, 0.0, 3, 1, 3, CFG)[:2] == (2, LOW_LAG)


def test_the_embedder_follows_queued_images_between_its_bounds() -> None:
    assert embedder_signal(0, 0.0, 1, 1, 3, CFG)[:2] == (1, IDLE)
    assert embedder_signal(120, 0.93, 1, 1, 3, CFG) == (
        3, QUEUED, "120 queued, busy 93%, 50 per replica")
    assert embedder_signal(5000, None, 1, 1, 3, CFG)[0] == 3
    assert embedder_signal(0, 0.0, 3, 1, 3, CFG)[0] == 1


def test_a_change_waits_its_delay_in_one_direction() -> None:
    h = Hysteresis(up_delay_s=30, down_delay_s=600)
    assert h.step(1, 3, now=0) == (1, 30)
    assert h.step(1, 3, now=29)[0] == 1
    assert h.step(1, 3, now=30) == (3, 0)
    assert h.step(3, 1, now=31)[0] == 3
    assert h.step(3, 3, now=100) == (3, 0), "back to steady: the down timer is reset"
    assert h.step(3, 1, now=101)[0] == 3
    assert h.step(3, 1, now=700)[0] == 3, "599 s since the new start"
    assert h.step(3, 1, now=701) == (1, 0)


def test_a_flip_of_direction_restarts_the_wait() -> None:
    h = Hysteresis(up_delay_s=30, down_delay_s=30)
    h.step(2, 3, now=0)
    h.step(2, 1, now=20)  # now it wants fewer: a fresh 30 s
    assert h.step(2, 1, now=45)[0] == 2
    assert h.step(2, 1, now=50)[0] == 1


def test_the_scaler_says_why_and_holds_a_pin_until_released() -> None:
    scaler = Scaler("indexing", 1, 3, Hysteresis(30, 600))
    first = scaler.decide(1, 3, now=0, cause=LAG, detail="lag 900")
    assert (first.target, first.action, first.cause, first.wait_s) == (1, "waiting-up", LAG, 30)
    assert first.reason == f"up to 3 in 30 s unless it changes: {LAG} (lag 900)"
    assert scaler.decide(1, 3, now=30, cause=LAG, detail="lag 900").reason == \
        f"up 1 -> 3: {LAG} (lag 900)"
    scaler.pinned = 2
    pinned = scaler.decide(3, 1, now=40, cause=LOW_LAG)
    assert (pinned.target, pinned.action, pinned.reason) == (
        2, "pinned", "pinned to 2 by `deeplens scale`")
    assert scaler.decide(2, 1, now=2000, cause=LOW_LAG).target == 2, "a pin outlasts delays"
    scaler.pinned = None
    released = scaler.decide(2, 1, now=2001, cause=LOW_LAG)
    assert (released.target, released.action, released.wait_s) == (2, "waiting-down", 600)
    assert scaler.decide(2, 1, now=2601, cause=LOW_LAG).action == "down"
    assert scaler.decide(1, 1, now=2602, cause=LOW_LAG).reason == f"steady at 1: {LOW_LAG}"


def test_partitions_are_counted_from_the_broker_ends() -> None:
    ends = {("p.images.processed", 0): 5, ("p.images.processed", 1): 0,
            ("p.images.deleted", 0): 0, ("p.other", 0): 1}
    assert partitions_of(ends, ["p.images.processed", "p.images.deleted"]) == 2
    assert partitions_of({}, ["p.images.processed"]) == 1
