"""The embedded vector store: LanceDB tables in the data dir, one per model id.

The durable half of the default store: indexer actors write here (``merge_insert``
by deterministic id), and scalar indexes on ``id``, ``tenant_id`` and
``indexed_at`` keep look-ups and deletes cheap. Tables are created with stable row
ids, so every row carries the table version that last wrote it
(``_row_last_updated_at_version``): readers ask for "rows written after version v",
an order the commits themselves define, with no clock involved. Searches
are answered by the in-memory index of ``deeplens/vectors/memory.py``, which reads
its rows from here; a direct ``search`` (exact, prefiltered by tenant) remains for
tools and tests, and LanceDB's own ANN index is built only if ``ann_min_rows`` asks.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from deeplens.settings import VectorStoreSettings
from deeplens.vectors.base import (
    Hit,
    VectorRecord,
    VectorStoreUnavailable,
    collection_name,
    object_id,
)

log = logging.getLogger(__name__)


OPTIMIZE_EVERY_UPSERTS = 100
ROW_VERSIONS = b"deeplens.row_versions"  # schema metadata: the table has stable row ids
VERSION_COLUMN = "_row_last_updated_at_version"


_SESSIONS: dict[tuple[int, int], Any] = {}
_SESSIONS_LOCK = threading.Lock()


def lance_session(settings: VectorStoreSettings) -> Any:
    """One LanceDB session (its caches) per process and size, shared by every store.

    LanceDB's defaults let a process's caches grow to 1 GiB of metadata and 6 GiB of
    index: a reader that follows a table other processes write in small batches (the
    Gateway) caches metadata per version read, so it grows with every write."""
    import lancedb

    key = (settings.lance_metadata_cache_mb, settings.lance_index_cache_mb)
    with _SESSIONS_LOCK:
        if key not in _SESSIONS:
            _SESSIONS[key] = lancedb.Session(index_cache_size_bytes=key[1] << 20,
                                             metadata_cache_size_bytes=key[0] << 20)
        return _SESSIONS[key]


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


class LanceStore:
    backend = "lancedb"

    def __init__(self, path: Path, settings: VectorStoreSettings) -> None:
        import lancedb

        path.mkdir(parents=True, exist_ok=True)
        # Always read the latest version: writers are other processes (indexer actors).
        self.db = lancedb.connect(str(path), read_consistency_interval=timedelta(0),
                                  session=lance_session(settings))
        self.settings = settings
        self._tables: dict[str, Any] = {}
        self._indexed: set[str] = set()  # tables known to have their ANN index
        self._scalar: set[str] = set()  # tables known to have their id/tenant_id indexes
        self._upserts: dict[str, int] = {}
        self._lock = threading.Lock()

    def _schema(self, dim: int) -> pa.Schema:
        return pa.schema([
            pa.field("id", pa.string()),
            pa.field("tenant_id", pa.string()),
            pa.field("image_id", pa.string()),
            pa.field("vector", pa.list_(pa.float32(), dim)),
            pa.field("original_file_name", pa.string()),
            pa.field("uploaded_at", pa.timestamp("us", tz="UTC")),
            # When this version of the row was written: readers that keep an in-memory
            # index (the search path) pick up new rows by it.
            pa.field("indexed_at", pa.timestamp("us", tz="UTC")),
        ], metadata={ROW_VERSIONS: b"1"})

    def _table(self, model_id: str, dim: int | None = None) -> Any:
        name = collection_name(model_id)
        with self._lock:
            if name in self._tables:
                return self._tables[name]
            try:
                table = self.db.open_table(name)
            except (FileNotFoundError, ValueError):
                if dim is None:
                    return None
                try:
                    table = self.db.create_table(
                        name, schema=self._schema(dim),
                        storage_options={"new_table_enable_stable_row_ids": "true"})
                except (OSError, ValueError):  # created concurrently by another writer
                    table = self.db.open_table(name)
            if "indexed_at" not in table.schema.names:  # a table from before the column
                try:
                    table.add_columns(pa.field("indexed_at", pa.timestamp("us", tz="UTC")))
                except Exception as exc:  # noqa: BLE001 - another process added it first
                    log.info("%s: indexed_at not added: %s", name, exc)
            self._tables[name] = table
            return table

    def upsert(self, model_id: str, records: list[VectorRecord]) -> None:
        if not records:
            return
        dim = int(records[0].vector.shape[0])
        table = self._table(model_id, dim)
        now = datetime.now(UTC)
        batch = pa.Table.from_pylist([
            {"id": object_id(r.tenant_id, r.image_id), "tenant_id": r.tenant_id,
             "image_id": r.image_id, "vector": np.asarray(r.vector, dtype=np.float32),
             "original_file_name": r.original_file_name,
             "uploaded_at": r.uploaded_at.astimezone(UTC), "indexed_at": now}
            for r in _last_per_id(records)
        ], schema=self._schema(dim))
        for attempt in range(5):
            try:
                (table.merge_insert("id").when_matched_update_all()
                 .when_not_matched_insert_all().execute(batch))
                break
            except Exception as exc:  # noqa: BLE001 - commit conflicts between writers
                if attempt == 4:
                    raise VectorStoreUnavailable(f"LanceDB upsert failed: {exc}") from exc
                time.sleep(0.05 * 2**attempt)
        self._ensure_scalar_indexes(table)
        self._maybe_index(table)

    def _ensure_scalar_indexes(self, table: Any) -> None:
        """BTREE indexes on ``id`` (get-by-id, delete) and ``tenant_id`` (the prefilter),
        so neither scans the table. Rows written after the index are still found: LanceDB
        searches its unindexed tail too, and ``optimize()`` folds it in."""
        if table.name in self._scalar:
            return
        present = {tuple(i.columns) for i in table.list_indices()}
        for column in ("id", "tenant_id", "indexed_at"):
            if (column,) not in present:
                try:
                    table.create_scalar_index(column, index_type="BTREE")
                except Exception as exc:  # noqa: BLE001 - another writer made it first
                    log.info("%s: scalar index on %s not created: %s", table.name, column, exc)
        self._scalar.add(table.name)

    def _has_index(self, table: Any) -> bool:
        """Whether the table has its ANN index; remembered once seen (it is never dropped)."""
        if table.name not in self._indexed and _vector_indices(table):
            self._indexed.add(table.name)
        return table.name in self._indexed

    def _maybe_index(self, table: Any) -> None:
        rows = table.count_rows()
        if not self.settings.ann_min_rows or rows < self.settings.ann_min_rows:
            # Fold new rows into the scalar indexes and compact small fragments now and
            # then; each upsert adds a fragment, and a table of thousands reads slowly.
            self._upserts[table.name] = self._upserts.get(table.name, 0) + 1
            if self._upserts[table.name] % OPTIMIZE_EVERY_UPSERTS == 0:
                table.optimize()
            return
        indices = _vector_indices(table)
        if not indices:
            log.info("%s: %d rows, building IVF_HNSW_SQ cosine index", table.name, rows)
            from lancedb.index import IvfHnswSq

            table.create_index("vector", config=IvfHnswSq(distance_type="cosine"))
            return
        stats = table.index_stats(indices[0].name)
        if stats is not None and stats.num_unindexed_rows > max(1000, rows // 5):
            table.optimize()

    def search(self, model_id: str, tenant_id: str, vector: np.ndarray, k: int,
               exclude: frozenset[str] = frozenset()) -> list[Hit]:
        table = self._table(model_id)
        if table is None:
            return []
        where = f"tenant_id = {_quote(tenant_id)}"
        if exclude:
            where += f" AND image_id NOT IN ({', '.join(_quote(e) for e in exclude)})"
        query = (table.search(np.asarray(vector, dtype=np.float32), vector_column_name="vector")
                 .distance_type("cosine").where(where, prefilter=True).limit(k)
                 .select(["image_id", "original_file_name", "uploaded_at", "_distance"]))
        if self._has_index(table):
            query = query.nprobes(self.settings.ann_nprobes).refine_factor(2)
        rows = query.to_arrow().to_pylist()
        return [Hit(r["image_id"], 1.0 - float(r["_distance"]), r["original_file_name"],
                    r["uploaded_at"]) for r in rows]

    def get_vector(self, model_id: str, tenant_id: str, image_id: str) -> np.ndarray | None:
        table = self._table(model_id)
        if table is None:
            return None
        rows = (table.search().where(f"id = {_quote(object_id(tenant_id, image_id))}")
                .select(["vector"]).limit(1).to_arrow().to_pylist())
        return np.asarray(rows[0]["vector"], dtype=np.float32) if rows else None

    def delete(self, tenant_id: str, image_id: str) -> int:
        removed = 0
        for name in self.db.list_tables().tables:
            if not name.startswith("DeepLens_"):
                continue
            table = self.db.open_table(name)
            where = f"id = {_quote(object_id(tenant_id, image_id))}"
            before = table.count_rows(where)
            if before:
                table.delete(where)
                removed += before
        return removed

    ROW_COLUMNS = ["image_id", "tenant_id", "vector", "original_file_name", "uploaded_at",
                   "indexed_at"]

    def version(self, model_id: str) -> int | None:
        """The model table's newest version, for readers that follow it by version; None
        for a missing table or one from before row versions (created without stable row
        ids: its readers fall back to ``indexed_at``)."""
        table = self._table(model_id)
        if table is None or ROW_VERSIONS not in (table.schema.metadata or {}):
            return None
        table.checkout_latest()
        return int(table.version)

    def rows(self, model_id: str, *, tenant_id: str | None = None,
             since: datetime | None = None, after_version: int | None = None
             ) -> pa.Table | None:
        """Rows of a model's table (one tenant's, those written after a table version,
        or, for a table from before row versions, since a time), for readers that keep
        their own index; None if the table does not exist."""
        table = self._table(model_id)
        if table is None:
            return None
        clauses = []
        if tenant_id is not None:
            clauses.append(f"tenant_id = {_quote(tenant_id)}")
        if after_version is not None:
            clauses.append(f"{VERSION_COLUMN} > {int(after_version)}")
        if since is not None:
            stamp = since.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
            clauses.append(f"indexed_at > TIMESTAMP '{stamp}'")
        query = table.search().select(self.ROW_COLUMNS)
        if clauses:
            query = query.where(" AND ".join(clauses))
        return query.limit(None).to_arrow()  # type: ignore[no-any-return]

    def dim(self, model_id: str) -> int | None:
        table = self._table(model_id)
        return None if table is None else int(table.schema.field("vector").type.list_size)

    def ids_and_versions(self, model_id: str, tenant_id: str) -> pa.Table | None:
        """A tenant's image ids with the table version that last wrote each (no vectors):
        what a reader with a saved index needs to catch up (``graph_cache``)."""
        table = self._table(model_id)
        if table is None:
            return None
        return table.search().select(["image_id", VERSION_COLUMN]).where(  # type: ignore[no-any-return]
            f"tenant_id = {_quote(tenant_id)}").limit(None).to_arrow()

    def count(self, model_id: str, tenant_id: str) -> int:
        table = self._table(model_id)
        return 0 if table is None else int(table.count_rows(f"tenant_id = {_quote(tenant_id)}"))

    def drop_model(self, model_id: str) -> bool:
        name = collection_name(model_id)
        with self._lock:
            self._tables.pop(name, None)
            self._indexed.discard(name)
            self._scalar.discard(name)
            try:
                self.db.drop_table(name)
            except (FileNotFoundError, ValueError):
                return False
        return True

    def close(self) -> None:
        self._tables.clear()


def _vector_indices(table: Any) -> list[Any]:
    return [i for i in table.list_indices() if tuple(i.columns) == ("vector",)]


def _last_per_id(records: list[VectorRecord]) -> list[VectorRecord]:
    """merge_insert rejects two source rows for one key: keep the last of each."""
    by_id = {(r.tenant_id, r.image_id): r for r in records}
    return list(by_id.values())
