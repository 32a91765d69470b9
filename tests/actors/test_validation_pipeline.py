"""Uploads over HTTP -> real broker -> validator and projection actors on real Ray."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from actors import validator
from deeplens.events import TenantUsage
from deeplens.stage_actor import StageSpec, launch_stage, stop_stage
from ingestion import projection
from tests import images
from tests.conftest import Api
from tests.kafka_helpers import read_topic

VALIDATION = StageSpec(validator.STAGE, validator.TOPICS, "actors.validator:build_handler")
PROJECTION = StageSpec(projection.STAGE, projection.TOPICS, "ingestion.projection:build_handler")


@pytest.fixture
def stages(api: Api, ray_session) -> Iterator[list]:
    actors = launch_stage(api.settings, VALIDATION, 2) + launch_stage(api.settings, PROJECTION, 1)
    try:
        yield actors
    finally:
        stop_stage(actors)


def wait_for_status(client: httpx.Client, ids: list[str], done: set[str], timeout_s: float = 90):
    deadline = time.monotonic() + timeout_s
    rows: dict[str, dict] = {}
    while time.monotonic() < deadline:
        rows = {i: client.get(f"/v1/images/{i}").json() for i in ids}
        if all(r["status"] in done for r in rows.values()):
            break
        time.sleep(0.5)
    return rows


def test_fifty_uploads_all_reach_validated(api: Api, stages) -> None:
    with api.client() as client:
        ids = []
        for seed in range(50):
            data = images.jpeg(seed) if seed % 3 else images.png(seed)
            answer = client.post("/v1/images", files={"file": (f"{seed}.img", data)})
            assert answer.status_code == 202, answer.text
            ids.append(answer.json()["image_id"])
        rows = wait_for_status(client, ids, {"validated", "failed"})
    assert {r["status"] for r in rows.values()} == {"validated"}, [
        r for r in rows.values() if r["status"] != "validated"][:3]
    assert all(r["width"] == 96 and r["height"] == 72 for r in rows.values())
    assert all(r["timestamps"]["validated_at"] for r in rows.values())
    validated = read_topic(api.settings.kafka, "images.validated", expect=50)
    assert sorted(e.image_id for e in validated) == sorted(ids)
    # Usage comes folded per tenant per batch (deeplens.usage_batch): one item per image.
    def uploads(events):
        return [i.image_id for u in events if isinstance(u, TenantUsage)
                and u.metric == "uploads" for i in u.items or []]

    usage = read_topic(api.settings.kafka, "tenant.usage", expect=0,
                       until=lambda got: len(uploads(got)) >= 50)
    assert sorted(set(uploads(usage))) == sorted(ids)


BAD = {
    "truncated": images.truncated_jpeg(1),
    "decompression_bomb": images.bomb_png(),
    "corrupt": images.corrupt_png(2),
    "too_small": images.jpeg(3, width=4, height=4),
}


def test_bad_images_fail_alone_with_their_reason(api: Api, stages) -> None:
    with api.client() as client:
        ids: dict[str, str] = {}
        for reason, data in BAD.items():
            answer = client.post("/v1/images", files={"file": (f"{reason}.jpg", data)})
            assert answer.status_code == 202, (reason, answer.text)
            ids[answer.json()["image_id"]] = reason
        good = client.post("/v1/images", files={"file": ("ok.jpg", images.jpeg(99))}).json()
        rows = wait_for_status(client, [*ids, good["image_id"]], {"validated", "failed"})
    for image_id, reason in ids.items():
        row = rows[image_id]
        assert row["status"] == "failed", row
        assert (row["failure_reason"], row["stage"]) == (reason, "validation")
        assert row["failure_message"]
    assert rows[good["image_id"]]["status"] == "validated"
    failures = read_topic(api.settings.kafka, "images.failed", expect=len(BAD))
    assert {f.reason for f in failures} == set(BAD)
    assert all(f.origin_topic == "images.uploaded" and f.origin_offset >= 0 for f in failures)


def test_missing_object_fails_with_missing_object(api: Api, stages) -> None:
    from deeplens.events import ImageUploaded, utcnow
    from deeplens.kafka import EventProducer, Outbound

    ghost = ImageUploaded(
        tenant_id=api.tenant_a, image_id="f" * 32, original_file_name="ghost.jpg",
        storage_provider="local", storage_path=f"{api.tenant_a}/ff/{'f' * 32}.jpg",
        file_size=10, mime_type="image/jpeg", sha256="0" * 64, uploaded_at=utcnow())
    EventProducer(api.settings.kafka, prefix=api.settings.kafka.topic_prefix).send(
        [Outbound(ghost.topic, ghost.image_id, ghost)])
    [failure] = read_topic(api.settings.kafka, "images.failed", expect=1)
    assert (failure.image_id, failure.reason, failure.stage) == (
        ghost.image_id, "missing_object", "validation")
    assert failure.event is not None and failure.event["storage_path"] == ghost.storage_path
