"""The search path's in-memory index over the embedded store, per (model, tenant).

LanceDB stays the durable store: indexer actors write to it, and it survives
restarts. A process that answers searches (the Gateway) keeps, for every tenant it
has been asked about, that tenant's vectors in memory:

- below ``HNSW_MIN_ROWS`` a flat float32 matrix, searched exactly (one matrix-
  vector product: ~0.3 ms for 10k 512-d vectors on one core);
- from ``HNSW_MIN_ROWS`` on, also a usearch HNSW graph (f16, cosine), searched
  approximately (~0.5 ms for 100k vectors at recall@10 ~0.98), built in a
  background thread while the flat path keeps answering.

It stays in step with the store without being told, by sequence, never by clock:

- rows: every LanceDB row carries the table version that wrote it; a refresh thread
  reads, every ``refresh_s``, the table's version, and only when it moved, the rows
  written after the version it last applied. A row is loaded whatever the clock of
  the node that wrote it, however late its write committed. (A table from before row
  versions falls back to its ``indexed_at`` stamps, re-read over ``OVERLAP``.)
- deletions: the catalog's tombstones past the highest ``seq`` applied, plus, every
  ``TOMBSTONE_SWEEP_S``, the last ``TOMBSTONE_OVERLAP`` numbers again (one taken
  early but committed late). A row whose image has a tombstone is never taken in, on
  load, refresh or upsert, so a delete the indexer has not applied yet never comes back.

Several writers (indexer actors) are therefore fine, and a new vector is searchable
within ``refresh_s`` plus a query. ``max_bytes`` bounds the memory: past it the least
recently searched tenants are dropped, and reloaded when asked for again.

Chosen by ``benchmarks/search_bench.py``, which shows every candidate side by side.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import numpy as np

from deeplens.vectors.arrow_rows import columns_of, rows_of
from deeplens.vectors.base import Hit, VectorRecord
from deeplens.vectors.graph_cache import GraphCache
from deeplens.vectors.tenant_index import HNSW_MIN_ROWS, Row, TenantIndex

log = logging.getLogger(__name__)

OVERLAP = timedelta(seconds=5)  # tables from before row versions only
TOMBSTONE_OVERLAP = 1000
TOMBSTONE_SWEEP_S = 5.0


class MemoryIndexedStore:
    """A ``VectorStore`` that writes through to LanceDB and searches in memory."""

    backend = "lancedb"

    def __init__(self, store: Any, tombstones: Any = None, refresh_s: float = 0.5,
                 hnsw_min_rows: int = HNSW_MIN_ROWS, max_bytes: int = 0,
                 graphs: GraphCache | None = None) -> None:
        self.store = store  # LanceStore: the durable truth
        self.graphs = graphs  # built HNSW graphs on disk: a restart reads, not rebuilds
        self.tombstones = tombstones  # Tombstones of the catalog, or None
        self.refresh_s = refresh_s
        self.hnsw_min_rows = hnsw_min_rows
        self.max_bytes = max_bytes  # 0: unbounded
        self._indexes: OrderedDict[tuple[str, str], TenantIndex] = OrderedDict()
        self._versions: dict[str, int] = {}  # model -> table version applied
        self._watermarks: dict[str, datetime] = {}  # legacy tables: newest indexed_at seen
        self._tomb_seq = tombstones.last_seq() if tombstones is not None else 0
        self._tomb_swept = time.monotonic()
        self._lock = threading.Lock()
        self._apply = threading.Lock()  # a load and a refresh never interleave
        self._loading: dict[tuple[str, str], threading.Lock] = {}
        self._stop = threading.Event()
        self._refresher = threading.Thread(target=self._refresh_loop, daemon=True,
                                           name="vector-refresh")
        self._refresher.start()

    # -- the VectorStore protocol ---------------------------------------------------
    def upsert(self, model_id: str, records: list[VectorRecord]) -> None:
        self.store.upsert(model_id, records)
        now = datetime.now(UTC)
        loaded = {}
        for record in records:
            if (model_id, record.tenant_id) in self._indexes:
                loaded.setdefault(record.tenant_id, []).append(Row(
                    record.image_id, np.asarray(record.vector, np.float32),
                    record.original_file_name, record.uploaded_at, now))
        self._upsert_alive(model_id, loaded)

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
            try:
                self._indexes.move_to_end(key)  # most recently used
            except KeyError:  # evicted meanwhile: this search still has its index
                pass
            return index
        with self._lock:
            gate = self._loading.setdefault(key, threading.Lock())
        with gate:  # one load per tenant, however many queries arrive at once
            index = self._indexes.get(key)
            if index is None:
                index = self._load(model_id, tenant_id)
                self._evict(keep=key)
        return index

    def _load(self, model_id: str, tenant_id: str) -> TenantIndex | None:
        """Read the tenant's rows and start following the table from the version read
        before them: a write after it comes by refresh, one before it is in the rows."""
        with self._apply:
            version = self.store.version(model_id)
            if version is None:
                self._watermarks.setdefault(model_id, datetime.now(UTC))
            else:
                self._versions.setdefault(model_id, version)
            dead = self.tombstones.of_tenant(tenant_id) if self.tombstones is not None \
                else set()
            saving = self.graphs is not None and version is not None
            index = self.graphs.resume(self.store, model_id, tenant_id, dead,
                                       self.hnsw_min_rows) if saving else None  # type: ignore[union-attr]
            if index is None:
                rows = self.store.rows(model_id, tenant_id=tenant_id)
                if rows is None:
                    return None
                index = TenantIndex(self._dim(rows), self.hnsw_min_rows)
                index.version_floor = version
                if saving:
                    index.on_built = partial(self.graphs.save, model_id, tenant_id)  # type: ignore[union-attr]
                index.load(*columns_of(rows, dead))
            index.version_floor = version
            self._indexes[(model_id, tenant_id)] = index
            return index

    def memory_bytes(self) -> int:
        return sum(index.nbytes() for index in list(self._indexes.values()))

    def _evict(self, keep: tuple[str, str]) -> None:
        """Drop the least recently searched tenants while over ``max_bytes``."""
        if not self.max_bytes:
            return
        total = self.memory_bytes()
        for key in list(self._indexes):
            if total <= self.max_bytes:
                break
            if key != keep:
                index = self._indexes.pop(key, None)
                if index is not None:
                    total -= index.nbytes()
                    log.info("search index over budget: dropped %s", key)

    def _alive(self, by_tenant: dict[str, list[Row]]) -> dict[str, list[Row]]:
        """``by_tenant`` without the rows of deleted images: the store keeps a deleted
        image's vector until an indexer removes it, and an index must never take it
        back in, on load, refresh or upsert, however far that indexer lags."""
        if self.tombstones is None:
            return by_tenant
        dead = self.tombstones.dead((t, r.image_id) for t, rows in by_tenant.items()
                                    for r in rows)
        if not dead:
            return by_tenant
        return {t: [r for r in rows if (t, r.image_id) not in dead]
                for t, rows in by_tenant.items()}

    def _upsert_alive(self, model_id: str, by_tenant: dict[str, list[Row]]) -> None:
        for tenant, tenant_rows in self._alive(by_tenant).items():
            index = self._indexes.get((model_id, tenant))
            if index is not None and tenant_rows:
                index.upsert(tenant_rows)

    @staticmethod
    def _dim(rows: Any) -> int:
        field = rows.schema.field("vector").type
        return int(field.list_size)

    def refresh(self) -> None:
        """Apply the rows written and the images deleted since the last refresh."""
        with self._apply:
            for model_id in list({m for m, _ in self._indexes}):
                version = self.store.version(model_id)
                if version is None:
                    self._refresh_by_stamp(model_id)
                    continue
                applied = self._versions.setdefault(model_id, version)
                if version <= applied:
                    continue  # nothing written since: no read at all
                rows = self.store.rows(model_id, after_version=applied)
                if rows is not None and rows.num_rows:
                    self._apply_rows(model_id, rows)
                self._versions[model_id] = version
                for (model, _), index in list(self._indexes.items()):
                    if model == model_id:
                        index.version_floor = version  # every row up to it is applied
            self._apply_tombstones()

    def _apply_rows(self, model_id: str, rows: Any) -> dict[str, list[Row]]:
        by_tenant: dict[str, list[Row]] = {}
        tenants = rows.column("tenant_id").to_pylist()
        loaded = {t for m, t in self._indexes if m == model_id}
        for tenant, row in zip(tenants, rows_of(rows), strict=True):
            if tenant in loaded:
                by_tenant.setdefault(tenant, []).append(row)
        self._upsert_alive(model_id, by_tenant)
        return by_tenant

    def _refresh_by_stamp(self, model_id: str) -> None:
        """A table from before row versions: rows stamped after the watermark, re-read
        over ``OVERLAP`` (recreate the table to follow it by version)."""
        since = self._watermarks.get(model_id, datetime.now(UTC)) - OVERLAP
        rows = self.store.rows(model_id, since=since)
        if rows is None or rows.num_rows == 0:
            return
        by_tenant = self._apply_rows(model_id, rows)
        stamps = [r.indexed_at for rs in by_tenant.values() for r in rs if r.indexed_at]
        newest = max(stamps, default=since + OVERLAP)
        self._watermarks[model_id] = max(self._watermarks.get(model_id, newest), newest)

    def _apply_tombstones(self) -> None:
        if self.tombstones is None:
            return
        sweep = time.monotonic() - self._tomb_swept >= TOMBSTONE_SWEEP_S
        found = []
        if sweep:  # numbers taken early but committed late (PostgreSQL)
            self._tomb_swept = time.monotonic()
            found = self.tombstones.after(self._tomb_seq - TOMBSTONE_OVERLAP,
                                          upto=self._tomb_seq)
        while True:
            fresh = self.tombstones.after(self._tomb_seq)
            found.extend(fresh)
            if fresh:
                self._tomb_seq = fresh[-1][0]
            if len(fresh) < 10_000:
                break
        by_tenant: dict[str, list[TenantIndex]] = {}
        for (_, tenant), index in list(self._indexes.items()):
            by_tenant.setdefault(tenant, []).append(index)
        for _, tenant, image_id in found:
            for index in by_tenant.get(tenant, ()):
                index.remove(image_id)

    def _refresh_loop(self) -> None:
        while not self._stop.wait(self.refresh_s):
            if not self._indexes:
                continue
            try:
                self.refresh()
            except Exception as exc:  # noqa: BLE001 - the store may be busy: try again soon
                log.warning("vector index refresh failed: %s", exc)
