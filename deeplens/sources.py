"""Where an import reads: source addresses, the allowed-roots check, and reading one
imported object by its reference.

An imported image referenced in place keeps the address of its object as its
``storage_path``: ``s3://bucket/key``, ``file:///mnt/shared/a.jpg`` or
``tar:///mnt/shared/000.tar#<offset>+<size>`` (a WebDataset shard member, read as a
byte range). Every address is checked against ``DEEPLENS_IMPORTS__ALLOWED_ROOTS``
when an import starts and again on every read: ``..``, relative paths, symlinks that
lead out, other buckets and other prefixes are refused with a reason.
"""

from __future__ import annotations

import os
import posixpath
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

REFERENCE_SCHEMES = ("s3://", "file://", "tar://")
_TAR_MEMBER = re.compile(r"^(?P<shard>/.+)#(?P<offset>\d+)\+(?P<size>\d+)$")


class SourceRefused(ValueError):
    """An import source or an imported reference lies outside the allowed roots."""


@dataclass(frozen=True)
class Source:
    """A parsed import source: an S3 bucket and key prefix, or a folder's real path."""

    kind: Literal["s3", "folder"]
    bucket: str = ""
    prefix: str = ""  # S3: key prefix ("" or ends without a slash)
    path: Path | None = None  # folder: resolved, symlinks followed

    def uri(self) -> str:
        if self.kind == "s3":
            return f"s3://{self.bucket}/{self.prefix}".rstrip("/")
        return str(self.path)


def is_reference(storage_path: str) -> bool:
    """Whether a catalog path addresses an imported object in place (not our storage)."""
    return storage_path.startswith(REFERENCE_SCHEMES)


def _clean_key(key: str, what: str) -> str:
    """An S3 key prefix without ``..``, ``.``, empty segments or a leading slash."""
    if key.startswith("/") or "\\" in key:
        raise SourceRefused(f"{what}: key {key!r} must not start with '/' or hold '\\'")
    parts = key.rstrip("/").split("/") if key.rstrip("/") else []
    if any(part in ("", ".", "..") for part in parts):
        raise SourceRefused(f"{what}: key {key!r} holds '..', '.' or an empty segment")
    return "/".join(parts)


def _split_s3(text: str, what: str) -> tuple[str, str]:
    bucket, _, key = text.removeprefix("s3://").partition("/")
    if not re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", bucket):
        raise SourceRefused(f"{what}: {bucket!r} is not a bucket name")
    return bucket, _clean_key(key, what)


def _real_folder(text: str, what: str) -> Path:
    """An absolute path with no ``..``, symlinks resolved (it must exist)."""
    raw = text.removeprefix("file://")
    if not raw.startswith("/"):
        raise SourceRefused(f"{what}: {text!r} is not an absolute path")
    if ".." in Path(raw).parts:
        raise SourceRefused(f"{what}: {text!r} holds '..'")
    try:
        return Path(raw).resolve(strict=True)
    except (FileNotFoundError, RuntimeError) as exc:
        raise SourceRefused(f"{what}: {text!r} does not exist ({exc})") from None


def _under(child: str, parent: str) -> bool:
    return not parent or child == parent or child.startswith(parent.rstrip("/") + "/")


MAX_SOURCE_LENGTH = 512  # import_jobs.source


def parse_source(text: str, allowed_roots: list[str]) -> Source:
    """The source an operator named, or ``SourceRefused`` saying why it may not be read."""
    what = "import source"
    if not allowed_roots:
        raise SourceRefused("imports are off: set DEEPLENS_IMPORTS__ALLOWED_ROOTS to the "
                            "buckets and folders an import may read")
    if text.startswith("s3://"):
        bucket, prefix = _split_s3(text, what)
        source = Source("s3", bucket=bucket, prefix=prefix)
    elif "://" in text and not text.startswith("file://"):
        raise SourceRefused(f"{what}: {text!r}: only s3:// and folders can be imported")
    else:
        source = Source("folder", path=_real_folder(text, what))
    check_allowed(source, allowed_roots)
    if len(source.uri()) > MAX_SOURCE_LENGTH:
        raise SourceRefused(f"{what}: {len(source.uri())} characters; an import job records "
                            f"at most {MAX_SOURCE_LENGTH}: import a shorter prefix or folder")
    return source


def check_allowed(source: Source, allowed_roots: list[str]) -> None:
    for root in allowed_roots:
        if source.kind == "s3" and root.startswith("s3://"):
            bucket, prefix = _split_s3(root, "allowed root")
            if bucket == source.bucket and _under(source.prefix, prefix):
                return
        elif source.kind == "folder" and not root.startswith("s3://"):
            real = Path(root).resolve()
            if source.path is not None and source.path.is_relative_to(real):
                return
    shown = source.uri()
    raise SourceRefused(f"{shown} is outside the allowed import roots "
                        f"({', '.join(allowed_roots) or 'none'})")


def reference_source(reference: str, allowed_roots: list[str]) -> Source:
    """The object a reference addresses, checked against the roots (on every read: an
    event names a path, and a path is only trusted once it is checked)."""
    what = "imported object"
    if reference.startswith("s3://"):
        bucket, key = _split_s3(reference, what)
        source = Source("s3", bucket=bucket, prefix=key)
    elif reference.startswith("file://"):
        source = Source("folder", path=_real_folder(reference, what))
    elif reference.startswith("tar://"):
        found = _TAR_MEMBER.match(reference.removeprefix("tar://"))
        if found is None:
            raise SourceRefused(f"{what}: {reference!r} is not tar:///shard.tar#offset+size")
        source = Source("folder", path=_real_folder(found["shard"], what))
    else:
        raise SourceRefused(f"{what}: {reference!r} has no known scheme")
    check_allowed(source, allowed_roots)
    return source


def read_file_reference(reference: str, source: Source) -> bytes:
    """The bytes of a ``file://`` or ``tar://`` reference (already checked)."""
    assert source.path is not None
    if reference.startswith("tar://"):
        found = _TAR_MEMBER.match(reference.removeprefix("tar://"))
        assert found is not None
        with open(source.path, "rb") as handle:
            handle.seek(int(found["offset"]))
            data = handle.read(int(found["size"]))
        if len(data) != int(found["size"]):
            raise FileNotFoundError(f"{reference}: the shard is shorter than the member")
        return data
    return source.path.read_bytes()


def file_reference(path: Path) -> str:
    return "file://" + posixpath.normpath(os.fspath(path))


def tar_reference(shard: Path, offset: int, size: int) -> str:
    return f"tar://{posixpath.normpath(os.fspath(shard))}#{offset}+{size}"
