"""Retry ladders, dead letters and replay, on the real broker."""

from __future__ import annotations

import time

from deeplens.consumer_loop import ConsumerLoop
from deeplens.dead_letters import read_failures, replay_letters, select
from deeplens.events import ImageFailed
from deeplens.stage_sdk import Retry
from tests.deeplens.test_consumer_loop import publish, to_validated, upload
from tests.kafka_helpers import read_topic


def fast(settings):
    """Ladder delays 10 s / 60 s / 600 s scaled to 0.05 s / 0.3 s / 3 s."""
    return settings.model_copy(update={"retry_delay_scale": 0.005})


def run_until(loop: ConsumerLoop, done, timeout_s: float = 60) -> None:
    loop.start()
    deadline = time.monotonic() + timeout_s
    try:
        while not done() and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        loop.stop()


def test_a_failing_dependency_climbs_the_ladder_then_dead_letters(kafka_settings) -> None:
    settings = fast(kafka_settings)
    publish(settings, [upload(i) for i in range(4)])

    def broken_for_img2(envelopes):
        if any(e.event.image_id == "img-2" for e in envelopes):
            raise ConnectionError("vector store unavailable")
        return to_validated(envelopes)

    loop = ConsumerLoop(settings=settings, stage="validation", topics=["images.uploaded"],
                        handler=broken_for_img2, batch_size=1, inplace_attempts=1)
    run_until(loop, lambda: loop.stats.dead_lettered >= 1)
    validated = read_topic(settings, "images.validated", expect=3)
    assert {e.image_id for e in validated} == {"img-0", "img-1", "img-3"}
    [dead] = [f for f in read_topic(settings, "images.failed", expect=1)
              if isinstance(f, ImageFailed)]
    assert (dead.image_id, dead.reason, dead.stage) == ("img-2", "transient_exhausted", "validation")
    assert dead.attempt == 4, "first delivery + three retry rungs"
    assert dead.origin_topic == "images.uploaded" and dead.origin_offset >= 0
    assert dead.error_class == "ConnectionError" and "unavailable" in dead.message
    assert dead.event_type == "images.uploaded" and dead.event["image_id"] == "img-2"
    assert loop.stats.retried == 3


def test_per_item_retry_verdict_arrives_later(kafka_settings) -> None:
    settings = fast(kafka_settings)
    publish(settings, [upload(i) for i in range(3)])
    seen: dict[str, int] = {}

    def flaky_item(envelopes):
        out = []
        for env in envelopes:
            seen[env.event.image_id] = seen.get(env.event.image_id, 0) + 1
            if env.event.image_id == "img-1" and env.attempt == 1:
                out.append(Retry(env, "storage timeout", "TimeoutError"))
            else:
                out.extend(to_validated([env]))
        return out

    loop = ConsumerLoop(settings=settings, stage="validation", topics=["images.uploaded"],
                        handler=flaky_item)
    run_until(loop, lambda: loop.stats.handled >= 4)
    validated = read_topic(settings, "images.validated", expect=3)
    assert {e.image_id for e in validated} == {"img-0", "img-1", "img-2"}
    assert seen["img-1"] == 2 and loop.stats.retried == 1


def test_dead_letters_replay_after_a_fix(kafka_settings, monkeypatch, capsys) -> None:
    settings = fast(kafka_settings)
    publish(settings, [upload(7)])
    broken = {"on": True}

    def handler(envelopes):
        if broken["on"]:
            raise ConnectionError("embedder down")
        return to_validated(envelopes)

    loop = ConsumerLoop(settings=settings, stage="validation", topics=["images.uploaded"],
                        handler=handler, inplace_attempts=1)
    run_until(loop, lambda: loop.stats.dead_lettered >= 1)
    letters = select(read_failures(settings), stage="validation")
    assert [letter.failure.image_id for letter in letters] == ["img-7"]

    broken["on"] = False  # the fix
    from deeplens.cli import main

    monkeypatch.setenv("DEEPLENS_KAFKA__BOOTSTRAP_SERVERS", settings.bootstrap_servers)
    monkeypatch.setenv("DEEPLENS_KAFKA__TOPIC_PREFIX", settings.topic_prefix)
    assert main(["dlq", "list"]) == 0
    assert "img-7" in capsys.readouterr().out
    assert main(["dlq", "replay", "--stage", "validation"]) == 0
    assert "replayed 1" in capsys.readouterr().out

    loop = ConsumerLoop(settings=settings, stage="validation", topics=["images.uploaded"],
                        handler=handler, inplace_attempts=1)
    run_until(loop, lambda: loop.stats.produced >= 1)
    [validated] = read_topic(settings, "images.validated", expect=1)
    assert validated.image_id == "img-7"


def test_replay_skips_what_has_no_stage_to_go_back_to(kafka_settings) -> None:
    from deeplens.dead_letters import DeadLetter

    orphan = ImageFailed(image_id="x", reason="transient_exhausted", message="m",
                         stage="projection", event={"a": 1}, event_type="images.uploaded")
    assert replay_letters(kafka_settings, [DeadLetter(0, orphan)]) == (0, 1)
