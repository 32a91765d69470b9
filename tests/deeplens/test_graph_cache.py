"""A Gateway restart reads a tenant's saved HNSW graph and catches up with the store,
instead of rebuilding the graph (half an hour of two cores at 1M images)."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np

from deeplens.settings import VectorStoreSettings
from deeplens.tombstones import Tombstones
from deeplens.vectors.base import VectorRecord
from deeplens.vectors.graph_cache import GraphCache
from deeplens.vectors.lancedb import LanceStore
from deeplens.vectors.memory import MemoryIndexedStore

NOW = datetime(2026, 12, 1, tzinfo=UTC)
DIM = 16


def unit(rng: np.random.Generator, n: int) -> np.ndarray:
    x = rng.normal(size=(n, DIM))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def records(ids: list[str], vectors: np.ndarray) -> list[VectorRecord]:
    return [VectorRecord("acme", i, v, f"{i}.jpg", NOW) for i, v in zip(ids, vectors, strict=True)]


def gateway(tmp_path, graphs: bool) -> MemoryIndexedStore:
    return MemoryIndexedStore(LanceStore(tmp_path / "vectors", VectorStoreSettings()),
                              Tombstones(f"sqlite:///{tmp_path}/catalog.db"), refresh_s=3600,
                              hnsw_min_rows=200,
                              graphs=GraphCache(tmp_path / "graphs") if graphs else None)


def answers(store: MemoryIndexedStore, queries: np.ndarray) -> list[list[str]]:
    return [[h.image_id for h in store.search("m", "acme", q, 5)] for q in queries]


def test_a_restart_resumes_the_saved_graph_and_catches_up_with_the_store(tmp_path) -> None:
    rng = np.random.default_rng(0)
    ids = [f"img{i}" for i in range(400)]
    vectors = unit(rng, 400)
    first = gateway(tmp_path, graphs=True)
    first.store.upsert("m", records(ids, vectors))
    first.search("m", "acme", vectors[0], 5)
    index = first.tenant_index("m", "acme")
    assert index is not None and index.wait_built(120)
    assert len(list((tmp_path / "graphs").glob("*.usearch"))) == 1
    first.close()

    # while no Gateway runs: indexers write new and changed vectors, users delete
    writer = LanceStore(tmp_path / "vectors", VectorStoreSettings())
    fresh = unit(rng, 30)
    writer.upsert("m", records([f"new{i}" for i in range(30)], fresh))
    changed = unit(rng, 5)
    writer.upsert("m", records(ids[10:15], changed))
    tombstones = Tombstones(f"sqlite:///{tmp_path}/catalog.db")
    for image_id in ids[20:25]:  # deleted; the indexer has removed three of them so far
        tombstones.bury("acme", image_id)
    for image_id in ids[20:23]:
        writer.delete("acme", image_id)
    writer.delete("acme", ids[30])  # gone from the store without a tombstone (pruned)

    resumed = gateway(tmp_path, graphs=True)
    resumed.search("m", "acme", vectors[0], 5)
    index = resumed.tenant_index("m", "acme")
    assert index is not None and index.hnsw is not None and index.vectors is None, \
        "the saved graph was not used: the restart rebuilt it"
    full = gateway(tmp_path, graphs=False)  # the reference: every row read again
    assert full.count("m", "acme") == resumed.count("m", "acme") == 400 + 30 - 5 - 1
    queries = np.concatenate([fresh[:10], changed, vectors[20:25], vectors[30:31],
                              vectors[100:110]])
    got, want = answers(resumed, queries), answers(full, queries)
    assert [a[0] for a in got] == [a[0] for a in want]  # the nearest, by each
    assert all(a[0] == f"new{i}" for i, a in enumerate(got[:10]))
    assert [a[0] for a in got[10:15]] == ids[10:15]  # the changed vectors, not the old
    returned = {image_id for a in got for image_id in a}
    assert not returned & set(ids[20:25] + [ids[30]])
    resumed.close()
    full.close()


def test_a_damaged_or_foreign_saved_graph_falls_back_to_a_full_load(tmp_path) -> None:
    rng = np.random.default_rng(1)
    ids = [f"img{i}" for i in range(300)]
    vectors = unit(rng, 300)
    first = gateway(tmp_path, graphs=True)
    first.store.upsert("m", records(ids, vectors))
    first.search("m", "acme", vectors[0], 5)
    assert first.tenant_index("m", "acme").wait_built(120)  # type: ignore[union-attr]
    first.close()
    (npz,) = (tmp_path / "graphs").glob("*.npz")
    npz.write_bytes(b"not a saved graph")
    again = gateway(tmp_path, graphs=True)
    assert [h.image_id for h in again.search("m", "acme", vectors[7], 1)] == ["img7"]
    index = again.tenant_index("m", "acme")
    assert index is not None and index.vectors is not None  # loaded in full, building anew
    assert again.count("m", "acme") == 300
    again.close()
