"""One behaviour, every backend: the same tests run on LanceDB, on the Weaviate
stand-in (tests/weaviate_standin) and, with DEEPLENS_TEST_WEAVIATE_URL set, on a
real Weaviate."""

from __future__ import annotations

import os
import uuid
from datetime import UTC, datetime

import numpy as np
import pytest

from deeplens.settings import VectorStoreSettings
from deeplens.vectors.base import VectorRecord, collection_name, object_id

DIM = 16


def unit(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v)).astype(np.float32)


def records(tenant: str, count: int, seed: int = 0, prefix: str = "img") -> list[VectorRecord]:
    rng = np.random.default_rng(seed)
    now = datetime(2026, 11, 26, tzinfo=UTC)
    return [VectorRecord(tenant, f"{prefix}{i}", unit(rng.normal(size=DIM)), f"{i}.jpg", now)
            for i in range(count)]


def _lancedb(tmp_path):
    from deeplens.vectors.lancedb import LanceStore

    return LanceStore(tmp_path / "vectors", VectorStoreSettings())


def _weaviate_standin(tmp_path):
    from deeplens.vectors.weaviate import WeaviateStore
    from tests.weaviate_standin import running_standin

    server = running_standin()
    return WeaviateStore(VectorStoreSettings(
        backend="weaviate", weaviate_url=server.http_url, weaviate_grpc_port=server.grpc_port))


def _weaviate_real(tmp_path):
    url = os.environ.get("DEEPLENS_TEST_WEAVIATE_URL")
    if not url:
        pytest.skip("DEEPLENS_TEST_WEAVIATE_URL not set")
    from deeplens.vectors.weaviate import WeaviateStore

    return WeaviateStore(VectorStoreSettings(
        backend="weaviate", weaviate_url=url,
        weaviate_grpc_port=int(os.environ.get("DEEPLENS_TEST_WEAVIATE_GRPC_PORT", "50051"))))


def _lancedb_memory(tmp_path):
    """What the search path uses: LanceDB with an in-memory index per tenant."""
    from deeplens.tombstones import Tombstones
    from deeplens.vectors.lancedb import LanceStore
    from deeplens.vectors.memory import MemoryIndexedStore

    return MemoryIndexedStore(LanceStore(tmp_path / "lance", VectorStoreSettings()),
                              Tombstones(f"sqlite:///{tmp_path}/catalog.db"), refresh_s=0.1)


BACKENDS = [
    pytest.param(_lancedb, id="lancedb"),
    pytest.param(_lancedb_memory, id="lancedb-memory"),
    pytest.param(_weaviate_standin, id="weaviate-standin"),
    pytest.param(_weaviate_real, id="weaviate-real", marks=pytest.mark.weaviate),
]


@pytest.fixture(params=BACKENDS)
def store(request, tmp_path):
    backend = request.param(tmp_path)
    yield backend
    backend.close()


@pytest.fixture
def model() -> str:
    return f"test-model-{uuid.uuid4().hex[:6]}/random-init"


def test_search_finds_the_vector_itself_first(store, model) -> None:
    data = records("alpha", 40)
    store.upsert(model, data)
    hits = store.search(model, "alpha", data[7].vector, k=5)
    assert hits[0].image_id == "img7" and hits[0].score == pytest.approx(1.0, abs=1e-3)
    assert len(hits) == 5 and hits[0].original_file_name == "7.jpg"
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


def test_tenants_never_see_each_other(store, model) -> None:
    store.upsert(model, records("alpha", 10, seed=1))
    store.upsert(model, records("beta", 10, seed=1, prefix="beta"))
    hits = store.search(model, "beta", records("alpha", 10, seed=1)[3].vector, k=20)
    assert hits and all(h.image_id.startswith("beta") for h in hits)
    assert store.count(model, "alpha") == 10 and store.count(model, "beta") == 10
    assert store.get_vector(model, "beta", "img3") is None


def test_redelivered_upsert_leaves_one_vector(store, model) -> None:
    data = records("alpha", 5)
    store.upsert(model, data)
    store.upsert(model, data)
    store.upsert(model, [data[0], data[0]])
    assert store.count(model, "alpha") == 5


def test_models_never_mix(store, model) -> None:
    other = model.replace("test-model", "other-model")
    store.upsert(model, records("alpha", 5))
    assert store.search(other, "alpha", records("alpha", 5)[0].vector, k=5) == []
    assert collection_name(model) != collection_name(other)


def test_exclude_and_delete(store, model) -> None:
    tenant = f"t{uuid.uuid4().hex[:8]}"  # the delete spans every collection: a fresh tenant
    data = records(tenant, 8)
    store.upsert(model, data)
    hits = store.search(model, tenant, data[2].vector, k=3, exclude=frozenset({"img2"}))
    assert "img2" not in {h.image_id for h in hits} and len(hits) == 3
    vector = store.get_vector(model, tenant, "img2")
    assert vector is not None and np.allclose(vector, data[2].vector, atol=1e-3)
    assert store.delete(tenant, "img2") == 1
    assert store.get_vector(model, tenant, "img2") is None
    assert store.count(model, tenant) == 7


def test_object_ids_are_deterministic() -> None:
    assert object_id("alpha", "x") == object_id("alpha", "x") != object_id("beta", "x")


def test_lancedb_keeps_vectors_across_a_restart(tmp_path, model) -> None:
    from deeplens.vectors.lancedb import LanceStore

    data = records("alpha", 12)
    LanceStore(tmp_path / "v", VectorStoreSettings()).upsert(model, data)
    reopened = LanceStore(tmp_path / "v", VectorStoreSettings())
    assert reopened.count(model, "alpha") == 12
    assert reopened.search(model, "alpha", data[4].vector, k=1)[0].image_id == "img4"


def test_lancedb_builds_an_ann_index_past_the_threshold(tmp_path, model) -> None:
    from deeplens.vectors.lancedb import LanceStore

    store = LanceStore(tmp_path / "v", VectorStoreSettings(ann_min_rows=300))
    data = records("alpha", 400)
    store.upsert(model, data[:200])
    table = store._table(model)

    def indexed_columns() -> set[tuple[str, ...]]:
        return {tuple(i.columns) for i in table.list_indices()}

    # Exact search while small; scalar indexes on id and tenant_id from the first write
    # (get-by-id, delete and the tenant prefilter never scan the table) and indexed_at.
    assert indexed_columns() == {("id",), ("tenant_id",), ("indexed_at",)}
    store.upsert(model, data[200:])
    assert ("vector",) in indexed_columns(), "an ANN index once the table is large enough"
    assert store.search(model, "alpha", data[123].vector, k=1)[0].image_id == "img123"
    assert store.get_vector(model, "alpha", "img321") is not None
    assert store.delete("alpha", "img321") == 1
    assert store.get_vector(model, "alpha", "img321") is None
