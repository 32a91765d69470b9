"""Where uploaded bytes live: a ``Storage`` protocol and its providers.

It sits in the shared core, not in ``ingestion/``, because the validator, the
embedding feeders and the search app read the same bytes and may import only
``deeplens``. Paths are built from tenant and image id only; a client's file
name never touches a path.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
import threading
from pathlib import Path
from typing import Protocol

from deeplens.settings import Settings
from deeplens.sources import is_reference, read_file_reference, reference_source

_SAFE_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class ObjectMissing(FileNotFoundError):
    """The stored object an event points at is not there."""


class Storage(Protocol):
    provider: str

    def put(self, path: str, data: bytes) -> None: ...
    def get(self, path: str) -> bytes: ...
    def delete(self, path: str) -> None: ...
    def exists(self, path: str) -> bool: ...


def object_path(tenant_id: str, image_id: str, extension: str) -> str:
    """``tenant/ab/image_id.ext``: from ids only, never from a client's file name."""
    for value in (tenant_id, image_id):
        if not _SAFE_ID.match(value):
            raise ValueError(f"unsafe id for a storage path: {value!r}")
    if not extension.isalnum():
        raise ValueError(f"unsafe extension {extension!r}")
    return f"{tenant_id}/{image_id[:2]}/{image_id}.{extension}"


def thumbnail_path(storage_path: str) -> str:
    """Where an image's thumbnail is stored: beside it, ``tenant/ab/image_id.thumb.jpg``;
    an imported object's (never written into its source) under ``_imported/``."""
    if is_reference(storage_path):
        digest = hashlib.sha256(storage_path.encode()).hexdigest()
        return f"_imported/{digest[:2]}/{digest[:40]}.thumb.jpg"
    stem = storage_path.rsplit(".", 1)[0] if "." in storage_path.rsplit("/", 1)[-1] else storage_path
    return f"{stem}.thumb.jpg"


class LocalStorage:
    """Files under one root folder; writes are atomic (temp file + rename)."""

    provider = "local"

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()

    def _full(self, path: str) -> Path:
        full = (self.root / path).resolve()
        if not full.is_relative_to(self.root):
            raise ValueError(f"path escapes the storage root: {path!r}")
        return full

    def put(self, path: str, data: bytes) -> None:
        full = self._full(path)
        full.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=full.parent, prefix=".upload-")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, full)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def get(self, path: str) -> bytes:
        try:
            return self._full(path).read_bytes()
        except FileNotFoundError:
            raise ObjectMissing(f"no stored object at {path!r}") from None

    def delete(self, path: str) -> None:
        self._full(path).unlink(missing_ok=True)

    def exists(self, path: str) -> bool:
        return self._full(path).is_file()


class StorageUnavailable(OSError):
    """The storage did not answer as it should (an outage, refused credentials, a missing
    bucket): transient for the pipeline, never mistaken for a deleted object."""


class S3Storage:
    """An S3-compatible bucket through boto3 (``pip install 'deeplens[cluster]'``).

    Only "no such key" means an object is missing. Anything else (403, throttling, a
    missing bucket, no connection) raises ``StorageUnavailable``, so the indexer, dedup
    and reconcile never take an outage for a deletion."""

    provider = "s3"

    def __init__(self, settings: Settings, source_only: bool = False) -> None:
        import boto3  # optional dependency, imported only when S3 is configured

        cfg = settings.storage
        if not cfg.s3_bucket and not source_only:
            raise ValueError("DEEPLENS_STORAGE__S3_BUCKET is required for the s3 provider")
        self.bucket = cfg.s3_bucket
        self._s3 = boto3.client(
            "s3",
            endpoint_url=cfg.s3_endpoint_url or None,
            region_name=cfg.s3_region or None,
            aws_access_key_id=cfg.s3_access_key_id or None,
            aws_secret_access_key=cfg.s3_secret_access_key.get_secret_value() or None,
        )

    def _call(self, what: str, path: str, call, bucket: str = "",  # type: ignore[no-untyped-def]
              **kwargs):
        from botocore.exceptions import BotoCoreError, ClientError

        bucket = bucket or self.bucket
        try:
            return call(Bucket=bucket, Key=path, **kwargs)
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in ("NoSuchKey", "404", "NotFound"):
                raise ObjectMissing(f"no stored object at s3://{bucket}/{path}") from None
            raise StorageUnavailable(f"S3 {what} s3://{bucket}/{path} failed: "
                                     f"{code or exc}") from exc
        except BotoCoreError as exc:  # no connection, timeouts, bad endpoint
            raise StorageUnavailable(f"S3 {what} s3://{bucket}/{path} failed: "
                                     f"{type(exc).__name__}: {exc}") from exc

    def get_from(self, bucket: str, key: str) -> bytes:
        """An object of another bucket (an import's source), with the server's credentials."""
        return self._call("get", key, self._s3.get_object, bucket=bucket)["Body"].read()  # type: ignore[no-any-return]

    def put(self, path: str, data: bytes) -> None:
        self._call("put", path, self._s3.put_object, Body=data)

    def get(self, path: str) -> bytes:
        return self._call("get", path, self._s3.get_object)["Body"].read()  # type: ignore[no-any-return]

    def delete(self, path: str) -> None:
        self._call("delete", path, self._s3.delete_object)

    def exists(self, path: str) -> bool:
        # GET of one byte, not HEAD: a HEAD error has no body, so a missing bucket (or a
        # proxy's 404) would read like a missing key. GET says NoSuchKey vs NoSuchBucket.
        try:
            self._call("look-up", path, self._s3.get_object, Range="bytes=0-0")
            return True
        except ObjectMissing:
            return False
        except StorageUnavailable as exc:
            if "InvalidRange" in str(exc):  # an empty object: it exists
                return True
            raise


class ReferencingStorage:
    """Our storage, plus read-only access to imported objects referenced in place
    (``deeplens.sources``): each is checked against the allowed roots on every read,
    never written, and never deleted (deleting an image drops our row, not the
    operator's object)."""

    def __init__(self, own: Storage, settings: Settings) -> None:
        self.own = own
        self.provider = own.provider
        self._settings = settings
        self._s3: S3Storage | None = own if isinstance(own, S3Storage) else None
        self._lock = threading.Lock()  # boto3 clients are not made safely in parallel

    def _read(self, reference: str) -> bytes:
        source = reference_source(reference, self._settings.imports.allowed_roots)
        if source.kind == "s3":
            with self._lock:
                if self._s3 is None:
                    self._s3 = S3Storage(self._settings, source_only=True)
            return self._s3.get_from(source.bucket, source.prefix)
        try:
            return read_file_reference(reference, source)
        except FileNotFoundError:
            raise ObjectMissing(f"no imported object at {reference!r}") from None

    def get(self, path: str) -> bytes:
        return self._read(path) if is_reference(path) else self.own.get(path)

    def put(self, path: str, data: bytes) -> None:
        if is_reference(path):
            raise ValueError(f"an imported object is never written: {path!r}")
        self.own.put(path, data)

    def delete(self, path: str) -> None:
        if not is_reference(path):
            self.own.delete(path)

    def exists(self, path: str) -> bool:
        if not is_reference(path):
            return self.own.exists(path)
        try:
            self._read(path)
            return True
        except ObjectMissing:
            return False


def make_storage(settings: Settings) -> Storage:
    """The provider the settings name; where imports are configured, able to read
    imported objects where they lie (without allowed roots no reference is readable)."""
    own: Storage = S3Storage(settings) if settings.storage.provider == "s3" \
        else LocalStorage(settings.storage_root)
    return ReferencingStorage(own, settings) if settings.imports.allowed_roots else own
