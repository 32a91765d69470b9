"""LanceDB's caches stay within the settings: a process that follows a table other
processes write in small batches (the Gateway's search store) caches metadata per
version it reads, and LanceDB's own bounds are 1 GiB and 6 GiB."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np

from deeplens.settings import VectorStoreSettings
from deeplens.vectors.base import VectorRecord
from deeplens.vectors.lancedb import LanceStore, lance_session
from deeplens.vectors.memory import MemoryIndexedStore

WRITES = 300  # table versions, 4 images each: an indexer writing as images arrive


def _follow_many_small_writes(tmp_path, settings: VectorStoreSettings) -> int:
    writer = LanceStore(tmp_path / "vectors", settings)
    reader = MemoryIndexedStore(LanceStore(tmp_path / "vectors", settings), refresh_s=3600)
    rng = np.random.default_rng(0)
    query = np.ones(16, np.float32)
    for i in range(WRITES):
        writer.upsert("m", [VectorRecord("acme", f"img{i}-{j}", rng.normal(size=16).astype(
            np.float32), f"{i}.jpg", datetime.now(UTC)) for j in range(4)])
        reader.refresh()  # what its refresh thread does after every write it sees
        reader.search("m", "acme", query, 5)
    assert reader.count("m", "acme") == 4 * WRITES, "the reader followed every write"
    reader.close()
    writer.close()
    return int(lance_session(settings).size_bytes)


def test_a_reader_of_many_small_writes_keeps_lance_caches_within_the_settings(
        tmp_path) -> None:
    small = VectorStoreSettings(lance_metadata_cache_mb=1, lance_index_cache_mb=1)
    large = VectorStoreSettings(lance_metadata_cache_mb=257, lance_index_cache_mb=257)
    bounded = _follow_many_small_writes(tmp_path / "small", small)
    unbounded = _follow_many_small_writes(tmp_path / "large", large)
    assert unbounded > 2 << 20, ("the workload must fill more than the small bound for "
                                 "this test to mean anything", unbounded)
    assert bounded <= 2 << 20, (bounded, unbounded)
    assert lance_session(small) is lance_session(VectorStoreSettings(
        lance_metadata_cache_mb=1, lance_index_cache_mb=1)), "one session per process"
