"""validated -> feeders (Ray actors) -> Embedder (Ray Serve, DALI, tiny open_clip) -> processed."""

from __future__ import annotations

import time
from collections import Counter

import numpy as np
import pytest

from actors import embedding_feeder
from deeplens.events import ImageProcessed, ImageValidated, utcnow
from deeplens.kafka import EventProducer, Outbound
from deeplens.serve_names import EMBEDDER_APP
from deeplens.settings import ModelSettings, ServeSettings
from deeplens.stage_actor import StageSpec, launch_stage, stop_stage
from deeplens.storage import make_storage, object_path
from tests import images
from tests.kafka_helpers import read_topic

TINY = ModelSettings(name="deeplens-tiny", pretrained="random")


@pytest.fixture(scope="module")
def embedder_app(ray_session):
    from ray import serve

    from deeplens.settings import Settings
    from serve_apps.embedder import build_embedder

    settings = Settings(model=TINY, serve=ServeSettings(num_cpus=0.5, max_batch_size=16))
    serve.run(build_embedder(settings), name=EMBEDDER_APP, route_prefix=None)
    try:
        yield
    finally:
        serve.delete(EMBEDDER_APP)


def feeder_spec(**kw) -> StageSpec:
    return StageSpec(embedding_feeder.STAGE, embedding_feeder.TOPICS,
                     "actors.embedding_feeder:build_handler", max_in_flight=2, **kw)


def put_validated(settings, tenant: str, count: int, payload=None,
                  payloads=None) -> list[ImageValidated]:
    """Store images and publish images.validated for them, as the validator would."""
    storage = make_storage(settings)
    events = []
    for i in range(count):
        image_id = f"{i:02d}" + "e" * 30
        data = payloads[i] if payloads else payload if payload is not None else images.jpeg(i)
        path = object_path(tenant, image_id, "jpg")
        storage.put(path, data)
        events.append(ImageValidated(
            tenant_id=tenant, image_id=image_id, original_file_name=f"{i}.jpg",
            storage_provider="local", storage_path=path, file_size=len(data),
            mime_type="image/jpeg", sha256=f"{i:064x}", uploaded_at=utcnow(),
            width=96, height=72, format="JPEG", validated_at=utcnow()))
    EventProducer(settings.kafka, prefix=settings.kafka.topic_prefix).send(
        [Outbound(e.topic, e.image_id, e) for e in events])
    return events


def test_feeders_embed_every_validated_image(api, embedder_app) -> None:
    sent = put_validated(api.settings, api.tenant_a, 24)
    actors = launch_stage(api.settings, feeder_spec(), 2)
    try:
        processed = read_topic(api.settings.kafka, "images.processed", expect=24, timeout_s=120)
    finally:
        stop_stage(actors)
    assert sorted(p.image_id for p in processed) == sorted(e.image_id for e in sent)
    for event in processed:
        assert isinstance(event, ImageProcessed)
        assert event.feature_model == "deeplens-tiny/random-init-seed0"
        assert event.schema_version == 2 and event.features is None
        assert len(event.vector()) == 64
        assert abs(float(np.linalg.norm(event.vector())) - 1.0) < 1e-4
        assert event.storage_path and event.processed_at >= event.validated_at
        # What the Embedder's one decode yielded besides the vector:
        assert len(event.phash) == 16 and event.pixel_fingerprint.startswith("jc1:")  # JPEGs
        thumb = make_storage(api.settings).get(event.thumbnail_path)
        assert event.thumbnail_path.endswith(".thumb.jpg") and thumb[:3] == b"\xff\xd8\xff"
    # Usage comes folded per tenant per batch (deeplens.usage_batch): one item per image.
    def items(events):
        return [(u.metric, i.image_id) for u in events for i in u.items or []]

    usage = read_topic(api.settings.kafka, "tenant.usage", expect=0, timeout_s=30,
                       until=lambda got: len(items(got)) >= 48)
    assert Counter(metric for metric, _ in items(usage)) == {"images_embedded": 24,
                                                             "embedding_ms": 24}


def test_image_the_embedder_cannot_decode_fails_alone(api, embedder_app) -> None:
    put_validated(api.settings, api.tenant_a, 1, payload=b"\xff\xd8\xff" + b"\x01" * 500)
    actors = launch_stage(api.settings, feeder_spec(), 1)
    try:
        [failure] = read_topic(api.settings.kafka, "images.failed", expect=1, timeout_s=60)
    finally:
        stop_stage(actors)
    assert (failure.stage, failure.reason) == ("embedding", "corrupt")
    assert failure.origin_topic == "images.validated"


def test_feeder_killed_before_commit_redelivers_everything(api, embedder_app) -> None:
    sent = put_validated(api.settings, api.tenant_a, 20)
    spec = feeder_spec(before_commit="tests.actors.hooks:die_once", batch_size=5)
    actors = launch_stage(api.settings, spec, 1)
    try:
        # Every image, and more messages than images: up to two batches in flight were
        # produced but not committed when the feeder died, and are produced again.
        wanted = {e.image_id for e in sent}
        processed = read_topic(api.settings.kafka, "images.processed", expect=25, timeout_s=120,
                               until=lambda got: {p.image_id for p in got} >= wanted
                               and len(got) >= 25)
    finally:
        stop_stage(actors)
    assert (api.settings.data_dir / "died-once").exists(), "the fault was injected"
    counts = Counter(p.image_id for p in processed)
    assert set(counts) == {e.image_id for e in sent}, "every image reached images.processed"
    assert max(counts.values()) >= 2, "the batch produced before the crash was redelivered"


class DeadDevice:
    """A decoder on a GPU that has failed: every call raises, as torch and DALI then do."""

    name = "dead-device"

    def decode(self, items):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")


def _embedder_on_a_dead_device_once():
    """The real Embedder; the first replica to start while ``arm`` exists has a dead device
    (its every decode faults), the replica Serve starts in its place a working one."""
    from pathlib import Path

    from serve_apps.embedder import Embedder

    class OnADeadDeviceOnce(Embedder.func_or_class):
        def __init__(self, args, arm: str) -> None:
            super().__init__(args)
            try:
                Path(arm).unlink()
            except FileNotFoundError:
                return
            self.decoder = DeadDevice()

    return OnADeadDeviceOnce


def test_a_device_fault_fails_no_image_and_the_replica_is_replaced(api, ray_session) -> None:
    """A replica whose GPU fails mid-batch answers with a device fault, not 'corrupt': no
    image is failed, the replica fails its health check and Serve replaces it, and the
    feeder's retries embed every image on the new replica."""
    from ray import serve

    from deeplens.serve_names import EMBEDDER_DEPLOYMENT
    from serve_apps.embedder import EmbedderArgs

    serve.delete(EMBEDDER_APP)  # the module's Embedder, if up
    arm = api.settings.data_dir / "arm-device-fault"
    arm.parent.mkdir(parents=True, exist_ok=True)
    arm.write_text("x")
    deployment = serve.deployment(_embedder_on_a_dead_device_once(), name=EMBEDDER_DEPLOYMENT,
                                  health_check_period_s=1, health_check_timeout_s=30)
    handle = serve.run(deployment.options(num_replicas=1, ray_actor_options={"num_cpus": 0.5})
                       .bind(EmbedderArgs(model=TINY, decoder="pillow"), str(arm)),
                       name=EMBEDDER_APP, route_prefix=None)
    dead_pid = handle.pid.remote().result(timeout_s=60)
    assert not arm.exists(), "the first replica has the dead device"
    sent = put_validated(api.settings, api.tenant_a, 6)
    actors = launch_stage(api.settings, feeder_spec(), 1)
    try:
        processed = read_topic(api.settings.kafka, "images.processed", expect=6, timeout_s=240)
        stats = __import__("ray").get(actors[0].stats.remote())
    finally:
        stop_stage(actors)
    try:
        assert {p.image_id for p in processed} == {e.image_id for e in sent}
        assert stats["failed_out"] == 0 and stats["dead_lettered"] == 0, stats
        assert stats["batch_retries"] + stats["retried"] >= 1, "the device fault was retried"
        assert handle.pid.remote().result(timeout_s=60) != dead_pid, "the replica was replaced"
    finally:
        serve.delete(EMBEDDER_APP)
    assert read_topic(api.settings.kafka, "images.failed", expect=1, timeout_s=2) == []


def test_feeders_wait_for_the_embedder_instead_of_failing(api, ray_session) -> None:
    """With no Embedder deployed, feeders retry (in place, then on the retry ladder) and fail
    nothing; once it is deployed, everything is embedded."""
    from ray import serve

    from deeplens.settings import Settings
    from serve_apps.embedder import build_embedder

    serve.delete(EMBEDDER_APP)  # the module's Embedder, if still up
    put_validated(api.settings, api.tenant_a, 6)
    actors = launch_stage(api.settings, feeder_spec(), 1)
    try:
        # Retried in place, then moved to the retry ladder, every one of the six.
        stats = _stats_when(actors[0], lambda got: got["retried"] >= 6)
        assert stats["batch_retries"] >= 1 and stats["dead_lettered"] == 0, stats
        assert stats["retried"] >= 6 and stats["failed_out"] == 0, stats
        assert "Embedder" in stats["last_error"]
        assert read_topic(api.settings.kafka, "images.failed", expect=1, timeout_s=2) == []
        settings = Settings(model=TINY, serve=ServeSettings(num_cpus=0.5))
        serve.run(build_embedder(settings), name=EMBEDDER_APP, route_prefix=None)
        processed = read_topic(api.settings.kafka, "images.processed", expect=6, timeout_s=120)
        assert len({p.image_id for p in processed}) == 6
    finally:
        stop_stage(actors)
        serve.delete(EMBEDDER_APP)


def _stats_when(actor, condition, timeout_s: float = 120.0) -> dict:
    """The stage actor's stats once ``condition`` holds of them."""
    import ray

    deadline = time.monotonic() + timeout_s
    while True:
        stats = ray.get(actor.stats.remote())
        if condition(stats) or time.monotonic() > deadline:
            return stats
        time.sleep(0.2)
