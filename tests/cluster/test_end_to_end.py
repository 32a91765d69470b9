"""The whole pipeline over HTTP: upload -> indexed -> search and duplicates, two tenants."""

from __future__ import annotations

import io
import time

import httpx
import pytest
from PIL import Image

from cluster.samples import jpeg_bytes, scene
from cluster.stack import LocalStack
from deeplens.broker import free_port
from deeplens.settings import IngestionSettings, ModelSettings, ServeSettings, Settings

TINY = ModelSettings(name="deeplens-tiny", pretrained="random")


def wait_indexed(client: httpx.Client, ids: list[str], timeout_s: float = 180) -> dict[str, dict]:
    deadline = time.monotonic() + timeout_s
    rows: dict[str, dict] = {}
    while time.monotonic() < deadline:
        rows = {i: client.get(f"/v1/images/{i}").json() for i in ids}
        if all(r["status"] in ("indexed", "failed") for r in rows.values()):
            break
        time.sleep(0.5)
    return rows


def wait_duplicates(client: httpx.Client, image_id: str, timeout_s: float = 60,
                    linked_to: str | None = None) -> dict:
    """The image's duplicates once dedup ran for it (and, if given, once it is linked to
    ``linked_to``: of two copies processed at once, the one that looked second reports the
    pair, so the first one's own answer may still be empty)."""
    deadline = time.monotonic() + timeout_s
    body: dict = {}
    while time.monotonic() < deadline:
        body = client.get(f"/v1/images/{image_id}/duplicates").json()
        if body.get("tiers") and (linked_to is None or any(
                m["image_id"] == linked_to for m in body["matches"])):
            return body
        time.sleep(0.5)
    return body


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def stack(request, tmp_path_factory, broker, ray_session):
    """The local stack, once on its default SQLite catalog and once on PostgreSQL, the
    cluster's catalog (its column widths, locks and isolation are not SQLite's)."""
    import uuid

    from ray import serve

    from deeplens.broker import free_port as port
    from deeplens.kafka import admin_client
    from deeplens.settings import KafkaSettings
    from deeplens.topics import TopicNames, ensure_topics

    prefix = f"e2e{uuid.uuid4().hex[:6]}."
    kafka = KafkaSettings(bootstrap_servers=broker,
                          one_record_per_batch=True, topic_prefix=prefix, poll_timeout_s=0.2,
                          session_timeout_ms=6000, batch_size=16)
    ensure_topics(admin_client(kafka), TopicNames(prefix))
    catalog = {}
    if request.param == "postgresql":
        from tests.postgres import fresh_database

        catalog["catalog_url"] = fresh_database(request.getfixturevalue("postgres_server_url"))
    settings = Settings(
        **catalog, data_dir=tmp_path_factory.mktemp("e2e"), kafka=kafka, model=TINY,
        api_keys="acme:key-acme-0123456789ab,globex:key-globex-0123456789ab",
        serve=ServeSettings(port=free_port(), num_cpus=0.25, max_batch_size=16),
        ingestion=IngestionSettings(rate_limit_per_minute=100_000, rate_limit_burst=10_000))
    serve.shutdown()  # the stack starts Serve with its own HTTP port
    try:
        with LocalStack(settings) as running:
            yield running
    finally:
        serve.start(http_options={"host": "127.0.0.1", "port": port()})


def client(stack, key: str) -> httpx.Client:
    return httpx.Client(base_url=stack.url, headers={"Authorization": f"Bearer {key}"},
                        timeout=60)


def test_upload_index_search_and_duplicates(stack) -> None:
    acme, globex = client(stack, "key-acme-0123456789ab"), client(stack, "key-globex-0123456789ab")
    photos = [jpeg_bytes(scene(100 + i)) for i in range(6)]
    ids = [acme.post("/v1/images", files={"file": (f"p{i}.jpg", p)}).json()["image_id"]
           for i, p in enumerate(photos)]
    # The same picture with a comment segment added: other bytes, the same compressed
    # picture (a JPEG's exact fingerprint, jc1, leaves metadata out).
    comment = b"re-tagged by a photo manager"
    exact_copy = io.BytesIO(photos[0][:2] + b"\xff\xfe" + (len(comment) + 2).to_bytes(2, "big")
                            + comment + photos[0][2:])
    near_copy = jpeg_bytes(Image.open(io.BytesIO(photos[1])), quality=35)
    exact_id = acme.post("/v1/images", files={"file": ("copy.jpg", exact_copy.getvalue())}
                         ).json()["image_id"]
    near_id = acme.post("/v1/images", files={"file": ("near.jpg", near_copy)}).json()["image_id"]
    globex_id = globex.post("/v1/images", files={"file": ("g.jpg", photos[2])}).json()["image_id"]

    rows = wait_indexed(acme, [*ids, exact_id, near_id])
    assert {r["status"] for r in rows.values()} == {"indexed"}, rows
    assert wait_indexed(globex, [globex_id])[globex_id]["status"] == "indexed"

    # Image -> image: the uploaded picture comes back first, with (about) full similarity.
    found = acme.post("/v1/search/image", files={"file": ("q.jpg", photos[3])},
                      data={"k": "5"}).json()
    assert found["model"] == "deeplens-tiny/random-init-seed0"
    assert found["hits"][0]["image_id"] == ids[3] and found["hits"][0]["score"] > 0.999
    assert found["hits"][0]["original_file_name"] == "p3.jpg"
    assert len(found["hits"]) == 5

    text = acme.post("/v1/search", json={"text": "a sunset over the sea", "k": 3}).json()
    assert len(text["hits"]) == 3 and {h["image_id"] for h in text["hits"]} <= set(rows)

    similar = acme.get(f"/v1/images/{ids[4]}/similar", params={"k": 20}).json()
    assert ids[4] not in {h["image_id"] for h in similar["hits"]}
    assert len(similar["hits"]) == len(rows) - 1

    exact = wait_duplicates(acme, exact_id, linked_to=ids[0])
    assert {"image_id": ids[0], "kind": "exact", "score": 1.0} in exact["matches"]
    assert exact["tiers"] == ["exact", "near"]  # random weights: the similar tier is off
    near = wait_duplicates(acme, near_id, linked_to=ids[1])
    assert any(m["image_id"] == ids[1] and m["kind"] == "near" for m in near["matches"])
    assert any(m["image_id"] == near_id
               for m in wait_duplicates(acme, ids[1], linked_to=near_id)["matches"])

    # The other tenant sees none of it, on any route.
    for path in (f"/v1/images/{ids[0]}", f"/v1/images/{ids[0]}/duplicates",
                 f"/v1/images/{ids[0]}/similar", f"/v1/images/{ids[0]}/content"):
        assert globex.get(path).status_code == 404, path
    theirs = globex.post("/v1/search/image", files={"file": ("q.jpg", photos[2])}).json()
    assert [h["image_id"] for h in theirs["hits"]] == [globex_id]
    assert globex.post("/v1/search", json={"text": "anything"}).json()["hits"][0]["image_id"] \
        == globex_id
    assert [m for m in wait_duplicates(globex, globex_id)["matches"]] == []


def test_bad_queries_are_422(stack) -> None:
    acme = client(stack, "key-acme-0123456789ab")
    assert acme.post("/v1/search", json={"text": "   "}).status_code == 422
    assert acme.post("/v1/search", json={"text": "cat", "k": 0}).status_code == 422
    assert acme.post("/v1/search", json={"text": "cat", "k": 1000}).status_code == 422
    bad = acme.post("/v1/search/image", files={"file": ("x.jpg", b"\xff\xd8\xffjunk" * 20)})
    assert bad.status_code == 422 and "corrupt" in bad.json()["detail"]  # by its header
    assert httpx.post(stack.url + "/v1/search", json={"text": "cat"}).status_code == 401


def test_delete_drops_the_vector(stack) -> None:
    acme = client(stack, "key-acme-0123456789ab")
    image_id = acme.post("/v1/images", files={"file": ("d.jpg", jpeg_bytes(scene(300)))}
                         ).json()["image_id"]
    assert wait_indexed(acme, [image_id])[image_id]["status"] == "indexed"
    assert acme.get(f"/v1/images/{image_id}/similar").status_code == 200
    assert acme.delete(f"/v1/images/{image_id}").status_code == 204
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if acme.get(f"/v1/images/{image_id}/similar").status_code == 404:
            break
        time.sleep(0.5)
    assert acme.get(f"/v1/images/{image_id}/similar").status_code == 404


def test_bulk_ingest_resumes_and_search_cli(stack, tmp_path, capsys) -> None:
    from cluster.ingest import IngestState, image_files, ingest
    from deeplens.cli import main

    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    for i in range(3):
        (folder / ("sub" if i else "") / f"{i}.jpg").write_bytes(jpeg_bytes(scene(700 + i)))
    (folder / "notes.jpg").write_bytes(b"this is text, not a picture")
    (folder / "readme.txt").write_text("ignored: not an image suffix")
    files = list(image_files([str(folder)]))
    assert len(files) == 4
    state = IngestState(tmp_path / "state.json")
    out = io.StringIO()
    first = ingest(stack.url, "key-acme-0123456789ab", files, state, concurrency=2, wait=True,
                   timeout_s=120, out=out)
    assert first["uploaded"] == 3 and first["rejected"] == 1
    assert first.get("status_indexed") == 3, first
    assert list(first["failed_files"]) == [str(folder / "notes.jpg")]
    assert "415" in first["failed_files"][str(folder / "notes.jpg")]
    again = ingest(stack.url, "key-acme-0123456789ab", files, IngestState(tmp_path / "state.json"),
                   concurrency=2, wait=False, timeout_s=5, out=io.StringIO())
    assert again["skipped"] == 3 and again["uploaded"] == 0, "resumed: nothing sent twice"

    assert main(["search", "--api", stack.url, "--key", "key-acme-0123456789ab", "-k", "2",
                 "--image", str(files[0])]) == 0
    printed = capsys.readouterr().out
    assert "model deeplens-tiny/random-init-seed0" in printed and "  1. +1.0000" in printed


def test_metrics_after_a_run(stack) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    acme = client(stack, "key-acme-0123456789ab")
    ids = [acme.post("/v1/images", files={"file": (f"m{i}.jpg", jpeg_bytes(scene(900 + i)))}
                     ).json()["image_id"] for i in range(2)]
    assert {r["status"] for r in wait_indexed(acme, ids).values()} == {"indexed"}
    text = httpx.get(stack.url + "/metrics", timeout=30).text
    samples: dict[str, list] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append(sample)

    def value(name: str, **labels: str) -> float:
        return sum(s.value for s in samples.get(name, [])
                   if all(s.labels.get(k) == v for k, v in labels.items()))

    assert value("deeplens_topic_messages_total", topic="images.uploaded") > 0
    assert value("deeplens_topic_messages_total", topic="images.indexed") > 0
    assert "deeplens_consumer_lag" in samples  # zero is fine once caught up
    assert {s.labels["group"] for s in samples["deeplens_consumer_lag"]} >= {
        "validation", "embedding", "indexing", "dedup", "projection"}
    for stage in ("validation", "embedding", "indexing", "dedup", "projection"):
        assert value("deeplens_stage_handled_total", stage=stage) > 0, stage
        assert value("deeplens_stage_processing_seconds_total", stage=stage) > 0, stage
        assert value("deeplens_stage_actors", stage=stage) >= 1, stage
    assert "deeplens_stage_failed_total" in samples
    assert value("deeplens_embedder_items_total") > 0 and value("deeplens_embedder_batches_total") > 0
    assert value("deeplens_upload_to_indexed_seconds_count") >= len(ids)
    assert value("deeplens_upload_to_indexed_seconds_sum") > 0
    assert value("deeplens_uploads_total", outcome="accepted") > 0


def test_status_command(stack, capsys, monkeypatch) -> None:
    from deeplens.cli import main

    monkeypatch.setenv("DEEPLENS_DATA_DIR", str(stack.settings.data_dir))
    if stack.settings.catalog_url:  # the per-tenant table comes from the catalog
        monkeypatch.setenv("DEEPLENS_CATALOG_URL", stack.settings.catalog_url)
    assert main(["status", "--api", stack.url]) == 0
    out = capsys.readouterr().out
    assert "validation" in out and "indexing" in out and "error %" in out
    assert "pipeline: ok; Embedder replicas: 1" in out, out
    ready = httpx.get(stack.url + "/readyz", timeout=30)
    assert ready.status_code == 200 and ready.json()["reasons"] == []
    assert all(s["live"] == s["wanted"] for s in ready.json()["stages"].values())
    acme = next(line for line in out.splitlines() if line.startswith("acme"))
    assert int(acme.split()[4]) > 0, "acme has indexed images"


def test_usage_per_tenant_and_hour(stack) -> None:
    acme = client(stack, "key-acme-0123456789ab")
    acme.post("/v1/search", json={"text": "metered", "k": 1})
    deadline = time.monotonic() + 60
    body: dict = {}
    while time.monotonic() < deadline:
        body = acme.get("/v1/usage", params={"hours": 2}).json()
        if body["totals"]["searches"] >= 1 and body["totals"]["images_embedded"] >= 8:
            break
        time.sleep(0.5)
    totals = body["totals"]
    assert body["tenant_id"] == "acme" and body["hours"]
    indexed = client(stack, "key-acme-0123456789ab").get("/v1/images", params={"limit": 500}).json()
    assert totals["uploads"] >= len(indexed["items"]) > 0, "every upload billed"
    assert totals["upload_bytes"] > 0 and totals["embedding_ms"] > 0
    assert totals["images_embedded"] >= 8 and totals["searches"] >= 1
    globex = client(stack, "key-globex-0123456789ab").get("/v1/usage").json()["totals"]
    assert globex["uploads"] == 1
