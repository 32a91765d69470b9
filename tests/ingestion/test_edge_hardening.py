"""The edge refuses cheaply and leaks nothing: auth before the body, budgets, headers."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import httpx
import pytest
from fastapi.testclient import TestClient

from deeplens.auth import Authenticator, AuthError
from deeplens.settings import IngestionSettings, OpsSettings, Settings, SettingsError, load_settings
from ingestion.api import create_app
from ingestion.catalog import Catalog
from tests import images
from tests.conftest import make_settings
from tests.http_server import serve_app
from tests.ingestion.edge_app import KEY_A, FakeClock, edge_app, edge_settings


def test_unauthenticated_request_is_refused_before_its_body_is_read(tmp_path) -> None:
    """Through the app as ``create_app`` builds it: a 25 MB upload without a valid key
    is answered 401 before a single byte of its body is taken."""
    app = edge_app(edge_settings(tmp_path))
    received, sent = [], []

    async def receive():
        received.append(1)
        return {"type": "http.request", "body": b"x" * 1024, "more_body": len(received) < 4}

    async def send(message):
        sent.append(message)

    for headers in ([], [(b"authorization", b"Bearer guess-0000000000000000")]):
        received.clear(), sent.clear()
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
                 "method": "POST", "scheme": "http", "path": "/v1/images", "raw_path":
                 b"/v1/images", "root_path": "", "query_string": b"",
                 "client": ("10.0.0.9", 1), "server": ("testserver", 80),
                 "headers": [(b"content-length", b"26214400"), *headers,
                             (b"content-type", b"multipart/form-data; boundary=x")]}
        asyncio.run(app(scope, receive, send))
        assert sent[0]["status"] == 401 and not received, headers


def test_failed_authentications_are_throttled_per_address(tmp_path) -> None:
    settings = Settings(data_dir=tmp_path, api_keys="acme:acme-key-0123456789ab",
                        ingestion=IngestionSettings(failed_auth_burst=3))
    auth = Authenticator(settings)

    codes = []
    for _ in range(5):
        try:
            auth.authenticate("Bearer guess-0000000000000000", "10.0.0.7")
        except AuthError as exc:
            codes.append((exc.status, exc.headers.get("Retry-After")))
    assert [c for c, _ in codes[:3]] == [401, 401, 401]
    assert codes[3][0] == 429 and int(codes[3][1]) >= 1
    # A valid key is never held back by that address's failures (it may be a NAT).
    assert auth.authenticate("Bearer acme-key-0123456789ab", "10.0.0.7") == "acme"
    with pytest.raises(AuthError) as another_guess:
        auth.authenticate("Bearer guess-1111111111111111", "10.0.0.7")
    assert another_guess.value.status == 429
    with pytest.raises(AuthError) as elsewhere:  # another address is unaffected
        auth.authenticate("Bearer guess-1111111111111111", "10.0.0.8")
    assert elsewhere.value.status == 401


def test_short_api_keys_are_refused_without_echoing_them(monkeypatch) -> None:
    monkeypatch.setenv("DEEPLENS_API_KEYS", "acme:hunter2")
    with pytest.raises(SettingsError) as error:
        load_settings()
    assert "shorter than 16" in str(error.value) and "hunter2" not in str(error.value)


def test_reads_and_writes_have_separate_budgets(tmp_path, kafka_settings, tenant) -> None:
    settings = make_settings(tmp_path, kafka_settings, tenant, tenant + "-b",
                             ingestion=IngestionSettings(rate_limit_per_minute=60,
                                                         rate_limit_burst=3))
    with serve_app(create_app(settings)) as url:
        client = httpx.Client(base_url=url, timeout=30, headers={
            "Authorization": f"Bearer key-{tenant}-0123456789ab"})
        reads = [client.get("/v1/images").status_code for _ in range(5)]
        upload = client.post("/v1/images", files={"file": ("a.jpg", images.jpeg(31))})
    assert reads[:3] == [200, 200, 200] and 429 in reads[3:]
    assert upload.status_code == 202, "polling must not use up the upload budget"


def test_default_budgets_allow_100_uploads_a_second(tmp_path) -> None:
    """Through the app with every limit at its default, on a clock the test moves: the
    burst, then 100 uploads in the next second all pass; one more at once does not."""
    app = edge_app(edge_settings(tmp_path))
    clock = FakeClock()
    app.state.auth.clock = clock
    data = images.jpeg(7)
    burst = app.state.services.settings.ingestion.upload_rate_limit_burst
    with TestClient(app, headers={"Authorization": f"Bearer {KEY_A}"}) as client:
        def upload() -> int:
            return client.post("/v1/images", files={"file": ("a.jpg", data)}).status_code

        at_once = [upload() for _ in range(burst)]
        next_second = []
        for i in range(1, 101):
            clock.now = 1000.0 + i / 100
            next_second.append(upload())
        one_more = client.post("/v1/images", files={"file": ("a.jpg", data)})
    assert at_once == [202] * burst
    assert next_second == [202] * 100
    assert one_more.status_code == 429 and one_more.headers["Retry-After"] == "1"


def test_page_headers_and_no_cdn(tmp_path, kafka_settings, tenant) -> None:
    settings = make_settings(tmp_path, kafka_settings, tenant, tenant + "-b")
    with serve_app(create_app(settings)) as url:
        page = httpx.get(url + "/")
        script = httpx.get(url + "/app.js")
    csp = page.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in csp and "script-src 'self'" in csp
    assert page.headers["x-frame-options"] == "DENY"
    assert "<script>" not in page.text and '<script src="/app.js">' in page.text
    assert script.status_code == 200 and "sessionStorage" in script.text
    assert "localStorage.setItem" not in script.text
    assert "cdn" not in page.text.lower()


def test_metrics_need_the_operator_token_when_one_is_set(tmp_path, kafka_settings,
                                                         tenant) -> None:
    settings = make_settings(tmp_path, kafka_settings, tenant, tenant + "-b",
                             ops=OpsSettings(metrics_token="scrape-token-0123456789"))
    with serve_app(create_app(settings)) as url:
        anonymous = httpx.get(url + "/metrics")
        tenant_key = httpx.get(url + "/metrics", headers={
            "Authorization": f"Bearer key-{tenant}-0123456789ab"})
        operator = httpx.get(url + "/metrics", headers={
            "Authorization": "Bearer scrape-token-0123456789"})
    assert anonymous.status_code == tenant_key.status_code == 403
    assert operator.status_code == 200 and "deeplens_uploads_total" in operator.text
    assert tenant not in operator.text, "nothing tenant-identifying on /metrics"


def test_a_retry_while_the_first_upload_awaits_its_ack_is_told_to_wait(
        tmp_path, kafka_settings, tenant) -> None:
    """A row not yet acknowledged by the broker is never a duplicate_of target: the first
    request may still fail and remove it, which would lose the retry's image."""
    import hashlib

    from deeplens.events import utcnow

    settings = make_settings(tmp_path, kafka_settings, tenant, tenant + "-b")
    data = images.jpeg(41)
    app = create_app(settings)  # creates the data dir and the catalog
    catalog = Catalog(settings.effective_catalog_url)
    row = {"image_id": "first" + "0" * 27, "tenant_id": tenant,
           "sha256": hashlib.sha256(data).hexdigest(), "original_file_name": "a.jpg",
           "storage_provider": "local", "storage_path": f"{tenant}/x.jpg", "file_size": 1,
           "mime_type": "image/jpeg", "status": "uploaded", "uploaded_at": utcnow(),
           "pending": True}
    catalog.insert(row)
    with serve_app(app) as url:
        client = httpx.Client(base_url=url, timeout=30, headers={
            "Authorization": f"Bearer key-{tenant}-0123456789ab"})
        retry = client.post("/v1/images", files={"file": ("a.jpg", data)})
        assert retry.status_code == 503 and int(retry.headers["Retry-After"]) >= 1
        # The first request died long ago (its replica crashed): the row is stale, and
        # this request publishes it again, under its id (never a second image).
        catalog.delete(tenant, row["image_id"])
        catalog.insert(row | {"uploaded_at": utcnow() - timedelta(minutes=10)})
        later = client.post("/v1/images", files={"file": ("a.jpg", data)})
        assert later.status_code == 202 and later.json()["duplicate_of"] is None
        assert later.json()["image_id"] == row["image_id"]
        accepted = client.get(f"/v1/images/{later.json()['image_id']}").json()
    assert accepted["status"] == "uploaded"
    assert catalog.get(tenant, row["image_id"]).pending is None


def test_openapi_declares_every_refusal(api) -> None:
    spec = httpx.get(api.url + "/openapi.json").json()
    for path, operations in spec["paths"].items():
        if not path.startswith("/v1/"):
            continue
        for method, operation in operations.items():
            codes = set(operation["responses"])
            assert {"401", "429"} <= codes, (method, path, codes)
    upload = spec["paths"]["/v1/images"]["post"]["responses"]
    assert {"202", "413", "415", "422", "503"} <= set(upload)
    assert "404" in spec["paths"]["/v1/images/{image_id}"]["get"]["responses"]


def test_usage_has_no_meaningless_fields(api) -> None:
    with api.client() as client:
        client.post("/v1/images", files={"file": ("a.jpg", images.jpeg(51))})
        usage = client.get("/v1/usage", params={"hours": 2}).json()
    assert set(usage) == {"tenant_id", "since", "hours", "totals"}
    assert "hour" not in usage["totals"]
    assert set(usage["totals"]) == {"uploads", "upload_bytes", "images_embedded",
                                    "embedding_ms", "searches"}


@pytest.mark.parametrize("replicas", [1, 2, 3, 4])
def test_rate_limits_are_shared_out_among_gateway_replicas(tmp_path, replicas) -> None:
    """One Authenticator per Gateway replica, as Serve runs them, requests spread evenly
    over them at twice the tenant's rate for a minute: together they admit what the
    setting allows (burst + one minute's rate), not that times the replicas."""
    from deeplens.settings import ServeSettings

    clock = FakeClock(0.0)
    settings = Settings(data_dir=tmp_path, api_keys="acme:acme-key-0123456789ab",
                        serve=ServeSettings(gateway_replicas=replicas),
                        ingestion=IngestionSettings(upload_rate_limit_per_minute=600,
                                                    upload_rate_limit_burst=40))
    fleet = [Authenticator(settings, clock=clock) for _ in range(replicas)]
    admitted = 0
    for i in range(1200):  # 20 a second for 60 s; the tenant may have 10 a second
        clock.now = i / 20
        try:
            fleet[i % replicas].authenticate("Bearer acme-key-0123456789ab", "10.0.0.1",
                                             "write")
            admitted += 1
        except AuthError as refused:
            assert refused.status == 429
    allowed = 40 + 600 * (clock.now / 60)  # the setting: burst + its rate over the window
    assert allowed - 2 * replicas <= admitted <= allowed


@pytest.mark.parametrize("data", [images.zip_padded_polyglot(), images.zip_in_png_chunk()],
                         ids=["zip-padded-past-1MiB-after-a-jpeg", "zip-in-a-png-chunk"])
def test_polyglots_are_refused_by_structure_not_by_a_window(api, data) -> None:
    """Issue 23, item 6: both files open with ``zipfile``; both are refused, and nothing
    of them is stored or catalogued."""
    with api.client() as client:
        answer = client.post("/v1/images", files={"file": ("holiday.jpg", data)})
        listed = client.get("/v1/images").json()
    assert answer.status_code == 415, answer.text
    assert "ZIP archive" in answer.json()["detail"]
    assert listed["items"] == []
