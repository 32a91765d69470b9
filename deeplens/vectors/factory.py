"""Which vector store a process uses, picked from settings."""

from __future__ import annotations

from deeplens.settings import Settings
from deeplens.vectors.base import VectorStore


def make_vector_store(settings: Settings) -> VectorStore:
    if settings.vector_store.backend == "weaviate":
        from deeplens.vectors.weaviate import WeaviateStore

        return WeaviateStore(settings.vector_store)
    from deeplens.vectors.lancedb import LanceStore

    return LanceStore(settings.data_dir / "vectors", settings.vector_store)


def make_search_store(settings: Settings) -> VectorStore:
    """The store a process that answers searches uses: for the embedded default, LanceDB
    with an in-memory index per tenant kept in step with it (``vector_memory``)."""
    if settings.vector_store.backend == "weaviate":
        return make_vector_store(settings)
    from deeplens.tombstones import Tombstones
    from deeplens.vectors.graph_cache import GraphCache
    from deeplens.vectors.lancedb import LanceStore
    from deeplens.vectors.memory import MemoryIndexedStore

    return MemoryIndexedStore(LanceStore(settings.data_dir / "vectors", settings.vector_store),
                              Tombstones(settings.effective_catalog_url),
                              max_bytes=settings.vector_store.memory_max_mb << 20,
                              graphs=GraphCache(settings.data_dir / "search-graphs"))
