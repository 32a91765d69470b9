"""Dedup's hash writes for a consumer batch in one transaction (``HashIndex.add`` does
one image per transaction): rows already there (a redelivered batch) are left as they
are, as ``add`` leaves them. And the batch's exact look-ups in one query per tenant
(``exact_many``; ``HashIndex.exact`` asks per image)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from deeplens.hash_index import HashIndex, chunked, image_hashes, to_signed

Row = tuple[str, str, str, str, int, np.ndarray | None]  # tenant, image, sha, pixel, pHash, windows


def add_many(index: HashIndex, rows: Sequence[Row]) -> None:
    """Record a batch's hashes; idempotent, like ``HashIndex.add`` for each row."""
    if not rows:
        return
    try:
        with index.engine.begin() as conn:
            have = {(t, i) for t, i in conn.execute(
                sa.select(image_hashes.c.tenant_id, image_hashes.c.image_id).where(
                    image_hashes.c.image_id.in_({r[1] for r in rows})))}
            fresh = {(r[0], r[1]): r for r in rows if (r[0], r[1]) not in have}
            if fresh:
                conn.execute(image_hashes.insert(), [_values(r) for r in fresh.values()])
    except IntegrityError:  # another actor wrote one of them meanwhile: one by one
        for row in rows:
            index.add(*row)


def _values(row: Row) -> dict[str, object]:
    tenant_id, image_id, sha256, pixel_sha256, phash, windows = row
    blob = np.asarray(windows, dtype=">u8").tobytes() if windows is not None else None
    return {"tenant_id": tenant_id, "image_id": image_id, "sha256": sha256,
            "pixel_sha256": pixel_sha256, "phash": to_signed(phash), "windows": blob}


def exact_many(index: HashIndex, tenant_id: str,
               images: Sequence[tuple[str, str, str]]) -> dict[str, list[str]]:
    """``HashIndex.exact`` for many (image id, sha256, pixel fingerprint) of one tenant in
    one query per chunk: image id -> the other images with its bytes or its pixels."""
    t = image_hashes.c
    by_sha: dict[str, set[str]] = {}
    by_pixel: dict[str, set[str]] = {}
    with index.engine.connect() as conn:
        for part in chunked(images):
            query = sa.union(*(sa.select(t.image_id, t.sha256, t.pixel_sha256).where(
                t.tenant_id == tenant_id, column.in_({row[k] for row in part}))
                for k, column in ((1, t.sha256), (2, t.pixel_sha256))))
            for other, sha, pixel in conn.execute(query):
                by_sha.setdefault(sha, set()).add(other)
                by_pixel.setdefault(pixel, set()).add(other)
    return {image_id: sorted((by_sha.get(sha, set()) | by_pixel.get(pixel, set())) - {image_id})
            for image_id, sha, pixel in images}
