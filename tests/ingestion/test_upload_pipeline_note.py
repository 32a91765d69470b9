"""Uploads are accepted while the pipeline is stalled (the log keeps them), and the
answer says so: ``pipeline`` carries the Gateway's last verdict (issue 32)."""

from __future__ import annotations

from fastapi.testclient import TestClient

from tests import images
from tests.ingestion.edge_app import KEY_A, edge_app, edge_settings

STALLED = {"state": "degraded", "reasons": ["stage indexing has no live actor for 40 s",
                                            "waiting for a node with resource gpu_pool "
                                            "(for the Embedder)"]}


def test_upload_answers_carry_the_pipeline_state(tmp_path) -> None:
    app = edge_app(edge_settings(tmp_path))
    with TestClient(app, headers={"Authorization": f"Bearer {KEY_A}"}) as client:
        plain = client.post("/v1/images", files={"file": ("a.jpg", images.jpeg(1))})
        assert plain.status_code == 202 and plain.json()["pipeline"] is None, \
            "no watch (no Gateway): unknown, not ok"
        note = dict(STALLED)
        app.state.services.pipeline = lambda: note
        fresh = client.post("/v1/images", files={"file": ("b.jpg", images.jpeg(2))})
        again = client.post("/v1/images", files={"file": ("a.jpg", images.jpeg(1))})
        batch = client.post("/v1/images/batch", files=[("files", ("c.jpg", images.jpeg(3)))])
        assert again.json()["duplicate_of"], again.json()
        for answer in (fresh, again, batch):
            assert answer.status_code in (200, 202), answer.text
            assert answer.json()["pipeline"] == STALLED, answer.json()
        note.update(state="ok", reasons=[])
        ok = client.post("/v1/images", files={"file": ("d.jpg", images.jpeg(4))})
        assert ok.json()["pipeline"] == {"state": "ok", "reasons": []}
    spec = app.openapi()["components"]["schemas"]
    assert "degraded" in spec["UploadOut"]["properties"]["pipeline"]["description"]
