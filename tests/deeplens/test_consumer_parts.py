"""The consumer loop's rules without a broker: commits, backpressure, retry holds, pauses."""

from concurrent.futures import Future
from datetime import UTC, datetime

import pytest

from deeplens.consumer_parts import Backpressure, Batch, OffsetTracker, Partitions, RetryHolds
from deeplens.events import ImageUploaded
from deeplens.stage_sdk import H_ATTEMPT, H_ORIGIN_OFFSET, H_ORIGIN_TOPIC, envelope_of, usage_event


def batch(*coords: tuple[str, int, int]) -> Batch:
    b = Batch(list(coords))
    b.future = Future()
    return b


def finish(b: Batch, result: bool = True) -> None:
    b.future.set_result(result)


def test_only_the_finished_prefix_is_committed() -> None:
    tracker = OffsetTracker()
    first, second, third = batch(("t", 0, 5), ("t", 1, 9)), batch(("t", 0, 6)), batch(("t", 0, 7))
    for b in (first, second, third):
        tracker.add(b)
    finish(second)  # done out of order: nothing may be committed past the first
    assert tracker.pop_finished() == ({}, [])
    assert tracker.in_flight() == 2
    finish(first)
    offsets, done = tracker.pop_finished()
    assert offsets == {("t", 0): 7, ("t", 1): 10}  # next offset to read, per partition
    assert done == [first, second]
    assert tracker.pending() == [third.future]


def test_a_stopped_or_failed_batch_is_never_committed() -> None:
    tracker = OffsetTracker()
    stopped, failed = batch(("t", 0, 1)), batch(("t", 0, 2))
    tracker.add(stopped)
    tracker.add(failed)
    finish(stopped, False)  # the runner gave up on stop: leave it for redelivery
    failed.future.set_exception(RuntimeError("boom"))
    assert tracker.pop_finished() == ({}, [])
    assert tracker.in_flight() == 2


def test_backpressure_pauses_at_the_bound_and_resumes_below_half() -> None:
    bp = Backpressure(max_in_flight=4)
    assert [bp.update(n) for n in (1, 3, 4, 4, 3, 2, 4)] == [False, False, True, True, True,
                                                            False, True]
    assert bp.pauses == 2
    one = Backpressure(max_in_flight=1)
    assert [one.update(n) for n in (1, 0)] == [True, False]


def test_retry_holds_rewind_to_the_first_message_not_due() -> None:
    holds = RetryHolds()
    coords = [("r", 0, 10, 500), ("r", 0, 11, 2000), ("r", 0, 12, 900),
              ("r", 1, 3, None), ("r", 2, 7, 5000)]
    keep, rewind = holds.split(coords, now_ms=1000)
    assert keep == [True, False, False, True, False]
    assert rewind == {("r", 0): 11, ("r", 2): 7}
    assert holds.expire(now_ms=2500) == {("r", 2)}
    holds.forget([("r", 2)])
    assert holds.expire(now_ms=2500) == set()


def test_pause_plan_through_rebalances() -> None:
    parts = Partitions()
    parts.assign([("a", 0), ("a", 1), ("r", 0)])
    owned = set(parts.owned)
    assert parts.plan(backpressured=True, held=set()) == (owned, set())
    assert parts.plan(backpressured=True, held=set()) == (set(), set())  # already paused
    # Drained: resume all but the held retry partition (and never one not owned).
    assert parts.plan(backpressured=False, held={("r", 0), ("x", 9)}) == (
        set(), {("a", 0), ("a", 1)})
    parts.forget([("r", 0)])  # revoked while held: nothing left to resume
    assert parts.plan(backpressured=False, held=set()) == (set(), set())
    parts.plan(backpressured=True, held=set())
    parts.assign([("a", 1)])  # re-assigned after a session loss comes back unpaused
    assert ("a", 1) not in parts.paused and parts.plan(True, set()) == ({("a", 1)}, set())


def test_envelope_keeps_a_retried_events_origin() -> None:
    event = ImageUploaded(tenant_id="t", image_id="i", original_file_name="a.jpg",
                          storage_provider="local", storage_path="t/i", file_size=1,
                          mime_type="image/jpeg", sha256="0" * 64, uploaded_at=datetime.now(UTC))
    fresh = envelope_of(event, topic="images.uploaded", partition=2, offset=40, key="i",
                        timestamp=None, headers={})
    assert (fresh.attempt, fresh.origin_topic, fresh.origin_offset) == (1, "images.uploaded", 40)
    retried = envelope_of(event, topic="validation.retry.1", partition=0, offset=3, key="i",
                          timestamp=None, headers={H_ATTEMPT: "2", H_ORIGIN_TOPIC: "images.uploaded",
                                                   H_ORIGIN_OFFSET: "40"})
    assert (retried.attempt, retried.origin_topic, retried.origin_offset) == (2, "images.uploaded", 40)


def test_usage_of_an_image_has_a_stable_id() -> None:
    import uuid

    ns = uuid.uuid4()
    a = usage_event("t", "uploads", 1, image_id="img", namespace=ns)
    b = usage_event("t", "uploads", 1, image_id="img", namespace=ns)
    assert a.event.event_id == b.event.event_id and a.topic == "tenant.usage" and a.key == "t"
    assert usage_event("t", "searches", 1).event.event_id != usage_event("t", "searches", 1).event.event_id
    with pytest.raises(ValueError):
        usage_event("t", "uploads", 1, image_id="img")


def _keep_away_in_thread(hold, stop):
    import threading

    thread = threading.Thread(target=hold.keep_away, args=(stop,), daemon=True)
    thread.start()
    return thread


def test_a_hold_is_acknowledged_kept_until_released_and_ended_by_its_lease() -> None:
    import threading

    from deeplens.consumer_parts import Hold

    stop = threading.Event()
    hold = Hold(lease_s=60)
    assert not hold.request(0.05), "no loop has let go yet"
    assert hold.wanted.is_set()
    thread = _keep_away_in_thread(hold, stop)
    assert hold.request(5), "the loop let go"
    thread.join(0.3)
    assert thread.is_alive(), "it stays away until released"
    hold.release()
    thread.join(5)
    assert not thread.is_alive() and not hold.wanted.is_set()
    assert not hold.request(0.05), "a new request waits for a new acknowledgement"

    short = Hold(lease_s=0.2)  # an asker that never releases
    short.request(0)
    thread = _keep_away_in_thread(short, stop)
    thread.join(5)
    assert not thread.is_alive(), "the lease ended the hold"
    assert not short.wanted.is_set()

    stopping = Hold(lease_s=60)
    stopping.request(0)
    thread = _keep_away_in_thread(stopping, stop)
    stop.set()
    thread.join(5)
    assert not thread.is_alive(), "stop ends a hold"


def test_a_hold_is_not_due_while_the_consumer_is_joining_until_the_grace_ends() -> None:
    from deeplens.consumer_parts import Hold

    hold = Hold(join_grace_s=60)
    hold.subscribed()
    assert not hold.due(), "nobody asked"
    hold.wanted.set()
    assert not hold.due(), "asked, but the consumer is halfway through joining"
    hold.joined.set()
    assert hold.due(), "joined: it may leave now"
    hold.subscribed()  # a fresh consumer: joining again
    assert not hold.due()
    hold._subscribed_at -= 61  # the join has taken longer than the grace
    assert hold.due(), "a join that takes longer than the grace is not waited for"
