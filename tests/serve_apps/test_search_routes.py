"""Search-by-image refuses what an upload would refuse, before any decoder sees it."""

from __future__ import annotations

import httpx
import numpy as np
import pytest

from deeplens.settings import VectorStoreSettings
from deeplens.vectors.lancedb import LanceStore
from ingestion.api import create_app
from serve_apps.search import mount_search
from tests import images
from tests.conftest import make_settings
from tests.http_server import serve_app


class RecordingEncoder:
    """Stands in for the Embedder handle: records what reached it."""

    def __init__(self) -> None:
        self.images: list[bytes] = []

    async def model_id(self) -> str:
        return "m/x"

    async def text(self, text: str) -> np.ndarray:
        return np.ones(8, dtype=np.float32) / np.sqrt(8)

    async def image(self, data: bytes) -> np.ndarray:
        self.images.append(data)
        return np.ones(8, dtype=np.float32) / np.sqrt(8)


@pytest.fixture
def search_api(tmp_path, kafka_settings, tenant):
    settings = make_settings(tmp_path, kafka_settings, tenant, tenant + "-b")
    app = create_app(settings)
    encoder = RecordingEncoder()
    mount_search(app, LanceStore(tmp_path / "vectors", VectorStoreSettings()), encoder)
    with serve_app(app) as url:
        client = httpx.Client(base_url=url, timeout=30, headers={
            "Authorization": f"Bearer key-{tenant}-0123456789ab"})
        yield client, encoder


@pytest.mark.parametrize(("data", "status", "reason"), [
    (images.bomb_png(), 413, "decompression_bomb"),
    (b"%PDF-1.4 not an image", 415, "unsupported_format"),
    (images.jpeg(1, width=8, height=8), 422, "too_small"),
    (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, 422, "corrupt"),
])
def test_bad_query_images_get_the_upload_refusals(search_api, data, status, reason) -> None:
    client, encoder = search_api
    answer = client.post("/v1/search/image", files={"file": ("q.png", data)})
    assert answer.status_code == status, answer.text
    assert reason in answer.json()["detail"]
    assert encoder.images == [], "a refused query image never reaches the Embedder"


def test_a_good_query_image_is_encoded_and_searched(search_api) -> None:
    client, encoder = search_api
    answer = client.post("/v1/search/image", files={"file": ("q.jpg", images.jpeg(2))})
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"model": "m/x", "hits": []}
    assert len(encoder.images) == 1
    timing = dict(part.split(";dur=") for part in answer.headers["Server-Timing"].split(", "))
    assert set(timing) == {"embed", "index"} and all(float(v) >= 0 for v in timing.values())


def test_a_slow_index_does_not_block_the_server(tmp_path, kafka_settings, tenant) -> None:
    """The store is called off the event loop: while one search is held inside the store,
    other requests are answered."""
    import threading

    entered, release = threading.Event(), threading.Event()

    class HeldStore(LanceStore):
        def search(self, *args, **kwargs):
            entered.set()
            release.wait(60)
            return super().search(*args, **kwargs)

    settings = make_settings(tmp_path, kafka_settings, tenant, tenant + "-b")
    app = create_app(settings)
    mount_search(app, HeldStore(tmp_path / "vectors", VectorStoreSettings()), RecordingEncoder())
    outcome: dict[str, int] = {}
    with serve_app(app) as url:
        headers = {"Authorization": f"Bearer key-{tenant}-0123456789ab"}
        held = threading.Thread(target=lambda: outcome.update(search=httpx.post(
            url + "/v1/search", json={"text": "x"}, headers=headers, timeout=90).status_code))
        held.start()
        try:
            assert entered.wait(30), "the search never reached the store"
            # A store call on the event loop would hold this request until the release
            # below, which comes only after it: it would time out instead.
            assert httpx.get(url + "/healthz", timeout=15).status_code == 200
            assert held.is_alive() and not release.is_set(), "the search was still held"
        finally:
            release.set()
            held.join(60)
    assert outcome == {"search": 200}
