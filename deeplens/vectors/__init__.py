"""Vector stores: the protocol and shared types (``base``), the backends (``lancedb``, the
embedded default; ``weaviate``, production; ``memory``, the in-memory search index over
LanceDB) and the factory that picks one from settings (``factory``)."""
