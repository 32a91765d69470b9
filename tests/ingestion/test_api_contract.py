"""The API keeps its published contract: Schemathesis, every check and phase, in-process.

The app is ``create_app`` + ``mount_search`` as the Gateway builds it, served over ASGI
(no network). Any finding fails the test: an undocumented status or content type, a
body off its schema, a 405 whose ``Allow`` is wrong, a schema-valid request refused.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import strategies as st
from schemathesis.config import SchemathesisConfig
from schemathesis.engine import events, from_schema
from schemathesis.specs.openapi.media_types import unregister_all

from deeplens.settings import OpsSettings, VectorStoreSettings
from deeplens.vectors.lancedb import LanceStore
from serve_apps.search import mount_search
from tests import images
from tests.ingestion.edge_app import KEY_A, edge_app, edge_settings

# A schema says "binary" and, in words, "JPEG, PNG or WebP": what the fuzzer sends as a
# valid file must be one, big enough to search with (16 px a side at least).
IMAGE_FILES = [images.jpeg(1, 32, 24), images.png(2, 24, 32), images.webp(3)]


class ConstantEncoder:
    """The Embedder's part in a search; the contract does not depend on its vectors."""

    async def model_id(self) -> str:
        return "m/contract"

    async def text(self, text: str) -> np.ndarray:
        return np.ones(8, dtype=np.float32) / np.sqrt(8)

    async def image(self, data: bytes) -> np.ndarray:
        return np.ones(8, dtype=np.float32) / np.sqrt(8)


@pytest.fixture
def image_files():
    """What the spec's ``encoding`` names (image/jpeg, image/png, image/webp), the fuzzer
    sends as real files of those types."""
    for mime, data in zip(("image/jpeg", "image/png", "image/webp"), IMAGE_FILES,
                          strict=True):
        schemathesis.openapi.media_type(mime, st.just(data))
    yield
    unregister_all()


def run_fuzzer(app, max_examples: int) -> tuple[dict, dict]:
    """Every phase and check of Schemathesis over the app: (findings, statuses seen)."""
    config = SchemathesisConfig.from_dict({
        "seed": 23,
        "headers": {"Authorization": f"Bearer {KEY_A}"},
        "generation": {"max-examples": max_examples, "mode": "all", "database": "none"},
        "checks": {"enabled": True},
    })
    schema = schemathesis.openapi.from_asgi("/openapi.json", app, config=config)
    findings: dict[tuple[str, str], str] = {}
    seen: dict[str, set[int]] = defaultdict(set)
    for event in from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished) and event.recorder is not None:
            for interaction in event.recorder.interactions.values():
                if interaction.response is not None:
                    seen[event.recorder.label].add(interaction.response.status_code)
            for checks in event.recorder.checks.values():
                for check in checks:
                    if check.failure_info is not None:
                        failure = check.failure_info.failure
                        findings.setdefault((event.recorder.label, check.name),
                                            f"{failure.title}: {failure.message}\n"
                                            f"{check.failure_info.code_sample}")
        elif isinstance(event, events.NonFatalError | events.FatalError):
            findings[("engine", type(event).__name__)] = str(event)
    return findings, seen


def test_the_api_keeps_its_openapi_contract(tmp_path, image_files) -> None:
    # Limits out of the way: the throttles are tested on their own, and here a 429
    # would hide the answer the fuzzer is checking.
    unlimited = 10**9
    settings = edge_settings(
        tmp_path, rate_limit_per_minute=unlimited, rate_limit_burst=unlimited,
        upload_rate_limit_per_minute=unlimited, upload_rate_limit_burst=unlimited,
        failed_auth_per_minute=unlimited, failed_auth_burst=unlimited)
    settings.ops = OpsSettings(metrics_token=KEY_A)  # the fuzzer's one key opens /metrics
    app = edge_app(settings)
    mount_search(app, LanceStore(tmp_path / "vectors", VectorStoreSettings()),
                 ConstantEncoder())
    findings, seen = run_fuzzer(app, max_examples=25)
    assert not findings, "\n\n".join(f"{label} [{check}]\n{text}"
                                     for (label, check), text in sorted(findings.items()))
    # The fuzzer got past the door: every operation it can reach answered with success,
    # so what it checked includes the success bodies (images, the metrics text).
    operations = {path: methods for path, methods in app.openapi()["paths"].items()}
    labels = {f"{method.upper()} {path}" for path, methods in operations.items()
              for method in methods}
    assert labels <= set(seen), labels - set(seen)
    never_succeeded = {label for label in labels
                       if not any(200 <= code < 300 for code in seen[label])}
    # No Embedder runs here: no thumbnail is made and no vector is indexed.
    assert never_succeeded == {"GET /v1/images/{image_id}/thumbnail",
                               "GET /v1/images/{image_id}/similar"}, dict(seen)


def test_every_error_answer_has_the_one_error_body(tmp_path) -> None:
    app = edge_app(edge_settings(tmp_path))
    mount_search(app, LanceStore(tmp_path / "vectors", VectorStoreSettings()),
                 ConstantEncoder())
    spec = app.openapi()
    assert "HTTPValidationError" not in spec["components"]["schemas"]
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            for status, response in operation["responses"].items():
                if int(status) >= 400:
                    schema = response["content"]["application/json"]["schema"]
                    assert schema == {"$ref": "#/components/schemas/ErrorBody"}, (
                        method, path, status)
    with TestClient(app, headers={"Authorization": f"Bearer {KEY_A}"}) as client:
        invalid = client.get("/v1/images", params={"limit": 0})
        empty = client.post("/v1/images", files={"file": ("a.jpg", b"")})
        malformed = client.post("/v1/search", content=b"\xff", headers={
            "Content-Type": "application/json"})
    for answer, status in ((invalid, 422), (empty, 422), (malformed, 400)):
        assert answer.status_code == status and isinstance(answer.json()["detail"], str)
    assert invalid.json()["detail"].startswith("query.limit: ")


def test_a_405_lists_every_method_of_its_path(tmp_path) -> None:
    app = edge_app(edge_settings(tmp_path))
    with TestClient(app, headers={"Authorization": f"Bearer {KEY_A}"}) as client:
        one_image = client.put("/v1/images/0123")
        collection = client.patch("/v1/images")
        statuses = client.put("/v1/images/statuses")  # its own path, not an image id
    assert one_image.status_code == collection.status_code == 405
    assert set(one_image.headers["Allow"].split(", ")) == {"GET", "HEAD", "DELETE"}
    assert set(collection.headers["Allow"].split(", ")) == {"GET", "HEAD", "POST"}
    assert statuses.status_code == 405 and statuses.headers["Allow"] == "POST"
    assert isinstance(one_image.json()["detail"], str)
