"""With no Embedder replica to take a query (its node gone), search answers 503 with
Retry-After within the query deadline instead of hanging."""

from __future__ import annotations

import asyncio

import httpx

from deeplens.settings import VectorStoreSettings
from deeplens.vectors.lancedb import LanceStore
from ingestion.api import create_app
from serve_apps.search import HandleEncoder, mount_search
from tests import images
from tests.conftest import make_settings
from tests.http_server import serve_app


class NoReplica:
    """A Serve response that never resolves (Serve holds requests while no replica is
    running); records its cancellation."""

    cancelled = 0

    def __await__(self):  # type: ignore[no-untyped-def]
        return asyncio.Event().wait().__await__()

    def cancel(self) -> None:
        NoReplica.cancelled += 1


class Method:
    def remote(self, *args: object) -> NoReplica:
        return NoReplica()


class GoneEmbedder:
    model_id = embed_text = embed = Method()


def test_search_answers_503_when_no_replica_answers(tmp_path, kafka_settings, tenant) -> None:
    settings = make_settings(tmp_path, kafka_settings, tenant, tenant + "-b")
    app = create_app(settings)
    mount_search(app, LanceStore(tmp_path / "vectors", VectorStoreSettings()),
                 HandleEncoder(GoneEmbedder(), timeout_s=0.3))
    NoReplica.cancelled = 0
    with serve_app(app) as url:
        client = httpx.Client(base_url=url, timeout=30, headers={
            "Authorization": f"Bearer key-{tenant}-0123456789ab"})
        text = client.post("/v1/search", json={"text": "a dog"})
        image = client.post("/v1/search/image", files={"file": ("q.jpg", images.jpeg(3))})
    for answer in (text, image):
        assert answer.status_code == 503, answer.text
        assert answer.headers["Retry-After"] == "5"
        assert "no Embedder replica answered within 0.3 s" in answer.json()["detail"]
    assert NoReplica.cancelled == 2, "the abandoned requests are cancelled, not left queued"
    assert "503" in app.openapi()["paths"]["/v1/search"]["post"]["responses"]
