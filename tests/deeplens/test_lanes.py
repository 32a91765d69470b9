"""Live work first: the lane gate's rule without a broker, and a live upload that
overtakes a bulk backlog in a real consumer loop."""

from __future__ import annotations

import threading
import time

from deeplens.consumer_loop import ConsumerLoop
from deeplens.kafka import EventProducer, Outbound
from deeplens.lanes import LaneGate, same_lane
from tests.deeplens.test_consumer_loop import upload

LIVE, BULK = "p.images.uploaded", "p.images.uploaded.bulk"


def test_bulk_takes_at_most_its_share_while_live_work_waits() -> None:
    gate = LaneGate(share=0.25, batch_size=4)
    poll = [(BULK, 0, 10), (LIVE, 1, 5), (BULK, 0, 11), (LIVE, 1, 6), (LIVE, 1, 7),
            (BULK, 2, 3), (BULK, 0, 12)]
    keep, rewind = gate.admit(poll)
    # three live messages earn one bulk message (25 % of what is handled)
    assert keep == [True, True, False, True, True, False, False]
    assert rewind == {(BULK, 0): 11, (BULK, 2): 3} and gate.bulk_paused
    assert gate.admit([], live_behind=True) == ([], {})  # live waits: bulk stays refused
    assert gate.bulk_paused
    keep, _ = gate.admit([(BULK, 0, 11), (BULK, 0, 12)])  # live is done: full speed
    assert keep == [True, True] and not gate.bulk_paused
    keep, rewind = gate.admit([(BULK, 0, 13)], live_behind=True)  # live fetched behind it
    assert keep == [False] and rewind == {(BULK, 0): 13}
    assert gate.handled == {"live": 3, "bulk": 3}
    assert LaneGate(share=1, batch_size=4).admit(poll)[0] == [True] * 7
    # A stage's topics without a bulk twin (the projection's images.processed) pass, and
    # neither earn bulk its share nor hold it back.
    twins = LaneGate(share=0.25, batch_size=4, live_topics=frozenset({"p.images.validated"}))
    keep, _ = twins.admit([("p.images.processed", 0, 1), ("p.images.validated.bulk", 0, 9)])
    assert keep == [True, True] and twins.handled == {"live": 0, "bulk": 1}


def test_outputs_stay_on_their_lane() -> None:
    assert same_lane("images.validated", "images.uploaded.bulk") == "images.validated.bulk"
    assert same_lane("images.validated", "images.uploaded") == "images.validated"


def test_the_live_lane_overtakes_a_bulk_backlog(kafka_settings) -> None:
    producer = EventProducer(kafka_settings, prefix=kafka_settings.topic_prefix)
    producer.send([Outbound("images.uploaded.bulk", f"b{i}", upload(i)) for i in range(400)])
    order: list[str] = []
    started = threading.Event()

    def handle(batch):
        order.extend("live" if e.topic == "images.uploaded" else "bulk" for e in batch)
        started.set()
        time.sleep(0.02)  # a stage slower than its backlog arrives
        return []

    loop = ConsumerLoop(settings=kafka_settings, stage="validation", batch_size=10,
                        topics=["images.uploaded", "images.uploaded.bulk"], handler=handle,
                        bulk_share=0.25).start()
    try:
        assert started.wait(60)
        producer.send([Outbound("images.uploaded", f"l{i}", upload(1000 + i)) for i in range(5)])
        deadline = time.monotonic() + 60
        while order.count("live") < 5 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        loop.stop()
        producer.close()
    last_live = len(order) - order[::-1].index("live")
    bulk_before = order[:last_live].count("bulk")
    assert order.count("live") == 5
    assert bulk_before < 200, f"{bulk_before} bulk messages were handled before the live ones"
    assert loop.stats.lanes["live"] == 5


def test_status_reports_lag_and_uploads_per_lane() -> None:
    from cluster.lanes_status import lane_figures

    text = "\n".join([
        "# TYPE deeplens_consumer_lag gauge",
        'deeplens_consumer_lag{group="validation",topic="images.uploaded",partition="0"} 2',
        'deeplens_consumer_lag{group="validation",topic="images.uploaded.bulk",partition="0"} 70',
        'deeplens_consumer_lag{group="embedding",topic="images.validated.bulk",partition="1"} 30',
        'deeplens_consumer_lag{group="indexing",topic="images.processed",partition="1"} 5',
        "# TYPE deeplens_topic_messages counter",
        'deeplens_topic_messages_total{topic="images.uploaded"} 10',
        'deeplens_topic_messages_total{topic="images.uploaded.bulk"} 900', ""])
    assert lane_figures(text) == {"live": {"lag": 2, "written": 10},
                                  "bulk": {"lag": 100, "written": 900}}


def test_live_marks_see_live_messages_no_poll_returned_yet() -> None:
    from deeplens.lanes import LiveMarks

    marks = LiveMarks()
    assert not marks.behind(LIVE, 0, -1001)  # nothing fetched yet
    assert not marks.behind(LIVE, 0, 7)  # what was there at the first look: unknown
    assert marks.behind(LIVE, 0, 9)  # two arrived since, none handled
    marks.handled(LIVE, 0, 8)
    assert not marks.behind(LIVE, 0, 9)
    assert marks.behind(LIVE, 0, 10)
