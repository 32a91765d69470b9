"""``POST /v1/images/batch`` over real HTTP and a real broker: twenty files, one bad,
answered in order, the bad one failing alone; the same batch again is the same images;
the bulk lane's events go to their own topic; ``deeplens ingest`` sends batches."""

from __future__ import annotations

import httpx

from deeplens.events import ImageUploaded
from ingestion.api import create_app
from tests import images
from tests.conftest import make_settings
from tests.http_server import serve_app
from tests.kafka_helpers import read_topic


def test_a_batch_of_twenty_with_one_bad_file(tmp_path, kafka_settings, tenant) -> None:
    settings = make_settings(tmp_path, kafka_settings, tenant, tenant + "-b")
    files = [("files", (f"{i}.jpg", images.jpeg(i), "image/jpeg")) for i in range(20)]
    files[7] = ("files", ("bad.jpg", b"not an image at all", "image/jpeg"))
    files.append(("files", ("again.jpg", images.jpeg(3), "image/jpeg")))  # a copy of #3
    headers = {"Authorization": f"Bearer key-{tenant}-0123456789ab"}
    with serve_app(create_app(settings)) as url, httpx.Client(
            base_url=url, headers=headers, timeout=30) as client:
        answer = client.post("/v1/images/batch", files=files)
        assert answer.status_code == 200, answer.text
        body = answer.json()
        again = client.post("/v1/images/batch", files=files).json()
        bulk = client.post("/v1/images/batch", params={"lane": "bulk"},
                           files=[("files", ("x.png", images.png(50), "image/png"))]).json()
    results = body["results"]
    assert [r["index"] for r in results] == list(range(21))
    assert [r["file_name"] for r in results][:3] == ["0.jpg", "1.jpg", "2.jpg"]
    assert results[7]["status_code"] == 415 and results[7]["image_id"] is None
    assert body["accepted"] == 20 and all(
        r["status_code"] == 202 for i, r in enumerate(results) if i != 7)
    assert results[20]["image_id"] == results[3]["image_id"] == results[20]["duplicate_of"]
    assert [r["image_id"] for r in again["results"]] == [r["image_id"] for r in results]
    events = read_topic(kafka_settings, "images.uploaded", expect=20, timeout_s=10)
    assert len(events) == 19 and {e.image_id for e in events} == {
        r["image_id"] for r in results if r["image_id"]}
    [lane] = read_topic(kafka_settings, "images.uploaded.bulk", expect=1)
    assert isinstance(lane, ImageUploaded) and lane.image_id == bulk["results"][0]["image_id"]
