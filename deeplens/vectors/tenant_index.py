"""One tenant's vectors in memory: a flat float32 matrix searched exactly, plus a usearch
HNSW graph (f16, cosine) from ``HNSW_MIN_ROWS`` rows on, built in a background thread
while the flat path keeps answering. Used by ``deeplens/vectors/memory.py``.

A removed image's slot is reused by the next one, so the flat scan covers few dead rows.
Memory per image: a float32 row (2 KB at 512-d) plus ~220 bytes of id, name and int64
stamps; once the graph is built, its f16 copy (~1.2 KB with links) is the only one."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np

from deeplens.vectors.base import Hit

log = logging.getLogger(__name__)

HNSW_MIN_ROWS = 20_000
HNSW_EXPANSION_SEARCH = 128
# Vectors per usearch add() while a graph builds: the call holds the GIL throughout (a
# 100k build froze every search of the process for ~55 s, benchmarks/scale_bench.py),
# so the build goes in slices and other threads run between them.
HNSW_ADD_CHUNK = 256
# An id string, its dict entry and list slots, a name, two datetimes (measured by
# benchmarks/scale_bench.py, which reports the process's growth per image as well).
PER_SLOT_OBJECT_BYTES = 220  # recall@10 ~0.98 at 100k (benchmarks/RESULTS.md)
_NO_TIME = np.iinfo(np.int64).min  # a stamp that is None


def _micros(when: datetime | None) -> int:
    if when is None:
        return int(_NO_TIME)
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return (int(when.timestamp()) * 1_000_000) + when.microsecond


def _when(micros: int) -> datetime | None:
    if micros == _NO_TIME:
        return None
    seconds, rest = divmod(int(micros), 1_000_000)
    return datetime.fromtimestamp(seconds, UTC).replace(microsecond=rest)


@dataclass
class Row:
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
        self.uploaded = np.full(64, _NO_TIME, dtype=np.int64)  # microseconds since epoch
        self.stamps = np.full(64, _NO_TIME, dtype=np.int64)
        # The flat copy; None once the HNSW graph holds the vectors (its f16 copy).
        self.vectors: np.ndarray | None = np.zeros((64, dim), dtype=np.float32)
        self.alive = np.zeros(64, dtype=bool)
        self.used = 0
        self.free: list[int] = []  # slots of removed images, reused first
        self.hnsw: Any = None
        self._building = False
        self._changed_while_building: set[int] = set()
        self._lock = threading.RLock()
        # The store's table version all rows at or below which the index holds (set by
        # its owner), and who to hand a freshly built graph to (``graph_cache``).
        self.version_floor: int | None = None
        self.on_built: Callable[[dict[str, Any], Any], None] | None = None

    def __len__(self) -> int:
        return len(self.slots)

    # -- writes ---------------------------------------------------------------------
    def upsert(self, rows: list[Row]) -> None:
        with self._lock:
            for row in rows:
                stamp = _micros(row.indexed_at)
                slot = self.slots.get(row.image_id)
                if slot is not None:
                    held = int(self.stamps[slot])
                    if held != _NO_TIME and stamp != _NO_TIME and stamp <= held:
                        continue  # the version we hold already (re-read in the overlap)
                else:
                    slot = self._new_slot(row.image_id)
                vector = np.asarray(row.vector, dtype=np.float32)
                if self.vectors is not None:
                    self.vectors[slot] = vector
                self.names[slot] = row.name
                self.uploaded[slot], self.stamps[slot] = _micros(row.uploaded_at), stamp
                self.alive[slot] = True
                self._touch(slot, present=True, vector=vector)
            self._maybe_build()

    def load(self, ids: list[str], vectors: np.ndarray, names: list[str],
             uploaded_us: np.ndarray, stamps_us: np.ndarray) -> None:
        """Fill an empty index from columns at once (a Gateway loading a tenant: ~10x
        faster than ``upsert`` row by row). An id given twice keeps its newest stamp."""
        with self._lock:
            if self.slots or len(set(ids)) != len(ids):
                stamps = [_when(int(x)) for x in stamps_us]
                self.upsert([Row(i, vectors[k], names[k], _when(int(uploaded_us[k])),
                                 stamps[k]) for k, i in enumerate(ids)])
                return
            n = len(ids)
            size = max(64, n)
            self.vectors = np.zeros((size, self.dim), dtype=np.float32)
            self.vectors[:n] = vectors
            self.alive = np.zeros(size, dtype=bool)
            self.alive[:n] = True
            self.uploaded = np.full(size, _NO_TIME, dtype=np.int64)
            self.uploaded[:n] = uploaded_us
            self.stamps = np.full(size, _NO_TIME, dtype=np.int64)
            self.stamps[:n] = stamps_us
            self.ids, self.names = list(ids), list(names)
            self.slots = dict(zip(self.ids, range(n), strict=True))
            self.used = n
            self._maybe_build()

    def remove(self, image_id: str) -> bool:
        with self._lock:
            slot = self.slots.pop(image_id, None)
            if slot is None:
                return False
            self.alive[slot] = False
            self._touch(slot, present=False)
            self.free.append(slot)
            return True

    def nbytes(self) -> int:
        """Memory held, about: arrays, the per-slot Python objects, the HNSW graph."""
        graph = int(self.hnsw.memory_usage) if self.hnsw is not None else 0
        flat = self.vectors.nbytes if self.vectors is not None else 0
        return flat + self.alive.nbytes + self.uploaded.nbytes + self.stamps.nbytes \
            + PER_SLOT_OBJECT_BYTES * self.used + graph

    def _new_slot(self, image_id: str) -> int:
        if self.free:
            slot = self.free.pop()
            self.slots[image_id] = slot
            self.ids[slot], self.names[slot] = image_id, ""
            self.uploaded[slot] = self.stamps[slot] = _NO_TIME
            return slot
        if self.used == len(self.alive):
            grow = max(64, len(self.alive))
            if self.vectors is not None:
                self.vectors = np.concatenate(
                    [self.vectors, np.zeros((grow, self.dim), np.float32)])
            self.alive = np.concatenate([self.alive, np.zeros(grow, dtype=bool)])
            self.uploaded = np.concatenate([self.uploaded, np.full(grow, _NO_TIME, np.int64)])
            self.stamps = np.concatenate([self.stamps, np.full(grow, _NO_TIME, np.int64)])
        slot = self.used
        self.used += 1
        self.slots[image_id] = slot
        self.ids.append(image_id)
        self.names.append("")
        return slot

    def _touch(self, slot: int, present: bool, vector: np.ndarray | None = None) -> None:
        if self._building:
            self._changed_while_building.add(slot)
        elif self.hnsw is not None:
            if self.hnsw.contains(slot):
                self.hnsw.remove(slot)
            if present:
                self.hnsw.add(slot, vector)

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
            snapshot = self._snapshot() if self.on_built is not None else None
        started = time.perf_counter()
        graph = Index(ndim=self.dim, metric="cos", dtype="f16", connectivity=16,
                      expansion_add=128, expansion_search=HNSW_EXPANSION_SEARCH)
        for start in range(0, len(keys), HNSW_ADD_CHUNK):  # usearch holds the GIL per call
            graph.add(keys[start:start + HNSW_ADD_CHUNK], vectors[start:start + HNSW_ADD_CHUNK],
                      threads=2)
            time.sleep(0)  # let searches and the refresh of this process run meanwhile
        if snapshot is not None and self.on_built is not None:
            try:  # before any later change goes in: the graph is the snapshot's
                self.on_built(snapshot, graph)
            except Exception as exc:  # noqa: BLE001 - a cache that cannot be written
                log.warning("search graph not saved: %s", exc)
        with self._lock:
            for slot in self._changed_while_building:
                if graph.contains(slot):
                    graph.remove(slot)
                if self.alive[slot]:
                    graph.add(slot, self.vectors[slot])
            self._changed_while_building = set()
            self.hnsw, self._building = graph, False
            self.vectors = None  # the graph's f16 copy is the only one from here on
        log.info("HNSW over %d vectors built in %.1f s", len(keys), time.perf_counter() - started)

    def _snapshot(self) -> dict[str, Any]:
        used = self.used
        return {"dim": self.dim, "floor": self.version_floor, "ids": list(self.ids[:used]),
                "names": list(self.names[:used]), "alive": self.alive[:used].copy(),
                "uploaded": self.uploaded[:used].copy(), "stamps": self.stamps[:used].copy()}

    def restore(self, ids: list[str], names: list[str], alive: np.ndarray,
                uploaded_us: np.ndarray, stamps_us: np.ndarray, graph: Any) -> None:
        """Take a saved graph and the slot table it was built from (``graph_cache``)."""
        with self._lock:
            used = len(ids)
            size = max(64, used)
            self.alive = np.zeros(size, dtype=bool)
            self.alive[:used] = alive
            self.uploaded = np.full(size, _NO_TIME, dtype=np.int64)
            self.uploaded[:used] = uploaded_us
            self.stamps = np.full(size, _NO_TIME, dtype=np.int64)
            self.stamps[:used] = stamps_us
            self.ids, self.names, self.used = list(ids), list(names), used
            live = np.flatnonzero(self.alive[:used]).tolist()
            self.slots = {self.ids[slot]: slot for slot in live}
            self.free = sorted(set(range(used)) - set(live), reverse=True)
            self.vectors, self.hnsw = None, graph

    # -- reads ----------------------------------------------------------------------
    def wait_built(self, timeout_s: float = 300) -> bool:
        deadline = time.monotonic() + timeout_s
        while self._building and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.hnsw is not None

    def vector(self, image_id: str) -> np.ndarray | None:
        with self._lock:
            slot = self.slots.get(image_id)
            return None if slot is None else self.vectors_of(np.array([slot]))[0].copy()

    def vectors_of(self, slots: np.ndarray) -> np.ndarray:
        """The float32 vectors of ``slots``: from the flat copy, or from the graph's."""
        if self.vectors is not None:
            return self.vectors[slots]
        if not len(slots):
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.asarray(self.hnsw.get(np.asarray(slots, dtype=np.int64), dtype=np.float32),
                          dtype=np.float32).reshape(len(slots), self.dim)

    def search(self, query: np.ndarray, k: int, exclude: frozenset[str]) -> list[Hit]:
        query = np.asarray(query, dtype=np.float32)
        with self._lock:
            if not self.slots:
                return []
            if self.hnsw is not None and not self._building:
                slots = self._hnsw_candidates(query, k + len(exclude) + 10)
            else:
                slots = self._flat_candidates(query, k + len(exclude))
            scores = self.vectors_of(slots) @ query if len(slots) else np.zeros(0)
            order = np.argsort(-scores, kind="stable")
            hits = []
            for i in order:
                slot = int(slots[i])
                image_id = self.ids[slot]
                if image_id in exclude:
                    continue
                hits.append(Hit(image_id, float(scores[i]), self.names[slot],
                                _when(self.uploaded[slot])))
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
