"""Listing an import's source: every image object, in one fixed order, with what
identifies its version (ETag, or size and mtime), and no bytes read.

The order is the order of the keys as strings, so a resumed import lists only what
comes after the cursor it saved: S3 lists that way itself (``StartAfter``); a folder
is walked so that it does too (at each level, a folder sorts as its name plus ``/``,
a tar shard as its name plus ``#``). A WebDataset shard (``.tar``) in a folder
contributes its image members, each referenced as a byte range of the shard.
"""

from __future__ import annotations

import os
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from deeplens.settings import Settings
from deeplens.sources import Source, file_reference, tar_reference

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")


@dataclass(frozen=True)
class Listed:
    """One object of the source: ``refusal`` set where it may not be imported."""

    key: str  # relative to the source; the listing's order
    reference: str  # where it is read from (s3://, file://, tar://)
    version: str  # ETag, or size:mtime
    size: int
    refusal: str | None = None


def list_source(source: Source, settings: Settings, after: str | None = None
                ) -> Iterator[Listed]:
    if source.kind == "s3":
        yield from _list_s3(source, settings, after)
    else:
        assert source.path is not None
        yield from _list_folder(source.path, source.path, after, set())


def _list_s3(source: Source, settings: Settings, after: str | None) -> Iterator[Listed]:
    from deeplens.storage import S3Storage

    client = S3Storage(settings, source_only=True)._s3
    prefix = f"{source.prefix}/" if source.prefix else ""
    kwargs = {"Bucket": source.bucket, "Prefix": prefix}
    if after:
        kwargs["StartAfter"] = prefix + after
    for page in client.get_paginator("list_objects_v2").paginate(**kwargs):
        for item in page.get("Contents", []):
            key = item["Key"][len(prefix):]
            if key.lower().endswith(IMAGE_SUFFIXES):
                yield Listed(key, f"s3://{source.bucket}/{item['Key']}",
                             str(item.get("ETag", "")).strip('"') or
                             f"{item['Size']}:{item['LastModified'].timestamp()}",
                             int(item["Size"]))


def _order(entry: os.DirEntry[str]) -> str:
    if entry.is_dir():
        return entry.name + "/"
    return entry.name + ("#" if entry.name.lower().endswith(".tar") else "")


def _list_folder(root: Path, folder: Path, after: str | None,
                 seen: set[Path]) -> Iterator[Listed]:
    seen.add(folder.resolve())
    with os.scandir(folder) as found:
        entries = sorted(found, key=_order)
    for entry in entries:
        path = Path(entry.path)
        key = path.relative_to(root).as_posix()
        is_tar = entry.name.lower().endswith(".tar")
        if not entry.is_dir() and not is_tar and not entry.name.lower().endswith(IMAGE_SUFFIXES):
            continue
        # Skip what the cursor passed; a folder or shard the cursor lies in is entered.
        if after is not None and (key + ("/" if entry.is_dir() else "#" if is_tar else "")) \
                <= after and not after.startswith(key):
            continue
        real = path.resolve()
        if not real.is_relative_to(root):
            if after is None or key > after:
                yield Listed(key, "", "", 0, refusal=f"{key} leads outside the source "
                             f"(a link to {real})")
            continue
        if entry.is_dir():
            if real not in seen:  # a link to a folder already walked: no loop
                yield from _list_folder(root, path, after, seen)
        elif is_tar:
            yield from _list_shard(key, real, after)
        elif after is None or key > after:
            stat = real.stat()
            yield Listed(key, file_reference(real), f"{stat.st_size}:{stat.st_mtime_ns}",
                         stat.st_size)


def _list_shard(key: str, shard: Path, after: str | None) -> Iterator[Listed]:
    stat = shard.stat()
    version = f"{stat.st_size}:{stat.st_mtime_ns}"
    with tarfile.open(shard, mode="r:") as archive:
        for index, member in enumerate(archive):
            member_key = f"{key}#{index:09d}"
            if not member.isfile() or not member.name.lower().endswith(IMAGE_SUFFIXES):
                continue
            if after is not None and member_key <= after:
                continue
            yield Listed(member_key, tar_reference(shard, member.offset_data, member.size),
                         f"{version}:{member.name}", member.size)
