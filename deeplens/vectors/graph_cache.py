"""A Gateway's HNSW graphs on disk, so that a restart does not rebuild them.

Building the graph of a 1M-image tenant costs about half an hour of two cores
(``benchmarks/scale_bench.py``); reading it back costs seconds. When a tenant's graph
is built, the build thread writes it here, with the slot table it was built from
(image id, name, stamps per slot) and the store's table version its rows came from
(the *floor*: every row written at or below it is in the snapshot, or deleted since).

A process that loads the tenant again takes the saved graph and catches up with the
store instead of reading every vector:

- ids the store no longer holds are removed;
- rows written after the floor are read (vectors and all) and upserted by stamp;
- the tenant's tombstones are applied, as on a full load.

Anything that does not add up (an id in the store that the snapshot lacks although it
was written at or below the floor, a different dimension, an unreadable file) falls
back to the full load. Files are written to a temporary name and renamed, so a reader
never sees half of one; several Gateway replicas on a node share the folder.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np

from deeplens.vectors.arrow_rows import rows_of
from deeplens.vectors.tenant_index import TenantIndex

log = logging.getLogger(__name__)

FORMAT = 1


def _pack(strings: list[str]) -> tuple[np.ndarray, np.ndarray]:
    encoded = [s.encode() for s in strings]
    ends = np.cumsum([len(b) for b in encoded], dtype=np.int64)
    return np.frombuffer(b"".join(encoded), dtype=np.uint8), ends


def _unpack(blob: np.ndarray, ends: np.ndarray) -> list[str]:
    data = blob.tobytes()
    starts = np.concatenate([[0], ends[:-1]]) if len(ends) else ends
    return [data[a:b].decode() for a, b in zip(starts.tolist(), ends.tolist(), strict=True)]


class GraphCache:
    """Saved graphs under ``root``, one pair of files per (model, tenant)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._writing = threading.Lock()

    def _base(self, model_id: str, tenant_id: str) -> Path:
        key = hashlib.sha256(f"{model_id}\0{tenant_id}".encode()).hexdigest()[:32]
        return self.root / key

    def save(self, model_id: str, tenant_id: str, snapshot: dict[str, Any], graph: Any) -> None:
        """Write a graph and the slot table it was built from (``TenantIndex.snapshot``)."""
        base = self._base(model_id, tenant_id)
        with self._writing:
            self.root.mkdir(parents=True, exist_ok=True)
            tmp = f".{os.getpid()}.tmp"
            graph.save(str(base) + ".usearch" + tmp)
            ids_blob, ids_ends = _pack(snapshot["ids"])
            names_blob, names_ends = _pack(snapshot["names"])
            meta = {"format": FORMAT, "model": model_id, "tenant": tenant_id,
                    "dim": snapshot["dim"], "floor": snapshot["floor"]}
            with open(str(base) + ".npz" + tmp, "wb") as out:
                np.savez(out, meta=np.frombuffer(json.dumps(meta).encode(), np.uint8),
                         ids=ids_blob, ids_ends=ids_ends, names=names_blob,
                         names_ends=names_ends, alive=snapshot["alive"],
                         uploaded=snapshot["uploaded"], stamps=snapshot["stamps"])
            os.replace(str(base) + ".usearch" + tmp, str(base) + ".usearch")
            os.replace(str(base) + ".npz" + tmp, str(base) + ".npz")  # last: marks it whole
        log.info("saved the search graph of %s/%s (%d slots)", model_id, tenant_id,
                 len(snapshot["ids"]))

    def load(self, model_id: str, tenant_id: str, dim: int,
             hnsw_min_rows: int) -> tuple[TenantIndex, int] | None:
        """(index, floor) from the saved files, or None when there are none usable."""
        from usearch.index import Index

        base = self._base(model_id, tenant_id)
        if not Path(str(base) + ".npz").exists():
            return None
        try:
            with np.load(str(base) + ".npz") as saved:
                meta = json.loads(saved["meta"].tobytes())
                if meta.get("format") != FORMAT or meta.get("dim") != dim or \
                        (meta.get("model"), meta.get("tenant")) != (model_id, tenant_id):
                    return None
                ids = _unpack(saved["ids"], saved["ids_ends"])
                names = _unpack(saved["names"], saved["names_ends"])
                alive, uploaded, stamps = saved["alive"], saved["uploaded"], saved["stamps"]
            graph = Index.restore(str(base) + ".usearch")
            if graph is None or graph.ndim != dim:
                return None
        except Exception as exc:  # noqa: BLE001 - a damaged cache is rebuilt, never fatal
            log.warning("saved search graph of %s/%s unusable (%s): loading in full",
                        model_id, tenant_id, exc)
            return None
        index = TenantIndex(dim, hnsw_min_rows)
        index.restore(ids, names, alive, uploaded, stamps, graph)
        return index, int(meta["floor"])

    def resume(self, store: Any, model_id: str, tenant_id: str, dead: set[str],
               hnsw_min_rows: int) -> TenantIndex | None:
        """The tenant's index from its saved graph, caught up with ``store``; None when
        there is no saved graph or it cannot be trusted (then the caller loads in full)."""
        from deeplens.vectors.lancedb import VERSION_COLUMN

        dim = store.dim(model_id)
        loaded = self.load(model_id, tenant_id, dim, hnsw_min_rows) if dim else None
        if loaded is None:
            return None
        index, floor = loaded
        listing = store.ids_and_versions(model_id, tenant_id)
        if listing is None:
            return None
        ids = listing.column("image_id").to_pylist()
        versions = listing.column(VERSION_COLUMN).to_numpy(zero_copy_only=False)
        present = set(ids)
        for image_id in [i for i in index.slots if i not in present]:
            index.remove(image_id)  # gone from the store since the graph was saved
        missing = [i for i, v in zip(ids, versions.tolist(), strict=True)
                   if v <= floor and i not in index.slots and i not in dead]
        if missing:  # written at or below the floor, yet not in the snapshot: do not guess
            log.warning("saved search graph of %s/%s lacks %d stored images: loading in full",
                        model_id, tenant_id, len(missing))
            return None
        fresh = store.rows(model_id, tenant_id=tenant_id, after_version=floor)
        if fresh is not None and fresh.num_rows:
            index.upsert([row for row in rows_of(fresh) if row.image_id not in dead])
        for image_id in dead:
            index.remove(image_id)
        log.info("search graph of %s/%s resumed: %d rows written since it was saved",
                 model_id, tenant_id, 0 if fresh is None else fresh.num_rows)
        return index

    def drop(self, model_id: str, tenant_id: str) -> None:
        base = self._base(model_id, tenant_id)
        for suffix in (".npz", ".usearch"):
            Path(str(base) + suffix).unlink(missing_ok=True)
