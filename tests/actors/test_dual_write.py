"""Dual-write during a model change, without Ray: the feeder asks the other model's app
for the batch's vectors, and the indexer writes each into its own model's collection
(a deleted image into neither)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from actors.embedding_feeder import EmbedderUnavailable, shadow_vectors
from actors.indexer import index_batch
from deeplens.model_catalog import ModelView
from deeplens.settings import VectorStoreSettings
from deeplens.tombstones import Tombstones
from deeplens.vectors.lancedb import LanceStore
from tests.actors.test_indexer import envelope, processed

A, B = "m/x", "m/y"


@dataclass
class Answer:
    vector: np.ndarray | None
    model_id: str

    @property
    def ok(self) -> bool:
        return self.vector is not None


class FakeApp:
    """A Serve handle's shape: ``handle.embed_vectors.remote(items).result()``."""

    def __init__(self, fail: bool = False) -> None:
        self.fail, self.calls = fail, 0
        self.embed_vectors = self

    def remote(self, items):
        self.calls += 1
        return self

    def result(self, timeout_s=None):
        if self.fail:
            raise TimeoutError("replica gone")
        return [Answer(np.full(8, 0.5, dtype="f4"), B) for _ in range(self.n)]


def migration(state: str):
    from datetime import UTC, datetime

    from deeplens.model_catalog import Migration

    now = datetime.now(UTC)
    return Migration("m1", A, B, "tiny", "random", 1, state, now, now, None, None)


def test_the_feeder_asks_the_other_model_only_while_a_change_runs() -> None:
    events = [processed(i) for i in range(3)]
    sent = [(envelope(e, i), b"jpeg") for i, e in enumerate(events)]
    results = [Answer(np.ones(8, dtype="f4"), A), Answer(None, A), Answer(np.ones(8), A)]
    app = FakeApp()
    app.n = 2
    assert shadow_vectors(ModelView(None, None), {B: app}, sent, results) == {}
    assert shadow_vectors(ModelView(A, migration("deploying")), {B: app}, sent, results) == {}
    assert app.calls == 0
    out = shadow_vectors(ModelView(A, migration("backfilling")), {B: app}, sent, results)
    assert set(out) == {id(sent[0][0]), id(sent[2][0])}  # the undecodable one has none
    assert set(out[id(sent[0][0])]) == {B}
    # After a finished change to B, the configured A still embeds, and B too.
    app.calls = 0
    assert set(shadow_vectors(ModelView(B, None), {B: app}, sent, results)) == set(out)
    broken = FakeApp(fail=True)
    with pytest.raises(EmbedderUnavailable):  # the batch is retried, no image lacks B
        shadow_vectors(ModelView(A, migration("cut_over")), {B: broken}, sent, results)


def test_the_indexer_writes_both_models_and_a_deleted_image_to_neither(tmp_path) -> None:
    from deeplens.events import encode_vector

    tombstones = Tombstones(f"sqlite:///{tmp_path}/catalog.db")
    store = LanceStore(tmp_path / "vectors", VectorStoreSettings())
    events = [processed(i).model_copy(update={"shadow_vectors": {
        B: encode_vector(np.full(8, float(i + 1)))}}) for i in range(3)]
    tombstones.bury("alpha", "img2")
    index_batch(store, tombstones, [envelope(e, i) for i, e in enumerate(events)])
    assert store.count(A, "alpha") == 2 and store.count(B, "alpha") == 2
    assert store.get_vector(B, "alpha", "img2") is None
    assert store.get_vector(A, "alpha", "img2") is None
    assert np.allclose(store.get_vector(B, "alpha", "img1"), np.full(8, 2.0))  # its own
