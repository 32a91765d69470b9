"""The backfill of a model change without Ray: real catalog (SQLite and PostgreSQL),
real LanceDB, real tombstones, the target model's Embedder replaced by a function."""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np

from cluster.model_backfill import backfill_step, run_backfill
from deeplens.model_catalog import ModelCatalog
from deeplens.settings import VectorStoreSettings
from deeplens.storage import LocalStorage
from deeplens.tombstones import Tombstones
from deeplens.vectors.lancedb import LanceStore
from ingestion.catalog import Catalog

A, B = "tiny/random-init-seed0", "tiny/random-init-seed1"
T0 = datetime(2026, 12, 1, 9, tzinfo=UTC)


@dataclass
class FakeEmbedding:
    vector: np.ndarray | None
    model_id: str

    @property
    def ok(self) -> bool:
        return self.vector is not None


def fake_embed(items):
    out = []
    for data in items:
        if data == b"corrupt":
            out.append(FakeEmbedding(None, B))
            continue
        seed = int.from_bytes(hashlib.sha256(data).digest()[:4], "big")
        out.append(FakeEmbedding(np.random.default_rng(seed).normal(size=8).astype("f4"), B))
    return out


def seed_images(catalog: Catalog, storage: LocalStorage) -> dict[str, list[str]]:
    ids: dict[str, list[str]] = {"acme": [], "globex": []}
    for tenant, count in (("acme", 8), ("globex", 3)):
        for i in range(count):
            image_id = f"{tenant}{i:02d}"
            path = f"{tenant}/{image_id}.jpg"
            catalog.insert({"image_id": image_id, "tenant_id": tenant,
                            "sha256": hashlib.sha256(path.encode()).hexdigest(),
                            "original_file_name": f"{image_id}.jpg", "storage_provider": "local",
                            "storage_path": path, "file_size": 1, "mime_type": "image/jpeg",
                            "status": "indexed", "uploaded_at": T0 + timedelta(seconds=i % 4)})
            if image_id != "acme05":  # its original is gone: failed, alone
                storage.put(path, b"corrupt" if image_id == "acme06" else path.encode())
            ids[tenant].append(image_id)
    return ids


def test_backfill_resumes_after_a_kill_without_duplicates_and_keeps_deletes_out(
        catalog_url, tmp_path) -> None:
    images, storage = Catalog(catalog_url), LocalStorage(tmp_path / "objects")
    ids = seed_images(images, storage)
    with images.engine.begin() as conn:  # a failed image is never backfilled
        from ingestion.tables import images as table
        conn.execute(table.update().where(table.c.image_id == "globex02")
                     .values(status="failed"))
    store, tombstones = LanceStore(tmp_path / "vectors", VectorStoreSettings()), \
        Tombstones(catalog_url)
    catalog = ModelCatalog(catalog_url)
    mid = catalog.start(A, B, "tiny", "random", 1).migration_id
    catalog.mark_deployed(mid)
    calls = [0]
    stop = threading.Event()

    def step(progress, tenant):
        calls[0] += 1
        if calls[0] == 2:
            stop.set()  # the worker is killed after its second page
        def embed(items):
            if calls[0] == 3:  # deleted while its page is at the Embedder
                tombstones.bury("acme", "acme07")
                store.delete("acme", "acme07")
            return fake_embed(items)
        return backfill_step(catalog, mid, B, progress, tenant, store=store, storage=storage,
                             tombstones=tombstones, embed=embed, page=3)

    assert run_backfill(catalog, mid, step, stop=stop) == "stopped"
    first = {p.tenant_id: p for p in catalog.progress(mid)}
    assert first["acme"].done + first["acme"].failed == 6 and not first["acme"].complete
    # A fresh worker: from the cursor on, each image once.
    assert run_backfill(catalog, mid, step, auto_cutover=True) == "cut_over"
    progress = {p.tenant_id: p for p in catalog.progress(mid)}
    assert (progress["acme"].done, progress["acme"].failed) == (5, 2)  # 05 missing, 06 corrupt
    assert (progress["globex"].done, progress["globex"].total) == (2, 2)
    assert all(p.complete and p.percent() == 100 for p in progress.values())
    assert catalog.view().active == B
    assert store.count(B, "acme") == 5 and store.count(B, "globex") == 2
    assert store.get_vector(B, "acme", "acme07") is None
    for image_id in set(ids["acme"]) - {"acme05", "acme06", "acme07"}:
        assert store.get_vector(B, "acme", image_id) is not None
