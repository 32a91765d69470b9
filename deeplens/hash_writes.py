"""Dedup's hash writes for a consumer batch in one transaction (``HashIndex.add`` does
one image per transaction): rows already there (a redelivered batch) are left as they
are, as ``add`` leaves them."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from deeplens.hash_index import HashIndex, image_hashes, to_signed

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
