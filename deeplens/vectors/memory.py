"""The search path's in-memory index over the embedded store, per (model, tenant).

LanceDB stays the durable store: indexer actors write to it, and it survives
restarts. A process that answers searches (the Gateway) keeps, for every tenant it
has been asked about, that tenant's vectors in memory:

- below ``HNSW_MIN_ROWS`` a flat float32 matrix, searched exactly (one matrix-
  vector product: ~0.3 ms for 10k 512-d vectors on one core);
- from ``HNSW_MIN_ROWS`` on, also a usearch HNSW graph (f16, cosine), searched
  approximately (~0.5 ms for 100k vectors at recall@10 ~0.98), built in a
  background thread while the flat path keeps answering.

It stays in step with the store without being told: a refresh thread reads, every
``refresh_s``, the rows written since it last looked (LanceDB's ``indexed_at``
column, through its scalar index) and the deletions recorded since (the catalog's
tombstones). Rows are re-read over a window of ``OVERLAP`` so a write that
committed late is not missed. Several writers (indexer actors) are therefore
fine, and a new vector is searchable within ``refresh_s`` plus a query.

Chosen by ``benchmarks/search_bench.py``, which shows every candidate side by side.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np

from deeplens.vectors.base import Hit, VectorRecord

log = logging.getLogger(__name__)

HNSW_MIN_ROWS = 20_000
HNSW_EXPANSION_SEARCH = 128  # recall@10 ~0.98 at 100k (benchmarks/RESULTS.md)
OVERLAP = timedelta(seconds=5)


@dataclass
class _Row:
    image_id: str
    vector: np.ndarray
    name: str
    uploaded_at: datetime | None
    indexed_at: datetime | None


class TenantIndex:
    """One tenant's vectors of one model: exact below the HNSW threshold, HNSW above."""

    def __init__(self, dim: int, hnsw_min_rows: int = HNSW_MIN_ROWS) -> None:
        self.dim = dim
        self.hnsw_min_rows = hnsw_min_rows
        self.slots: dict[str, int] = {}
        self.ids: list[str] = []
        self.names: list[str] = []
        self.uploaded: list[datetime | None] = []
        self.stamps: list[datetime | None] = []
        self.vectors = np.zeros((64, dim), dtype=np.float32)
        self.alive = np.zeros(64, dtype=bool)
        self.used = 0
        self.hnsw: Any = None
        self._building = False
        self._changed_while_building: set[int] = set()
        self._lock = threading.RLock()

    def __len__(self) -> int:
        return len(self.slots)

    # -- writes ---------------------------------------------------------------------
    def upsert(self, rows: list[_Row]) -> None:
        with self._lock:
            for row in rows:
                slot = self.slots.get(row.image_id)
                if slot is not None:
                    held = self.stamps[slot]
                    if held is not None and row.indexed_at is not None and row.indexed_at <= held:
                        continue  # the version we hold already (re-read in the overlap)
                else:
                    slot = self._new_slot(row.image_id)
                self.vectors[slot] = row.vector
                self.names[slot], self.uploaded[slot] = row.name, row.uploaded_at
                self.stamps[slot] = row.indexed_at
                self.alive[slot] = True
                self._touch(slot, present=True)
            self._maybe_build()

    def remove(self, image_id: str) -> bool:
        with self._lock:
            slot = self.slots.pop(image_id, None)
            if slot is None:
                return False
            self.alive[slot] = False
            self._touch(slot, present=False)
            return True

    def _new_slot(self, image_id: str) -> int:
        if self.used == len(self.alive):
            grow = max(64, len(self.alive))
            self.vectors = np.concatenate([self.vectors, np.zeros((grow, self.dim), np.float32)])
            self.alive = np.concatenate([self.alive, np.zeros(grow, dtype=bool)])
        slot = self.used
        self.used += 1
        self.slots[image_id] = slot
        self.ids.append(image_id)
        self.names.append("")
        self.uploaded.append(None)
        self.stamps.append(None)
        return slot

    def _touch(self, slot: int, present: bool) -> None:
        if self._building:
            self._changed_while_building.add(slot)
        elif self.hnsw is not None:
            if self.hnsw.contains(slot):
                self.hnsw.remove(slot)
            if present:
                self.hnsw.add(slot, self.vectors[slot])

    def _maybe_build(self) -> None:
        if self.hnsw is None and not self._building and len(self.slots) >= self.hnsw_min_rows:
            self._building = True
            threading.Thread(target=self._build, daemon=True, name="hnsw-build").start()

    def _build(self) -> None:
        """Build the graph from a snapshot, off the lock; then catch up with what changed."""
        from usearch.index import Index

        with self._lock:
            keys = np.nonzero(self.alive[: self.used])[0]
            vectors = self.vectors[keys].copy()
        started = time.perf_counter()
        graph = Index(ndim=self.dim, metric="cos", dtype="f16", connectivity=16,
                      expansion_add=128, expansion_search=HNSW_EXPANSION_SEARCH)
        graph.add(keys, vectors, threads=2)
        with self._lock:
            for slot in self._changed_while_building:
                if graph.contains(slot):
                    graph.remove(slot)
                if self.alive[slot]:
                    graph.add(slot, self.vectors[slot])
            self._changed_while_building = set()
            self.hnsw, self._building = graph, False
        log.info("HNSW over %d vectors built in %.1f s", len(keys), time.perf_counter() - started)

    # -- reads ----------------------------------------------------------------------
    def wait_built(self, timeout_s: float = 300) -> bool:
        deadline = time.monotonic() + timeout_s
        while self._building and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.hnsw is not None

    def vector(self, image_id: str) -> np.ndarray | None:
        with self._lock:
            slot = self.slots.get(image_id)
            return None if slot is None else self.vectors[slot].copy()

    def search(self, query: np.ndarray, k: int, exclude: frozenset[str]) -> list[Hit]:
        query = np.asarray(query, dtype=np.float32)
        with self._lock:
            if not self.slots:
                return []
            if self.hnsw is not None and not self._building:
                slots = self._hnsw_candidates(query, k + len(exclude) + 10)
            else:
                slots = self._flat_candidates(query, k + len(exclude))
            scores = self.vectors[slots] @ query if len(slots) else np.zeros(0)
            order = np.argsort(-scores, kind="stable")
            hits = []
            for i in order:
                slot = int(slots[i])
                image_id = self.ids[slot]
                if image_id in exclude:
                    continue
                hits.append(Hit(image_id, float(scores[i]), self.names[slot], self.uploaded[slot]))
                if len(hits) == k:
                    break
            return hits

    def _flat_candidates(self, query: np.ndarray, k: int) -> np.ndarray:
        scores = self.vectors[: self.used] @ query
        scores[~self.alive[: self.used]] = -np.inf
        k = min(k, int(self.alive[: self.used].sum()))
        if k <= 0:
            return np.zeros(0, dtype=np.int64)
        top = np.argpartition(-scores, k - 1)[:k]
        return top[np.isfinite(scores[top])]

    def _hnsw_candidates(self, query: np.ndarray, k: int) -> np.ndarray:
        found = self.hnsw.search(query, k)
        keys = np.asarray(found.keys, dtype=np.int64)
        return keys[self.alive[keys]]


class MemoryIndexedStore:
    """A ``VectorStore`` that writes through to LanceDB and searches in memory."""

    backend = "lancedb"

    def __init__(self, store: Any, tombstones: Any = None, refresh_s: float = 0.5,
                 hnsw_min_rows: int = HNSW_MIN_ROWS) -> None:
        self.store = store  # LanceStore: the durable truth
        self.tombstones = tombstones  # Tombstones of the catalog, or None
        self.refresh_s = refresh_s
        self.hnsw_min_rows = hnsw_min_rows
        self._indexes: dict[tuple[str, str], TenantIndex] = {}
        self._watermarks: dict[str, datetime] = {}  # model -> newest indexed_at seen
        self._deleted_mark = datetime.now(UTC)
        self._lock = threading.Lock()
        self._loading: dict[tuple[str, str], threading.Lock] = {}
        self._stop = threading.Event()
        self._refresher = threading.Thread(target=self._refresh_loop, daemon=True,
                                           name="vector-refresh")
        self._refresher.start()

    # -- the VectorStore protocol ---------------------------------------------------
    def upsert(self, model_id: str, records: list[VectorRecord]) -> None:
        self.store.upsert(model_id, records)
        now = datetime.now(UTC)
        for record in records:
            index = self._indexes.get((model_id, record.tenant_id))
            if index is not None:
                index.upsert([_Row(record.image_id, np.asarray(record.vector, np.float32),
                                   record.original_file_name, record.uploaded_at, now)])

    def search(self, model_id: str, tenant_id: str, vector: np.ndarray, k: int,
               exclude: frozenset[str] = frozenset()) -> list[Hit]:
        index = self._index(model_id, tenant_id)
        return [] if index is None else index.search(vector, k, exclude)

    def get_vector(self, model_id: str, tenant_id: str, image_id: str) -> np.ndarray | None:
        """From memory; an image written since the last refresh (just indexed) is looked
        up in the store by id, so "indexed" always means "similar-to works"."""
        index = self._index(model_id, tenant_id)
        if index is None:
            return None
        vector = index.vector(image_id)
        if vector is None:
            vector = self.store.get_vector(model_id, tenant_id, image_id)
            if vector is not None and self.tombstones is not None and \
                    self.tombstones.is_dead(tenant_id, image_id):
                return None  # deleted; the indexer has not removed it from the store yet
        return vector

    def delete(self, tenant_id: str, image_id: str) -> int:
        removed = self.store.delete(tenant_id, image_id)
        for (_, tenant), index in list(self._indexes.items()):
            if tenant == tenant_id:
                index.remove(image_id)
        return removed  # type: ignore[no-any-return]

    def count(self, model_id: str, tenant_id: str) -> int:
        index = self._index(model_id, tenant_id)
        return 0 if index is None else len(index)

    def close(self) -> None:
        self._stop.set()
        self.store.close()

    # -- loading and refreshing -----------------------------------------------------
    def tenant_index(self, model_id: str, tenant_id: str) -> TenantIndex | None:
        return self._index(model_id, tenant_id)

    def _index(self, model_id: str, tenant_id: str) -> TenantIndex | None:
        key = (model_id, tenant_id)
        index = self._indexes.get(key)
        if index is not None:
            return index
        with self._lock:
            gate = self._loading.setdefault(key, threading.Lock())
        with gate:  # one load per tenant, however many queries arrive at once
            index = self._indexes.get(key)
            if index is None:
                index = self._load(model_id, tenant_id)
                if index is not None:
                    self._indexes[key] = index
        return index

    def _load(self, model_id: str, tenant_id: str) -> TenantIndex | None:
        self._watermarks.setdefault(model_id, datetime.now(UTC))  # refresh from now on
        rows = self.store.rows(model_id, tenant_id=tenant_id)
        if rows is None:
            return None
        index = TenantIndex(self._dim(rows), self.hnsw_min_rows)
        loaded = _rows_of(rows)
        if self.tombstones is not None and loaded:  # deleted, not yet removed by an indexer
            dead = self.tombstones.dead((tenant_id, r.image_id) for r in loaded)
            loaded = [r for r in loaded if (tenant_id, r.image_id) not in dead]
        index.upsert(loaded)
        return index

    @staticmethod
    def _dim(rows: Any) -> int:
        field = rows.schema.field("vector").type
        return int(field.list_size)

    def refresh(self) -> None:
        """Apply the rows written and the images deleted since the last refresh."""
        for model_id in list({m for m, _ in self._indexes}):
            since = self._watermarks.get(model_id, datetime.now(UTC)) - OVERLAP
            rows = self.store.rows(model_id, since=since)
            if rows is None or rows.num_rows == 0:
                continue
            by_tenant: dict[str, list[_Row]] = {}
            tenants = rows.column("tenant_id").to_pylist()
            for tenant, row in zip(tenants, _rows_of(rows), strict=True):
                by_tenant.setdefault(tenant, []).append(row)
            stamps = [r.indexed_at for rs in by_tenant.values() for r in rs if r.indexed_at]
            newest = max(stamps, default=since + OVERLAP)
            for tenant, tenant_rows in by_tenant.items():
                index = self._indexes.get((model_id, tenant))
                if index is not None:
                    index.upsert(tenant_rows)
            self._watermarks[model_id] = max(self._watermarks.get(model_id, newest), newest)
        if self.tombstones is not None:
            for tenant, image_id, deleted_at in self.tombstones.since(self._deleted_mark - OVERLAP):
                for (_, loaded_tenant), index in list(self._indexes.items()):
                    if loaded_tenant == tenant:
                        index.remove(image_id)
                self._deleted_mark = max(self._deleted_mark, deleted_at)

    def _refresh_loop(self) -> None:
        while not self._stop.wait(self.refresh_s):
            if not self._indexes:
                continue
            try:
                self.refresh()
            except Exception as exc:  # noqa: BLE001 - the store may be busy: try again soon
                log.warning("vector index refresh failed: %s", exc)


def _rows_of(table: Any) -> list[_Row]:
    ids = table.column("image_id").to_pylist()
    names = table.column("original_file_name").to_pylist()
    uploaded = table.column("uploaded_at").to_pylist()
    stamps = table.column("indexed_at").to_pylist()
    flat = table.column("vector").combine_chunks().flatten().to_numpy(zero_copy_only=False)
    vectors = np.asarray(flat, dtype=np.float32).reshape(len(ids), -1)
    return [_Row(ids[i], vectors[i], names[i] or "", uploaded[i], stamps[i])
            for i in range(len(ids))]
