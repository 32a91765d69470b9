"""The upload edge over real HTTP, with a real broker behind it."""

from __future__ import annotations

import hashlib

import httpx
import pytest

from deeplens.events import ImageUploaded
from deeplens.settings import IngestionSettings
from ingestion.api import create_app
from tests import images
from tests.conftest import make_settings
from tests.http_server import serve_app
from tests.kafka_helpers import read_topic


def upload(client: httpx.Client, data: bytes, name: str = "photo.jpg",
           content_type: str = "image/jpeg") -> httpx.Response:
    return client.post("/v1/images", files={"file": (name, data, content_type)})


def test_upload_stores_catalogues_and_publishes(api) -> None:
    data = images.jpeg(1)
    with api.client() as client:
        answer = upload(client, data, name="cat.jpg")
        assert answer.status_code == 202, answer.text
        body = answer.json()
        assert body["tenant_id"] == api.tenant_a and body["status"] == "uploaded"
        assert body["sha256"] == hashlib.sha256(data).hexdigest()
        assert body["duplicate_of"] is None
        content = client.get(f"/v1/images/{body['image_id']}/content")
        assert content.content == data and content.headers["content-type"] == "image/jpeg"
        status = client.get(f"/v1/images/{body['image_id']}").json()
        assert status["status"] == "uploaded" and status["timestamps"]["uploaded_at"]
    [event] = read_topic(api.settings.kafka, "images.uploaded", expect=1)
    assert isinstance(event, ImageUploaded)
    assert (event.image_id, event.tenant_id, event.original_file_name) == (
        body["image_id"], api.tenant_a, "cat.jpg")
    assert (event.file_size, event.mime_type, event.storage_provider) == (
        len(data), "image/jpeg", "local")
    assert (api.settings.storage_root / event.storage_path).read_bytes() == data


def test_same_bytes_twice_answer_with_the_first_image(api) -> None:
    data = images.png(2)
    with api.client() as client:
        first = upload(client, data, "a.png").json()
        second = upload(client, data, "b.png").json()
        other_tenant = upload(api.client(api.key_b), data, "c.png").json()
    assert second["image_id"] == first["image_id"] == second["duplicate_of"]
    assert other_tenant["duplicate_of"] is None  # tenants never share dedup state
    events = read_topic(api.settings.kafka, "images.uploaded", expect=3, timeout_s=5)
    assert len(events) == 2, "the pipeline runs once per tenant, not per upload"


@pytest.mark.parametrize(("data", "name", "status"), [
    (b"", "empty.jpg", 422),
    (bytes(range(256)) * 8, "random.jpg", 415),
    (images.HTML, "page.jpg", 415),
    (images.SVG, "vector.jpg", 415),
    (images.PHP, "shell.jpg", 415),
    (images.zip_polyglot(), "polyglot.jpg", 415),
])
def test_bad_uploads_are_refused_at_the_edge(api, data, name, status) -> None:
    with api.client() as client:
        answer = upload(client, data, name)
    assert answer.status_code == status, answer.text
    assert answer.json()["detail"]


def test_png_named_jpg_is_taken_for_what_it_is(api) -> None:
    with api.client() as client:
        body = upload(client, images.png(3), "lies.jpg", "image/jpeg").json()
        row = client.get(f"/v1/images/{body['image_id']}").json()
    assert row["mime_type"] == "image/png" and row["original_file_name"] == "lies.jpg"


def test_traversal_file_name_is_metadata_only(api) -> None:
    with api.client() as client:
        body = upload(client, images.jpeg(4), "../../../../etc/passwd.jpg").json()
        row = client.get(f"/v1/images/{body['image_id']}").json()
    assert row["original_file_name"] == "../../../../etc/passwd.jpg"
    [event] = read_topic(api.settings.kafka, "images.uploaded", expect=1)
    assert ".." not in event.storage_path and event.storage_path.startswith(api.tenant_a + "/")
    assert (api.settings.storage_root / event.storage_path).is_file()


def test_auth(api) -> None:
    anonymous = httpx.post(api.url + "/v1/images", files={"file": ("a.jpg", images.jpeg())})
    assert anonymous.status_code == 401
    wrong = httpx.get(api.url + "/v1/images/x", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    assert httpx.get(api.url + "/healthz").status_code == 200
    assert httpx.get(api.url + "/metrics").status_code == 200  # from this host
    assert httpx.get(api.url + "/docs").status_code == 404  # off by default: CDN assets
    assert httpx.get(api.url + "/openapi.json").status_code == 200


def test_other_tenants_image_is_a_404_like_a_missing_one(api) -> None:
    with api.client() as client:
        image_id = upload(client, images.jpeg(5)).json()["image_id"]
    with api.client(api.key_b) as intruder:
        for path in (f"/v1/images/{image_id}", f"/v1/images/{image_id}/content"):
            theirs, missing = intruder.get(path), intruder.get(path.replace(image_id, "0" * 32))
            assert theirs.status_code == missing.status_code == 404
            assert theirs.json() == missing.json()
        assert intruder.delete(f"/v1/images/{image_id}").status_code == 404
    with api.client() as client:
        assert client.get(f"/v1/images/{image_id}").status_code == 200


def test_thumbnails_are_served_to_their_owner_only_and_deleted_with_the_image(api) -> None:
    from deeplens.storage import make_storage, thumbnail_path

    with api.client() as client:
        image_id = upload(client, images.jpeg(7)).json()["image_id"]
        [uploaded] = read_topic(api.settings.kafka, "images.uploaded", expect=1)
        path = f"/v1/images/{image_id}/thumbnail"
        early = client.get(path)  # not embedded yet: nothing to serve
        assert early.status_code == 404 and "uploaded" in early.json()["detail"]
        thumb = images.jpeg(7, 48, 36)  # what the embedding feeder stores
        make_storage(api.settings).put(thumbnail_path(uploaded.storage_path), thumb)
        served = client.get(path)
        assert served.status_code == 200 and served.content == thumb
        assert served.headers["content-type"] == "image/jpeg"
    with api.client(api.key_b) as intruder:
        theirs = intruder.get(path)
        missing = intruder.get(path.replace(image_id, "0" * 32))
        assert theirs.status_code == missing.status_code == 404
        assert theirs.json() == missing.json()
    with api.client() as client:
        assert client.delete(f"/v1/images/{image_id}").status_code == 204
    assert not (api.settings.storage_root / thumbnail_path(uploaded.storage_path)).exists()


def test_delete_removes_bytes_and_row_and_publishes(api) -> None:
    with api.client() as client:
        image_id = upload(client, images.jpeg(6)).json()["image_id"]
        [uploaded] = read_topic(api.settings.kafka, "images.uploaded", expect=1)
        assert client.delete(f"/v1/images/{image_id}").status_code == 204
        assert client.get(f"/v1/images/{image_id}").status_code == 404
    assert not (api.settings.storage_root / uploaded.storage_path).exists()
    [deleted] = read_topic(api.settings.kafka, "images.deleted", expect=1)
    assert deleted.image_id == image_id and deleted.tenant_id == api.tenant_a


def _chunks(total: int, size: int = 256 * 1024):
    boundary = b"--deeplens-test"
    yield boundary + b'\r\nContent-Disposition: form-data; name="file"; filename="big.jpg"\r\n'
    yield b"Content-Type: image/jpeg\r\n\r\n\xff\xd8\xff"
    sent = 0
    while sent < total:
        yield b"\x00" * size
        sent += size
    yield b"\r\n" + boundary + b"--\r\n"


def test_oversized_body_without_content_length_is_413(tmp_path, kafka_settings, tenant) -> None:
    settings = make_settings(tmp_path, kafka_settings, tenant, tenant + "-b",
                             ingestion=IngestionSettings(max_upload_bytes=1024 * 1024))
    with serve_app(create_app(settings)) as url:
        headers = {"Authorization": f"Bearer key-{tenant}-0123456789ab",
                   "Content-Type": "multipart/form-data; boundary=deeplens-test"}
        try:
            answer = httpx.post(url + "/v1/images", content=_chunks(8 * 1024 * 1024),
                                headers=headers, timeout=30)
            assert "content-length" not in answer.request.headers
            assert answer.status_code == 413, answer.text
        except (httpx.WriteError, httpx.RemoteProtocolError):
            pass  # the server may close before the client finishes sending: also a refusal
        # Declared too large: refused before reading.
        declared = httpx.post(url + "/v1/images", content=b"x" * (2 * 1024 * 1024),
                              headers=headers)
        assert declared.status_code == 413
    assert not list((settings.storage_root).rglob("*.jpg")), "nothing was stored"


def test_rate_limit_answers_429_with_retry_after(tmp_path, kafka_settings, tenant) -> None:
    settings = make_settings(tmp_path, kafka_settings, tenant, tenant + "-b",
                             ingestion=IngestionSettings(rate_limit_per_minute=60,
                                                         rate_limit_burst=3))
    with serve_app(create_app(settings)) as url:
        client = httpx.Client(base_url=url, headers={"Authorization": f"Bearer key-{tenant}-0123456789ab"})
        codes = [client.get("/v1/images/none").status_code for _ in range(5)]
        limited = client.get("/v1/images/none")
        other = httpx.get(url + "/v1/images/none",
                          headers={"Authorization": f"Bearer key-{tenant}-b-0123456789ab"})
    assert codes[:3] == [404, 404, 404] and 429 in codes[3:]
    assert limited.status_code == 429 and int(limited.headers["Retry-After"]) >= 1
    assert other.status_code == 404, "each tenant has its own bucket"


def test_broker_down_gives_503_and_leaves_no_orphan(tmp_path, kafka_settings, tenant) -> None:
    from deeplens.broker import free_port

    dead = kafka_settings.model_copy(update={"bootstrap_servers": f"127.0.0.1:{free_port()}"})
    settings = make_settings(tmp_path, dead, tenant, tenant + "-b",
                             ingestion=IngestionSettings(ack_timeout_s=2))
    with serve_app(create_app(settings)) as url:
        client = httpx.Client(base_url=url, headers={"Authorization": f"Bearer key-{tenant}-0123456789ab"},
                              timeout=30)
        answer = upload(client, images.jpeg(7))
        assert answer.status_code == 503, answer.text
        assert "Retry-After" in answer.headers
        again = upload(client, images.jpeg(7))  # no half-kept row turns this into a duplicate
        assert again.status_code == 503
    assert not [p for p in settings.storage_root.rglob("*") if p.is_file()]
    from ingestion.catalog import Catalog

    assert Catalog(settings.effective_catalog_url).counts() == {}


def test_list_images_pages_newest_first(api) -> None:
    with api.client() as client:
        ids = [upload(client, images.jpeg(100 + i)).json()["image_id"] for i in range(5)]
        first = client.get("/v1/images", params={"limit": 3}).json()
        second = client.get("/v1/images", params={"limit": 3, "after": first["next_after"]}).json()
        theirs = api.client(api.key_b).get("/v1/images").json()
    listed = [r["image_id"] for r in first["items"] + second["items"]]
    assert listed == list(reversed(ids))
    assert second["next_after"] is None and first["counts"] == {"uploaded": 5}
    assert theirs["items"] == [] and theirs["counts"] == {}
