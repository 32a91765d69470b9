"""The search path's in-memory index: exact where small, HNSW where large, and always
in step with the durable store that other processes write."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime

import numpy as np
import pytest

from deeplens.settings import VectorStoreSettings
from deeplens.tombstones import Tombstones
from deeplens.vectors.base import VectorRecord
from deeplens.vectors.lancedb import LanceStore
from deeplens.vectors.memory import MemoryIndexedStore
from deeplens.vectors.tenant_index import Row, TenantIndex

NOW = datetime(2026, 11, 27, tzinfo=UTC)


def clustered(n: int, dim: int = 64, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(20, dim))
    x = centres[rng.integers(0, 20, n)] + rng.normal(scale=0.6, size=(n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def rows(vectors: np.ndarray, prefix: str = "img") -> list[Row]:
    return [Row(f"{prefix}{i}", v, f"{i}.jpg", NOW, NOW) for i, v in enumerate(vectors)]


def exact_top(vectors: np.ndarray, query: np.ndarray, k: int) -> list[str]:
    return [f"img{i}" for i in np.argsort(-(vectors @ query))[:k]]


def test_flat_search_is_exact_and_honours_removals_and_exclusions() -> None:
    vectors = clustered(3000)
    index = TenantIndex(64)
    index.upsert(rows(vectors))
    query = vectors[17]
    assert [h.image_id for h in index.search(query, 10, frozenset())] == exact_top(vectors,
                                                                                  query, 10)
    index.remove("img17")
    hits = index.search(query, 10, frozenset({"img3"}))
    assert "img17" not in {h.image_id for h in hits} and "img3" not in {h.image_id for h in hits}
    assert len(hits) == 10 and index.vector("img17") is None


def test_hnsw_above_the_threshold_keeps_recall_and_follows_changes() -> None:
    vectors = clustered(4000, seed=1)
    index = TenantIndex(64, hnsw_min_rows=1000)
    index.upsert(rows(vectors))
    assert index.wait_built(120) and index.hnsw is not None
    rng = np.random.default_rng(2)
    recalls = []
    for i in rng.integers(0, len(vectors), 100):
        query = vectors[i] + rng.normal(scale=0.05, size=64).astype(np.float32)
        query /= np.linalg.norm(query)
        got = {h.image_id for h in index.search(query, 10, frozenset())}
        recalls.append(len(got & set(exact_top(vectors, query, 10))) / 10)
    assert np.mean(recalls) >= 0.95, np.mean(recalls)
    index.remove("img5")
    moved = rows(vectors[:1] * -1, prefix="new")  # a new vector, far from the rest
    index.upsert(moved)
    assert index.search(vectors[5], 1, frozenset())[0].image_id != "img5"
    assert index.search(-vectors[0], 1, frozenset())[0].image_id == "new0"


def _record(tenant: str, i: int, vector: np.ndarray) -> VectorRecord:
    return VectorRecord(tenant, f"img{i}", vector, f"{i}.jpg", NOW)


def test_writes_of_other_processes_and_deletes_become_visible(tmp_path) -> None:
    url = f"sqlite:///{tmp_path}/catalog.db"
    vectors = clustered(200, dim=32, seed=3)
    indexer = LanceStore(tmp_path / "v", VectorStoreSettings())  # another process, in effect
    indexer.upsert("m/x", [_record("acme", i, vectors[i]) for i in range(100)])
    search = MemoryIndexedStore(LanceStore(tmp_path / "v", VectorStoreSettings()),
                                Tombstones(url), refresh_s=3600)  # refreshed by hand here
    assert search.count("m/x", "acme") == 100
    indexer.upsert("m/x", [_record("acme", 150, vectors[150])])
    assert search.search("m/x", "acme", vectors[150], 1)[0].image_id != "img150"
    search.refresh()
    assert search.search("m/x", "acme", vectors[150], 1)[0].image_id == "img150"
    Tombstones(url).bury("acme", "img150")  # the API deletes; an indexer removes it later
    search.refresh()
    assert search.get_vector("m/x", "acme", "img150") is None
    indexer.delete("acme", "img150")
    search.refresh()
    assert search.get_vector("m/x", "acme", "img150") is None
    search.close()


def test_the_refresh_thread_picks_up_another_process_s_write(tmp_path) -> None:
    """The same through the background thread (how soon is search_bench's business)."""
    vectors = clustered(3, dim=8, seed=6)
    indexer = LanceStore(tmp_path / "v", VectorStoreSettings())
    indexer.upsert("m/x", [_record("acme", 0, vectors[0])])
    search = MemoryIndexedStore(LanceStore(tmp_path / "v", VectorStoreSettings()),
                                refresh_s=0.1)
    assert search.count("m/x", "acme") == 1
    indexer.upsert("m/x", [_record("acme", 1, vectors[1])])
    deadline = time.monotonic() + 60  # a bound on a hung thread, not a speed check
    while time.monotonic() < deadline and search.count("m/x", "acme") < 2:
        time.sleep(0.05)
    assert search.search("m/x", "acme", vectors[1], 1)[0].image_id == "img1"
    search.close()


def test_deleted_images_never_come_back_while_the_indexer_lags(tmp_path) -> None:
    """The 40 newest images are indexed; the indexer stalls (restart, long rebalance)
    while 10 of them are deleted, one every 1.5 s. Every refresh meanwhile re-reads the
    newest rows from the store, where the deleted vectors still are: none may re-enter
    the index, whatever deletes come after, before or after the indexer catches up."""
    from datetime import timedelta

    import sqlalchemy as sa

    from deeplens.tombstones import deleted_images

    url = f"sqlite:///{tmp_path}/catalog.db"
    vectors = clustered(40, dim=16, seed=7)
    indexer = LanceStore(tmp_path / "v", VectorStoreSettings())
    indexer.upsert("m/x", [_record("acme", i, vectors[i]) for i in range(40)])
    tombstones = Tombstones(url)
    search = MemoryIndexedStore(LanceStore(tmp_path / "v", VectorStoreSettings()), tombstones,
                                refresh_s=3600)  # each refresh below stands for one tick
    assert search.count("m/x", "acme") == 40
    doomed = [f"img{i}" for i in range(0, 40, 4)]
    start = datetime.now(UTC)
    for n, image_id in enumerate(doomed):  # the API's tombstones, 1.5 s apart
        with tombstones.engine.begin() as conn:
            conn.execute(sa.insert(deleted_images).values(
                tenant_id="acme", image_id=image_id,
                deleted_at=start + timedelta(seconds=1.5 * n)))
        search.refresh()
        search.refresh()

    def returned() -> set[str]:
        found = set()
        for v in vectors:
            found |= {h.image_id for h in search.search("m/x", "acme", v, 40)}
        return found & set(doomed)

    assert returned() == set(), "while the indexer lags"
    for image_id in doomed:  # the indexer catches up
        indexer.delete("acme", image_id)
    search.refresh()
    assert returned() == set(), "after the indexer caught up"
    assert search.count("m/x", "acme") == 30
    search.upsert("m/x", [_record("acme", 0, vectors[0])])  # a late write-through of one
    assert returned() == set(), "after a late upsert"
    search.close()


def test_several_writers_at_once_lose_nothing_and_a_restart_reloads(tmp_path) -> None:
    vectors = clustered(400, dim=32, seed=4)
    search = MemoryIndexedStore(LanceStore(tmp_path / "v", VectorStoreSettings()),
                                refresh_s=0.1)
    LanceStore(tmp_path / "v", VectorStoreSettings()).upsert(
        "m/x", [_record("acme", 0, vectors[0])])
    assert search.count("m/x", "acme") == 1  # loaded: later rows come by refresh

    def writer(part: int) -> None:
        store = LanceStore(tmp_path / "v", VectorStoreSettings())
        for start in range(1 + part * 100, 1 + (part + 1) * 100, 20):
            store.upsert("m/x", [_record("acme", i, vectors[i]) for i in range(start, start + 20)])

    threads = [threading.Thread(target=writer, args=(p,)) for p in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and search.count("m/x", "acme") < 301:
        time.sleep(0.1)
    assert search.count("m/x", "acme") == 301
    search.close()
    restarted = MemoryIndexedStore(LanceStore(tmp_path / "v", VectorStoreSettings()))
    assert restarted.count("m/x", "acme") == 301
    assert restarted.search("m/x", "acme", vectors[222], 1)[0].image_id == "img222"
    restarted.close()


def test_a_table_from_before_indexed_at_is_migrated(tmp_path) -> None:
    import lancedb
    import pyarrow as pa

    from deeplens.vectors.base import collection_name, object_id

    db = lancedb.connect(str(tmp_path / "v"))
    schema = pa.schema([pa.field("id", pa.string()), pa.field("tenant_id", pa.string()),
                        pa.field("image_id", pa.string()),
                        pa.field("vector", pa.list_(pa.float32(), 4)),
                        pa.field("original_file_name", pa.string()),
                        pa.field("uploaded_at", pa.timestamp("us", tz="UTC"))])
    db.create_table(collection_name("m/old"), data=[{
        "id": object_id("acme", "old"), "tenant_id": "acme", "image_id": "old",
        "vector": [1.0, 0, 0, 0], "original_file_name": "old.jpg", "uploaded_at": NOW}],
        schema=schema)
    store = MemoryIndexedStore(LanceStore(tmp_path / "v", VectorStoreSettings()))
    store.upsert("m/old", [VectorRecord("acme", "new", np.array([0, 1.0, 0, 0], np.float32),
                                        "new.jpg", NOW)])
    assert {h.image_id for h in store.search("m/old", "acme", np.ones(4) / 2, 5)} == {
        "old", "new"}
    store.close()


@pytest.mark.parametrize("size", [10, 5000])
def test_get_vector_is_a_lookup(size) -> None:
    index = TenantIndex(16)
    vectors = clustered(size, dim=16)
    index.upsert(rows(vectors))
    assert np.allclose(index.vector(f"img{size - 1}"), vectors[-1])


def test_usearch_loaded_first_does_not_break_lancedb(tmp_path) -> None:
    """usearch 2.26 (numkong) loaded before LanceDB made LanceDB's next write segfault;
    the pinned version must not. In a fresh process, since the order is what matters."""
    import subprocess
    import sys

    script = f"""
import numpy as np
from datetime import datetime, UTC
from pathlib import Path
from usearch.index import Index
graph = Index(ndim=8, metric="cos", dtype="f16")
graph.add(np.arange(10), np.random.rand(10, 8).astype(np.float32))
from deeplens.settings import VectorStoreSettings
from deeplens.vectors.lancedb import LanceStore
from deeplens.vectors.base import VectorRecord
store = LanceStore(Path({str(tmp_path)!r}), VectorStoreSettings())
vectors = np.random.rand(300, 64).astype(np.float32)
store.upsert("m/x", [VectorRecord("a", f"i{{j}}", vectors[j], "n", datetime.now(UTC))
                     for j in range(300)])
print(len(store.search("m/x", "a", vectors[0], 10)))
"""
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip() == "10"


def test_get_vector_of_an_image_written_since_the_last_refresh(tmp_path) -> None:
    """'indexed' must mean similar-to works at once, before the next refresh."""
    url = f"sqlite:///{tmp_path}/catalog.db"
    vectors = clustered(3, dim=8, seed=5)
    indexer = LanceStore(tmp_path / "v", VectorStoreSettings())
    indexer.upsert("m/x", [_record("acme", 0, vectors[0])])
    search = MemoryIndexedStore(LanceStore(tmp_path / "v", VectorStoreSettings()),
                                Tombstones(url), refresh_s=60)  # no refresh in this test
    assert search.count("m/x", "acme") == 1
    indexer.upsert("m/x", [_record("acme", 1, vectors[1]), _record("acme", 2, vectors[2])])
    assert np.allclose(search.get_vector("m/x", "acme", "img1"), vectors[1])
    Tombstones(url).bury("acme", "img2")
    assert search.get_vector("m/x", "acme", "img2") is None
    assert search.get_vector("m/x", "acme", "nothing") is None
    search.close()


class _ClockBehind(datetime):
    """``datetime`` on a node whose clock is 10 s behind."""

    @classmethod
    def now(cls, tz=None):  # type: ignore[override]
        from datetime import timedelta

        return datetime.now(tz) - timedelta(seconds=10)


def test_a_row_from_a_node_whose_clock_is_10s_behind_is_loaded(tmp_path, monkeypatch) -> None:
    import deeplens.vectors.lancedb as lancedb_module

    vectors = clustered(3, dim=8, seed=8)
    indexer = LanceStore(tmp_path / "v", VectorStoreSettings())
    indexer.upsert("m/x", [_record("acme", 0, vectors[0])])
    search = MemoryIndexedStore(LanceStore(tmp_path / "v", VectorStoreSettings()),
                                refresh_s=3600)
    assert search.count("m/x", "acme") == 1
    indexer.upsert("m/x", [_record("acme", 1, vectors[1])])
    search.refresh()
    monkeypatch.setattr(lancedb_module, "datetime", _ClockBehind)
    LanceStore(tmp_path / "v", VectorStoreSettings()).upsert(
        "m/x", [_record("acme", 2, vectors[2])])
    search.refresh()
    assert search.count("m/x", "acme") == 3
    assert search.search("m/x", "acme", vectors[2], 1)[0].image_id == "img2"
    search.close()


def test_a_write_that_commits_late_is_loaded(tmp_path, monkeypatch) -> None:
    """A slow merge_insert: its rows were stamped before the others' were written and
    refreshed, and commit after them."""
    import deeplens.vectors.lancedb as lancedb_module

    vectors = clustered(4, dim=8, seed=9)
    indexer = LanceStore(tmp_path / "v", VectorStoreSettings())
    indexer.upsert("m/x", [_record("acme", 0, vectors[0])])
    search = MemoryIndexedStore(LanceStore(tmp_path / "v", VectorStoreSettings()),
                                refresh_s=3600)
    assert search.count("m/x", "acme") == 1
    stamped = datetime.now(UTC)

    class _Stamped(datetime):
        @classmethod
        def now(cls, tz=None):  # type: ignore[override]
            return stamped

    indexer.upsert("m/x", [_record("acme", 1, vectors[1])])  # written and seen first
    search.refresh()
    from datetime import timedelta

    stamped = datetime.now(UTC) - timedelta(seconds=30)  # the slow write began long ago
    later = LanceStore(tmp_path / "v", VectorStoreSettings())
    monkeypatch.setattr(lancedb_module, "datetime", _Stamped)
    later.upsert("m/x", [_record("acme", 3, vectors[3])])
    search.refresh()
    assert search.search("m/x", "acme", vectors[3], 1)[0].image_id == "img3"
    search.close()


def test_a_tombstone_from_a_node_whose_clock_is_behind_is_applied(tmp_path) -> None:
    from datetime import timedelta

    import sqlalchemy as sa

    from deeplens.tombstones import deleted_images

    url = f"sqlite:///{tmp_path}/catalog.db"
    vectors = clustered(5, dim=8, seed=10)
    LanceStore(tmp_path / "v", VectorStoreSettings()).upsert(
        "m/x", [_record("acme", i, vectors[i]) for i in range(5)])
    tombstones = Tombstones(url)
    search = MemoryIndexedStore(LanceStore(tmp_path / "v", VectorStoreSettings()), tombstones,
                                refresh_s=3600)
    assert search.count("m/x", "acme") == 5
    tombstones.bury("acme", "img0")
    search.refresh()
    with tombstones.engine.begin() as conn:  # written by a Gateway whose clock is behind
        conn.execute(sa.insert(deleted_images).values(
            tenant_id="acme", image_id="img1",
            deleted_at=datetime.now(UTC) - timedelta(seconds=60)))
    search.refresh()
    assert search.count("m/x", "acme") == 3
    hits = {h.image_id for h in search.search("m/x", "acme", vectors[1], 5)}
    assert hits == {"img2", "img3", "img4"}
    search.close()


def test_a_removed_slot_is_reused() -> None:
    vectors = clustered(100, dim=8, seed=11)
    index = TenantIndex(8)
    index.upsert(rows(vectors[:50]))
    for i in range(10):
        index.remove(f"img{i}")
    index.upsert(rows(vectors[50:60], prefix="new"))
    assert index.used == 50 and len(index) == 50
    assert [h.image_id for h in index.search(vectors[55], 1, frozenset())] == ["new5"]
    assert index.vector("img3") is None


def test_a_memory_budget_drops_the_least_recently_searched_tenant(tmp_path) -> None:
    vectors = clustered(300, dim=16, seed=12)
    LanceStore(tmp_path / "v", VectorStoreSettings()).upsert(
        "m/x", [_record(t, i, vectors[i]) for t in ("a", "b", "c") for i in range(300)])
    search = MemoryIndexedStore(LanceStore(tmp_path / "v", VectorStoreSettings()),
                                refresh_s=3600)
    search.count("m/x", "a")
    search.max_bytes = int(search.memory_bytes() * 2.5)
    search.count("m/x", "b")
    search.count("m/x", "a")
    search.count("m/x", "c")
    assert [t for _, t in search._indexes] == ["a", "c"]
    assert search.memory_bytes() <= search.max_bytes
    assert search.search("m/x", "b", vectors[7], 1)[0].image_id == "img7", "reloaded"
    search.close()


def test_a_built_graph_is_the_only_copy_and_answers_as_the_flat_one_did() -> None:
    """Memory per image (issue 24: <= 2.3 KB at 512-d): once the HNSW graph holds the
    vectors, the float32 matrix is dropped; names, stamps and vectors still come back."""
    vectors = clustered(3000, seed=3)
    when = datetime(2026, 11, 30, 12, 0, 0, 123456, tzinfo=UTC)
    index = TenantIndex(64, hnsw_min_rows=1000)
    index.upsert([Row(f"img{i}", v, f"{i}.jpg", when, when) for i, v in enumerate(vectors)])
    assert index.wait_built(120) and index.vectors is None
    hit = index.search(vectors[7], 1, frozenset())[0]
    assert (hit.image_id, hit.original_file_name, hit.uploaded_at) == ("img7", "7.jpg", when)
    assert np.allclose(index.vector("img7"), vectors[7], atol=2e-3)  # f16 in the graph
    # an upsert and a delete after the flat copy went: the graph follows, slots are reused
    used = index.used
    index.remove("img8")
    index.upsert([Row("fresh", -vectors[0], "fresh.jpg", None, None)])
    assert index.used == used  # img8's slot went to "fresh"
    top = index.search(-vectors[0], 1, frozenset())[0]
    assert (top.image_id, top.uploaded_at) == ("fresh", None)
    assert index.vector("img8") is None
    # a re-read of the version held (same stamp) changes nothing; a newer one replaces it
    index.upsert([Row("img9", -vectors[9], "9.jpg", when, when)])
    assert np.allclose(index.vector("img9"), vectors[9], atol=2e-3)
    index.upsert([Row("img9", -vectors[9], "9.jpg", when, when.replace(second=1))])
    assert np.allclose(index.vector("img9"), -vectors[9], atol=2e-3)
    assert index.search(-vectors[9], 1, frozenset())[0].image_id == "img9"


def test_loading_a_tenant_by_columns_equals_upserting_it_row_by_row() -> None:
    """The Gateway loads a tenant with ``TenantIndex.load`` (columns at once); what it
    answers must be what the row-by-row path answers, names and stamps included."""
    from datetime import timedelta

    vectors = clustered(500, seed=4)
    stamps = [datetime(2026, 11, 1, tzinfo=UTC) + timedelta(microseconds=7 * i)
              for i in range(500)]
    by_rows = TenantIndex(64)
    by_rows.upsert([Row(f"img{i}", v, f"{i}.jpg", stamps[i], stamps[i])
                    for i, v in enumerate(vectors)])
    micros = np.array([s.timestamp() * 1e6 for s in stamps]).round().astype(np.int64)
    by_columns = TenantIndex(64)
    by_columns.load([f"img{i}" for i in range(500)], vectors, [f"{i}.jpg" for i in range(500)],
                    micros, micros)
    for q in vectors[:20]:
        assert by_columns.search(q, 5, frozenset()) == by_rows.search(q, 5, frozenset())
    # an id given twice (a store that holds two rows for it) keeps the newest
    twice = TenantIndex(64)
    twice.load(["a", "a"], vectors[:2], ["old.jpg", "new.jpg"], micros[:2], micros[:2])
    assert len(twice) == 1 and twice.search(vectors[1], 1, frozenset())[0].original_file_name \
        == "new.jpg"


def test_a_loaded_tenant_leaves_out_its_deleted_images(tmp_path, catalog_url) -> None:
    """Loading reads the tenant's tombstones in one range read (not one look-up per id)."""
    tombstones = Tombstones(catalog_url)
    store = MemoryIndexedStore(LanceStore(tmp_path / "vectors", VectorStoreSettings()),
                               tombstones, refresh_s=3600)
    try:
        vectors = clustered(50, seed=5)
        store.store.upsert("m", [_record("t1", i, v) for i, v in enumerate(vectors)])
        store.store.upsert("m", [_record("t2", 0, vectors[0])])
        tombstones.bury("t1", "img3")
        tombstones.bury("t2", "img4")  # another tenant's: no effect on t1
        assert tombstones.of_tenant("t1") == {"img3"}
        hits = store.search("m", "t1", vectors[3], 50)
        assert len(hits) == 49 and "img3" not in {h.image_id for h in hits}
        assert "img4" in {h.image_id for h in hits}
        assert hits[0].uploaded_at == NOW
    finally:
        store.close()
