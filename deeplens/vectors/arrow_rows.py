"""A store's rows (an Arrow table of image_id, vector, name and stamps) as the search
index takes them: columns for a whole tenant, ``Row`` objects for a refresh."""

from __future__ import annotations

from typing import Any

import numpy as np

from deeplens.vectors.tenant_index import Row


def columns_of(table: Any, dead: set[str]) -> tuple[list[str], np.ndarray, list[str],
                                                    np.ndarray, np.ndarray]:
    """A tenant's rows as columns for ``TenantIndex.load`` (no per-row objects; stamps as
    int64 microseconds, where NaT is already int64's minimum), without ``dead`` ids."""
    ids = table.column("image_id").to_pylist()
    names = [name or "" for name in table.column("original_file_name").to_pylist()]
    flat = table.column("vector").combine_chunks().flatten().to_numpy(zero_copy_only=False)
    vectors = np.asarray(flat, dtype=np.float32).reshape(len(ids), -1)
    uploaded, stamps = (np.asarray(table.column(c).combine_chunks().to_numpy(
        zero_copy_only=False).astype("datetime64[us]").astype(np.int64))
        for c in ("uploaded_at", "indexed_at"))
    if dead:
        keep = np.fromiter((i not in dead for i in ids), dtype=bool, count=len(ids))
        if not keep.all():
            ids = [i for i, k in zip(ids, keep, strict=True) if k]
            names = [n for n, k in zip(names, keep, strict=True) if k]
            vectors, uploaded, stamps = vectors[keep], uploaded[keep], stamps[keep]
    return ids, vectors, names, uploaded, stamps


def rows_of(table: Any) -> list[Row]:
    ids = table.column("image_id").to_pylist()
    names = table.column("original_file_name").to_pylist()
    uploaded = table.column("uploaded_at").to_pylist()
    stamps = table.column("indexed_at").to_pylist()
    flat = table.column("vector").combine_chunks().flatten().to_numpy(zero_copy_only=False)
    vectors = np.asarray(flat, dtype=np.float32).reshape(len(ids), -1)
    return [Row(ids[i], vectors[i], names[i] or "", uploaded[i], stamps[i])
            for i in range(len(ids))]
