"""S3 storage against an S3-protocol server: moto's standalone server on a free port,
spoken to over real HTTP by boto3, as a bucket would be."""

from __future__ import annotations

import os

import pytest

from deeplens.broker import free_port
from deeplens.settings import Settings, StorageSettings
from deeplens.storage import ObjectMissing, S3Storage, StorageUnavailable, make_storage


@pytest.fixture(scope="module")
def s3_endpoint():
    pytest.importorskip("boto3", reason="pip install -e '.[cluster]'")
    server_mod = pytest.importorskip("moto.server", reason="pip install 'moto[server]'")
    port = free_port()
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


def s3_settings(tmp_path, endpoint: str, bucket: str) -> Settings:
    return Settings(data_dir=tmp_path, storage=StorageSettings(
        provider="s3", s3_bucket=bucket, s3_endpoint_url=endpoint, s3_region="us-east-1",
        s3_access_key_id="test", s3_secret_access_key="test-secret"))


@pytest.fixture
def storage(tmp_path, s3_endpoint):
    import uuid

    import boto3

    bucket = f"deeplens-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1",
                 aws_access_key_id="test", aws_secret_access_key="test-secret"
                 ).create_bucket(Bucket=bucket)
    return make_storage(s3_settings(tmp_path, s3_endpoint, bucket))


def test_put_get_exists_delete(storage) -> None:
    assert isinstance(storage, S3Storage) and storage.provider == "s3"
    storage.put("acme/ab/abc.jpg", b"\xff\xd8 bytes")
    assert storage.exists("acme/ab/abc.jpg")
    assert storage.get("acme/ab/abc.jpg") == b"\xff\xd8 bytes"
    storage.delete("acme/ab/abc.jpg")
    assert not storage.exists("acme/ab/abc.jpg")
    storage.delete("acme/ab/abc.jpg")  # deleting twice is fine


def test_big_and_empty_objects(storage) -> None:
    big = os.urandom(20 * 1024 * 1024)
    storage.put("acme/bi/big.png", big)
    assert storage.get("acme/bi/big.png") == big
    storage.put("acme/em/empty.png", b"")
    assert storage.exists("acme/em/empty.png") and storage.get("acme/em/empty.png") == b""


def test_a_missing_key_is_object_missing(storage) -> None:
    assert not storage.exists("acme/no/nothing.jpg")
    with pytest.raises(ObjectMissing):
        storage.get("acme/no/nothing.jpg")


def test_an_outage_is_never_read_as_a_deletion(tmp_path, s3_endpoint) -> None:
    """A missing bucket (a configuration error) and a server that is not there raise;
    only a missing key reads as 'not there'."""
    wrong_bucket = make_storage(s3_settings(tmp_path, s3_endpoint, "no-such-bucket"))
    with pytest.raises(StorageUnavailable, match="NoSuchBucket"):
        wrong_bucket.exists("acme/ab/abc.jpg")
    with pytest.raises(StorageUnavailable):
        wrong_bucket.get("acme/ab/abc.jpg")
    down = make_storage(s3_settings(tmp_path, f"http://127.0.0.1:{free_port()}", "b"))
    down._s3.meta.config.retries = {"max_attempts": 1}
    with pytest.raises(StorageUnavailable):
        down.exists("acme/ab/abc.jpg")
    with pytest.raises(StorageUnavailable):
        down.put("acme/ab/abc.jpg", b"x")
