"""The periodic stuck-image sweep: an image that stopped moving is re-published once its
stage has caught up; one still moving, or queued behind a backlog, is left alone."""

from __future__ import annotations

from datetime import timedelta

from cluster.samples import jpeg_bytes, scene
from cluster.sweeper import StuckSweeper, caught_up, last_moved
from deeplens.db import make_engine
from deeplens.events import utcnow
from ingestion.catalog import Catalog
from ingestion.tables import images

RUNNING = ["validation", "embedding", "indexing", "dedup", "projection", "usage"]


def test_a_status_waits_for_the_stages_that_move_it() -> None:
    assert caught_up({}, set(RUNNING)) == {"uploaded", "validated", "processed"}
    behind = {("validation", "images.uploaded", 3): 7, ("dedup", "images.processed", 0): 2}
    # dedup does not move an image's status: its lag holds nothing back
    assert caught_up(behind, set(RUNNING)) == {"validated", "processed"}
    assert caught_up({("projection", "images.indexed", 1): 1}, set(RUNNING)) == {
        "uploaded", "validated"}
    # a bulk import's backlog holds its statuses too: queued, not stuck
    assert caught_up({("validation", "images.uploaded.bulk", 0): 500}, set(RUNNING)) == {
        "validated", "processed"}
    assert caught_up({("embedding", "images.validated.bulk", 2): 9}, set(RUNNING)) == {
        "uploaded", "processed"}
    # a stage that is not running (a stack without projection) cannot hold anything
    assert caught_up({("projection", "images.indexed", 1): 1}, {"validation"}) == {
        "uploaded", "validated", "processed"}


def test_the_sweep_runs_by_itself_and_outlives_a_failed_pass(tmp_path) -> None:
    """Nobody calls sweep(): the sweeper's own thread does, again after one that raised."""
    import threading

    from deeplens.settings import OpsSettings, Settings

    passes: list[int] = []
    again = threading.Event()

    class Counted(StuckSweeper):
        def sweep(self, now=None):  # type: ignore[no-untyped-def]
            passes.append(1)
            if len(passes) == 1:
                raise RuntimeError("the catalog is busy")
            again.set()

    settings = Settings(data_dir=tmp_path, ops=OpsSettings(sweep_interval_s=0.05))
    sweeper = Counted(settings, RUNNING)
    try:
        assert again.wait(30), "no second pass"
    finally:
        sweeper.stop()
    assert sweeper.stats()["last_error"] == "the catalog is busy"


def _upload(api, count: int, seed: int) -> list[str]:
    with api.client() as client:
        return [client.post("/v1/images", files={"file": (f"{i}.jpg", jpeg_bytes(scene(
            seed + i, 64)))}).json()["image_id"] for i in range(count)]


def test_a_stuck_image_is_republished_and_a_moving_one_left_alone(api, monkeypatch) -> None:
    stuck, moving, fresh = _upload(api, 3, 4200)
    now = utcnow()
    long_ago = now - timedelta(minutes=30)
    engine = make_engine(api.settings.effective_catalog_url)
    with engine.begin() as conn:  # what the catalog holds after 30 minutes of this
        conn.execute(images.update().where(images.c.image_id == stuck).values(
            status="validated", uploaded_at=long_ago, validated_at=long_ago + timedelta(seconds=1)))
        conn.execute(images.update().where(images.c.image_id == moving).values(
            status="validated", uploaded_at=long_ago, validated_at=now - timedelta(seconds=30)))
    assert last_moved(Catalog(api.settings.effective_catalog_url).get(api.tenant_a, moving)) \
        > now - timedelta(minutes=1)

    sweeper = StuckSweeper(api.settings, RUNNING, start=False)
    lags: dict = {("embedding", "images.validated", 0): 4}  # the Embedder is behind
    monkeypatch.setattr(sweeper, "_lags", lambda: lags)
    assert sweeper.sweep(now).republished == []
    assert sweeper.stats()["deferred"] == 1, "queued behind a backlog is not stuck"

    lags.clear()  # caught up: what is left behind now was lost
    report = sweeper.sweep(now)
    assert report.republished == [stuck]
    assert fresh not in report.republished and moving not in report.republished
    assert sweeper.stats()["republished"] == 1

    from confluent_kafka import Consumer

    from deeplens.events import ImageUploaded

    kafka = api.settings.kafka
    consumer = Consumer({"bootstrap.servers": kafka.bootstrap_servers, "group.id": f"t{stuck}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe([f"{kafka.topic_prefix}images.uploaded"])
    seen: list[str] = []
    for _ in range(200):
        message = consumer.poll(0.2)
        if message is not None and not message.error():
            seen.append(ImageUploaded.model_validate_json(message.value()).image_id)
        if seen.count(stuck) == 2:
            break
    consumer.close()
    assert seen.count(stuck) == 2, "the upload's event and the sweep's"

