"""Dedup writes a consumer batch's hashes in one transaction, and images of one batch
that copy one another still find each other; a redelivered batch writes nothing new."""

from __future__ import annotations

import numpy as np
import sqlalchemy as sa

from actors.dedup import dedup_batch
from cluster.samples import jpeg_bytes, scene
from deeplens.hash_index import HashIndex
from deeplens.settings import Settings, VectorStoreSettings
from deeplens.stage_sdk import Envelope
from deeplens.storage import LocalStorage
from deeplens.tombstones import Tombstones
from deeplens.vectors.lancedb import LanceStore
from tests.actors.test_dedup import processed


def test_a_batch_of_hashes_is_one_transaction(tmp_path) -> None:
    url = f"sqlite:///{tmp_path}/catalog.db"
    index, tombstones = HashIndex(url), Tombstones(url)
    store = LanceStore(tmp_path / "v", VectorStoreSettings())
    storage = LocalStorage(tmp_path / "images")
    datas = [jpeg_bytes(scene(20 + i)) for i in range(8)] + [jpeg_bytes(scene(20))]
    events = [processed(f"i{i}", d, np.ones(4)) for i, d in enumerate(datas)]
    for event, data in zip(events, datas, strict=True):
        storage.put(event.storage_path, data)
    batch = [Envelope(topic="images.processed", partition=0, offset=i, key=e.image_id,
                      timestamp=None, event=e) for i, e in enumerate(events)]
    inserts: list[int] = []
    sa.event.listen(index.engine, "before_cursor_execute",
                    lambda conn, cursor, statement, *rest: inserts.append(1)
                    if statement.lstrip().upper().startswith("INSERT") else None)
    out = dedup_batch(Settings(data_dir=tmp_path), storage, index, store, tombstones, batch)
    assert len(inserts) == 1  # one INSERT of nine rows, not nine transactions
    found = {o.event.image_id: {(m.image_id, m.kind) for m in o.event.matches} for o in out}
    assert found["i8"] == {("i0", "exact")} and found["i0"] == {("i8", "exact")}
    again = dedup_batch(Settings(data_dir=tmp_path), storage, index, store, tombstones, batch)
    assert len(inserts) == 1 and len(again) == 9  # redelivered: nothing written twice
    with index.engine.connect() as conn:
        assert conn.execute(sa.text("select count(*) from image_hashes")).scalar() == 9


def test_a_batch_exact_look_up_answers_as_one_look_up_per_image(tmp_path) -> None:
    from deeplens.hash_writes import exact_many

    index = HashIndex(f"sqlite:///{tmp_path}/catalog.db")
    rows = [("alpha", "a", "s1", "p1"), ("alpha", "b", "s1", "p2"), ("alpha", "c", "s3", "p2"),
            ("alpha", "d", "s4", "p4"), ("beta", "e", "s1", "p1")]
    for tenant, image_id, sha, pixel in rows:
        index.add(tenant, image_id, sha, pixel, 0)
    asked = [(i, s, p) for t, i, s, p in rows if t == "alpha"] + [("new", "s4", "p2")]
    batch = exact_many(index, "alpha", asked)
    assert batch == {i: sorted(index.exact("alpha", i, s, p)) for i, s, p in asked}
    assert batch["a"] == ["b"] and batch["b"] == ["a", "c"] and batch["d"] == []
    assert batch["new"] == ["b", "c", "d"]  # another tenant's copy ("e") is never a match
