"""The Weaviate backend (weaviate-client v4: REST for schema and tenants, gRPC for
batches and queries).

One collection per model id, multi-tenancy on (one Weaviate tenant per DeepLens
tenant, created on first use), self-provided vectors in a cosine HNSW index,
object ids ``uuid5(tenant, image_id)``. A batch write's per-object errors are
retried and, if any remain, raised: never ignored.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import datetime
from typing import Any
from urllib.parse import urlparse

import numpy as np

from deeplens.settings import VectorStoreSettings
from deeplens.vectors.base import (
    Hit,
    VectorRecord,
    VectorStoreUnavailable,
    collection_name,
    object_id,
)

log = logging.getLogger(__name__)

_WRITE_ATTEMPTS = 4


class WeaviateStore:
    backend = "weaviate"

    def __init__(self, settings: VectorStoreSettings) -> None:
        import weaviate
        from weaviate.classes.init import AdditionalConfig, Auth, Timeout

        url = urlparse(settings.weaviate_url)
        secure = url.scheme == "https"
        key = settings.weaviate_api_key.get_secret_value()
        try:
            self.client = weaviate.connect_to_custom(
                http_host=url.hostname or "127.0.0.1", http_port=url.port or (443 if secure else 80),
                http_secure=secure, grpc_host=url.hostname or "127.0.0.1",
                grpc_port=settings.weaviate_grpc_port, grpc_secure=secure,
                auth_credentials=Auth.api_key(key) if key else None,
                additional_config=AdditionalConfig(timeout=Timeout(
                    init=settings.weaviate_timeout_s, query=settings.weaviate_timeout_s,
                    insert=settings.weaviate_timeout_s)),
            )
        except Exception as exc:  # noqa: BLE001 - connection refused, bad version, auth
            raise VectorStoreUnavailable(f"cannot reach Weaviate at {settings.weaviate_url}: "
                                         f"{exc}") from exc
        self._collections: dict[str, Any] = {}
        self._tenants: set[tuple[str, str]] = set()
        self._lock = threading.Lock()

    # -- collections and tenants ----------------------------------------------------
    def _collection(self, model_id: str, create: bool) -> Any | None:
        from weaviate.classes.config import (
            Configure,
            DataType,
            Property,
            Tokenization,
            VectorDistances,
        )

        name = collection_name(model_id)
        with self._lock:
            if name in self._collections:
                return self._collections[name]
            if not self.client.collections.exists(name):
                if not create:
                    return None
                try:
                    self.client.collections.create(
                        name,
                        description=f"DeepLens vectors of {model_id}",
                        multi_tenancy_config=Configure.multi_tenancy(enabled=True),
                        vector_config=Configure.Vectors.self_provided(
                            vector_index_config=Configure.VectorIndex.hnsw(
                                distance_metric=VectorDistances.COSINE)),
                        properties=[
                            Property(name="image_id", data_type=DataType.TEXT,
                                     tokenization=Tokenization.FIELD),
                            Property(name="original_file_name", data_type=DataType.TEXT,
                                     skip_vectorization=True),
                            Property(name="uploaded_at", data_type=DataType.DATE),
                        ],
                    )
                except Exception as exc:  # noqa: BLE001 - created meanwhile by another writer
                    if not self.client.collections.exists(name):
                        raise VectorStoreUnavailable(f"cannot create {name}: {exc}") from exc
            self._collections[name] = self.client.collections.get(name)
            return self._collections[name]

    def _tenant(self, collection: Any, tenant_id: str, create: bool) -> Any | None:
        from weaviate.classes.tenants import Tenant

        key = (collection.name, tenant_id)
        if key not in self._tenants:
            existing = collection.tenants.get_by_names([tenant_id])
            if tenant_id not in existing:
                if not create:
                    return None
                collection.tenants.create([Tenant(name=tenant_id)])
            self._tenants.add(key)
        return collection.with_tenant(tenant_id)

    # -- writes ---------------------------------------------------------------------
    def upsert(self, model_id: str, records: list[VectorRecord]) -> None:
        from weaviate.classes.data import DataObject

        if not records:
            return
        collection = self._collection(model_id, create=True)
        by_tenant: dict[str, dict[str, VectorRecord]] = {}
        for record in records:
            by_tenant.setdefault(record.tenant_id, {})[record.image_id] = record
        for tenant_id, items in by_tenant.items():
            scoped = self._tenant(collection, tenant_id, create=True)
            pending = list(items.values())
            for attempt in range(_WRITE_ATTEMPTS):
                objects = [DataObject(
                    uuid=object_id(r.tenant_id, r.image_id),
                    properties={"image_id": r.image_id, "original_file_name": r.original_file_name,
                                "uploaded_at": r.uploaded_at},
                    vector=np.asarray(r.vector, dtype=np.float32).tolist()) for r in pending]
                try:
                    result = scoped.data.insert_many(objects)
                except Exception as exc:  # noqa: BLE001 - the whole request failed
                    errors = {i: str(exc) for i in range(len(pending))}
                else:
                    errors = {i: str(e.message) for i, e in result.errors.items()}
                if not errors:
                    break
                log.warning("Weaviate rejected %d of %d objects (attempt %d): %s", len(errors),
                            len(pending), attempt + 1, next(iter(errors.values())))
                pending = [pending[i] for i in sorted(errors)]
                if attempt + 1 == _WRITE_ATTEMPTS:
                    raise VectorStoreUnavailable(
                        f"Weaviate kept rejecting {len(pending)} objects: "
                        f"{next(iter(errors.values()))}")
                time.sleep(0.2 * 2**attempt)

    def delete(self, tenant_id: str, image_id: str) -> int:
        removed = 0
        for collection in self._all_collections():
            scoped = self._tenant(collection, tenant_id, create=False)
            if scoped is not None and scoped.data.delete_by_id(object_id(tenant_id, image_id)):
                removed += 1
        return removed

    def _all_collections(self) -> list[Any]:
        names = [n for n in self.client.collections.list_all(simple=True)
                 if n.startswith("DeepLens_")]
        return [self.client.collections.get(n) for n in names]

    # -- reads ----------------------------------------------------------------------
    def search(self, model_id: str, tenant_id: str, vector: np.ndarray, k: int,
               exclude: frozenset[str] = frozenset()) -> list[Hit]:
        from weaviate.classes.query import Filter, MetadataQuery

        collection = self._collection(model_id, create=False)
        scoped = None if collection is None else self._tenant(collection, tenant_id, create=False)
        if scoped is None:
            return []
        filters = None
        if exclude:
            filters = Filter.all_of([Filter.by_property("image_id").not_equal(e)
                                     for e in sorted(exclude)])
        response = scoped.query.near_vector(
            near_vector=np.asarray(vector, dtype=np.float32).tolist(), limit=k, filters=filters,
            return_metadata=MetadataQuery(distance=True))
        return [Hit(str(o.properties["image_id"]), 1.0 - float(o.metadata.distance),
                    str(o.properties.get("original_file_name", "")),
                    _as_datetime(o.properties.get("uploaded_at")))
                for o in response.objects]

    def get_vector(self, model_id: str, tenant_id: str, image_id: str) -> np.ndarray | None:
        collection = self._collection(model_id, create=False)
        scoped = None if collection is None else self._tenant(collection, tenant_id, create=False)
        if scoped is None:
            return None
        obj = scoped.query.fetch_object_by_id(object_id(tenant_id, image_id), include_vector=True)
        if obj is None:
            return None
        vector = obj.vector.get("default") if isinstance(obj.vector, dict) else obj.vector
        return None if vector is None else np.asarray(vector, dtype=np.float32)

    def count(self, model_id: str, tenant_id: str) -> int:
        collection = self._collection(model_id, create=False)
        scoped = None if collection is None else self._tenant(collection, tenant_id, create=False)
        if scoped is None:
            return 0
        return int(scoped.aggregate.over_all(total_count=True).total_count or 0)

    def drop_model(self, model_id: str) -> bool:
        name = collection_name(model_id)
        with self._lock:
            self._collections.pop(name, None)
            self._tenants = {key for key in self._tenants if key[0].lower() != name.lower()}
        if not self.client.collections.exists(name):
            return False
        self.client.collections.delete(name)
        return True

    def close(self) -> None:
        self.client.close()


def _as_datetime(value: Any) -> datetime | None:
    return value if isinstance(value, datetime) else None
