"""``deeplens import`` against a real broker: a folder with WebDataset shards, an
S3-protocol server (moto), a second run that adds nothing, a run killed mid-import that
the next run finishes, and the admin route that only the admin token opens."""

from __future__ import annotations

import io
import tarfile
import time
from datetime import timedelta
from pathlib import Path

import boto3
import httpx
import pytest
import sqlalchemy as sa

from deeplens.events import ImageUploaded, utcnow
from deeplens.kafka import EventProducer
from deeplens.settings import Settings
from deeplens.storage import make_storage
from ingestion.api import create_app
from ingestion.bulk_import import BULK_TOPIC, Importer, pipeline_counts
from ingestion.catalog import Catalog
from ingestion.import_jobs import JobStore, import_jobs
from tests import images
from tests.deeplens.test_storage_s3 import s3_endpoint  # noqa: F401 - the moto fixture
from tests.http_server import serve_app
from tests.kafka_helpers import read_topic


def make_folder(root, n_files: int, n_in_shard: int) -> None:
    (root / "b").mkdir(parents=True)
    for i in range(n_files):
        (root / ("b" if i % 2 else "") / f"img{i:03d}.jpg").write_bytes(images.jpeg(i))
    (root / "notes.txt").write_text("not an image")
    (root / "broken.png").write_bytes(b"\x89PNG not really")
    with tarfile.open(root / "shard-000.tar", "w") as shard:  # WebDataset layout
        for i in range(n_in_shard):
            for suffix, data in ((".jpg", images.jpeg(100 + i)), (".json", b"{}")):
                info = tarfile.TarInfo(f"{i:06d}{suffix}")
                info.size = len(data)
                shard.addfile(info, io.BytesIO(data))


def importer_for(settings: Settings, producer=None) -> Importer:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    catalog = Catalog(settings.effective_catalog_url)
    return Importer(settings, catalog, make_storage(settings),
                    producer or EventProducer(settings.kafka, prefix=settings.kafka.topic_prefix),
                    JobStore(catalog.engine))


def run_once(importer: Importer, tenant: str, source: str):
    job = importer.jobs.start(tenant, str(Path(source).resolve()), False)
    assert job is not None
    return importer.run(job)


def test_folder_import_references_in_place_and_a_rerun_adds_nothing(
        tmp_path, kafka_settings, tenant) -> None:
    root = tmp_path / "shared"
    make_folder(root, n_files=6, n_in_shard=3)
    settings = Settings(data_dir=tmp_path / "data", kafka=kafka_settings,
                        imports={"allowed_roots": [str(root)], "chunk": 4})
    importer = importer_for(settings)
    job = run_once(importer, tenant, str(root.resolve()))
    assert (job.state, job.listed, job.queued, job.refused) == ("done", 10, 9, 1)
    events = read_topic(kafka_settings, BULK_TOPIC, expect=9)
    assert len({e.image_id for e in events}) == 9
    for event in events:
        assert isinstance(event, ImageUploaded) and event.tenant_id == tenant
        assert event.storage_path.startswith(("file://", "tar://"))  # no copy was made
        assert importer.storage.get(event.storage_path)[:2] == b"\xff\xd8"
    assert pipeline_counts(importer.catalog, job) == {"uploaded": 9}
    assert not (settings.storage_root / tenant).exists()

    again = run_once(importer, tenant, str(root.resolve()))  # lists the source anew
    assert (again.listed, again.queued, again.skipped, again.refused) == (10, 0, 9, 1)
    assert len(read_topic(kafka_settings, BULK_TOPIC, expect=10, timeout_s=8)) == 9
    assert importer.catalog.counts(tenant) == {"uploaded": 9}


class DiesAfter:
    """A producer whose process dies (BaseException) on its n-th send: rows inserted,
    events never acknowledged."""

    def __init__(self, real: EventProducer, sends: int) -> None:
        self.real, self.sends = real, sends

    def send(self, messages):
        self.sends -= 1
        if self.sends < 0:
            raise SystemExit("killed")
        return self.real.send(messages)


def test_a_killed_import_resumes_where_it_stopped(tmp_path, kafka_settings, tenant) -> None:
    root = tmp_path / "shared"
    make_folder(root, n_files=8, n_in_shard=0)
    settings = Settings(data_dir=tmp_path / "data", kafka=kafka_settings,
                        imports={"allowed_roots": [str(root)], "chunk": 3})
    real = EventProducer(kafka_settings, prefix=kafka_settings.topic_prefix)
    dying = importer_for(settings, DiesAfter(real, sends=1))
    with pytest.raises(SystemExit):
        run_once(dying, tenant, str(root))
    with dying.catalog.engine.begin() as conn:  # a dead process's heartbeat goes stale
        conn.execute(import_jobs.update().values(heartbeat_at=utcnow() - timedelta(hours=1)))
    first = dying.jobs.get(_only_job(dying))
    assert first is not None and (first.state, first.queued, first.cursor) == (
        "running", 3, "b/img005.jpg")
    job = run_once(importer_for(settings, real), tenant, str(root))
    assert (job.state, job.listed, job.queued, job.skipped) == ("done", 9, 8, 0)
    events = read_topic(kafka_settings, BULK_TOPIC, expect=8)
    assert len(events) == 8 and len({e.image_id for e in events}) == 8
    with dying.catalog.engine.connect() as conn:
        assert conn.execute(sa.text("select count(*) from images where pending")).scalar() == 0


def _only_job(importer: Importer) -> str:
    with importer.catalog.engine.connect() as conn:
        return conn.execute(sa.select(import_jobs.c.job_id)).scalar_one()


def test_s3_import_through_the_admin_route(tmp_path, kafka_settings, tenant,
                                           s3_endpoint) -> None:  # noqa: F811
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1",
                      aws_access_key_id="test", aws_secret_access_key="test-secret")
    s3.create_bucket(Bucket="photos")
    for i in range(5):
        s3.put_object(Bucket="photos", Key=f"archive/2024/{i}.jpg", Body=images.jpeg(i))
    s3.put_object(Bucket="photos", Key="archive2/x.jpg", Body=images.jpeg(9))  # not under
    settings = Settings(
        data_dir=tmp_path / "data", kafka=kafka_settings,
        api_keys=f"{tenant}:key-{tenant}-0123456789ab",
        storage={"s3_endpoint_url": s3_endpoint, "s3_region": "us-east-1",
                 "s3_access_key_id": "test", "s3_secret_access_key": "test-secret"},
        imports={"allowed_roots": ["s3://photos/archive"]},
        ops={"admin_token": "admin-0123456789"})
    body = {"tenant": tenant, "source": "s3://photos/archive"}
    with serve_app(create_app(settings)) as url:
        tenant_key = {"Authorization": f"Bearer key-{tenant}-0123456789ab"}
        admin = {"Authorization": "Bearer admin-0123456789"}
        assert httpx.post(f"{url}/ops/imports", json=body, headers=tenant_key).status_code == 403
        refused = httpx.post(f"{url}/ops/imports", headers=admin,
                             json=body | {"source": "s3://photos/archive/../archive2"})
        assert refused.status_code == 422 and "'..'" in refused.json()["detail"]
        started = httpx.post(f"{url}/ops/imports", json=body, headers=admin)
        assert started.status_code == 202, started.text
        events = read_topic(kafka_settings, BULK_TOPIC, expect=5)
        job_url = f"{url}/ops/imports/{started.json()['job_id']}"
        for _ in range(100):
            progress = httpx.get(job_url, headers=admin).json()
            if progress["state"] != "running":
                break
            time.sleep(0.1)
    assert (progress["state"], progress["listed"], progress["queued"]) == ("done", 5, 5)
    assert sorted(e.storage_path for e in events) == [
        f"s3://photos/archive/2024/{i}.jpg" for i in range(5)]
    assert make_storage(settings).get(events[0].storage_path)[:2] == b"\xff\xd8"
