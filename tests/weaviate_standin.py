"""A Weaviate stand-in for tests: the REST and gRPC calls DeepLens' backend makes,
answered from numpy arrays in memory.

No Weaviate server can run on the development machines (DESIGN.md), so the real
weaviate-client talks to this over real HTTP and real gRPC, with the generated
stubs that ship inside weaviate-client. It implements only what
``deeplens/vectors/weaviate.py`` uses: schema create/get/list, tenants
create/get, batch object writes, near-vector search with property filters,
fetch by id, count, delete by id. Unknown routes answer 501 so that a client
change shows up as a failing test, not as silent success.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np
from fastapi import FastAPI, Request, Response
from google.protobuf import struct_pb2
from weaviate.proto.v1 import (
    aggregate_pb2,
    base_pb2,
    batch_pb2,
    health_weaviate_pb2,
    properties_pb2,
    search_get_pb2,
    tenants_pb2,
)

from deeplens.broker import free_port

log = logging.getLogger(__name__)
VERSION = "1.32.0"


@dataclass
class _Object:
    properties: dict[str, Any]
    vector: np.ndarray
    created_ms: int = 0


@dataclass
class _Collection:
    schema: dict[str, Any]
    tenants: set[str] = field(default_factory=set)
    objects: dict[str, dict[str, _Object]] = field(default_factory=dict)  # tenant -> uuid -> obj

    def date_props(self) -> set[str]:
        return {p["name"] for p in self.schema.get("properties", [])
                if "date" in p.get("dataType", [])}


class StandinState:
    def __init__(self) -> None:
        self.collections: dict[str, _Collection] = {}
        self.lock = threading.Lock()
        self.unavailable = False  # fault injection: every call fails while set

    def get(self, name: str) -> _Collection | None:
        return self.collections.get(name) or next(
            (c for n, c in self.collections.items() if n.lower() == name.lower()), None)


# -- REST -------------------------------------------------------------------------------
def rest_app(state: StandinState) -> FastAPI:
    app = FastAPI()

    @app.middleware("http")
    async def fault(request: Request, call_next):  # type: ignore[no-untyped-def]
        if state.unavailable:
            return Response(status_code=503)
        return await call_next(request)

    @app.get("/v1/meta")
    def meta() -> dict[str, Any]:
        return {"hostname": "http://standin", "version": VERSION, "modules": {},
                "grpcMaxMessageSize": 104858000}

    @app.get("/v1/.well-known/ready")
    @app.get("/v1/.well-known/live")
    def ready() -> Response:
        return Response(status_code=200)

    @app.get("/v1/.well-known/openid-configuration")
    def no_oidc() -> Response:
        return Response(status_code=404)  # what Weaviate answers without OIDC configured

    @app.get("/v1/schema")
    def schema() -> dict[str, Any]:
        return {"classes": [c.schema for c in state.collections.values()]}

    @app.post("/v1/schema")
    async def create(request: Request) -> Response:
        body = await request.json()
        name = body["class"]
        with state.lock:
            if state.get(name) is not None:
                return Response(json.dumps({"error": [{"message": f"class {name} exists"}]}),
                                status_code=422)
            state.collections[name] = _Collection(schema=_with_server_defaults(body))
        return Response(json.dumps(body), media_type="application/json")

    @app.get("/v1/schema/{name}")
    def get_class(name: str) -> Response:
        collection = state.get(name)
        if collection is None:
            return Response(status_code=404)
        return Response(json.dumps(collection.schema), media_type="application/json")

    @app.delete("/v1/schema/{name}")
    def delete_class(name: str) -> Response:  # a model change's finish drops a collection
        with state.lock:
            found = state.get(name)
            if found is not None:
                state.collections = {k: v for k, v in state.collections.items()
                                     if v is not found}
        return Response(status_code=200)

    @app.get("/v1/schema/{name}/tenants")
    def list_tenants(name: str) -> Response:
        collection = state.get(name)
        if collection is None:
            return Response(status_code=404)
        return Response(json.dumps([{"name": t, "activityStatus": "HOT"}
                                    for t in sorted(collection.tenants)]),
                        media_type="application/json")

    @app.post("/v1/schema/{name}/tenants")
    async def add_tenants(name: str, request: Request) -> Response:
        collection = state.get(name)
        if collection is None:
            return Response(status_code=404)
        body = await request.json()
        with state.lock:
            for tenant in body:
                collection.tenants.add(tenant["name"])
                collection.objects.setdefault(tenant["name"], {})
        return Response(json.dumps(body), media_type="application/json")

    @app.delete("/v1/objects/{name}/{uuid}")
    def delete(name: str, uuid: str, tenant: str = "") -> Response:
        collection = state.get(name)
        with state.lock:
            if collection is None or collection.objects.get(tenant, {}).pop(uuid, None) is None:
                return Response(status_code=404)
        return Response(status_code=204)

    @app.api_route("/{path:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"])
    def unknown(path: str, request: Request) -> Response:
        log.error("weaviate stand-in: unimplemented REST %s /%s", request.method, path)
        return Response(json.dumps({"error": [{"message": f"stand-in: /{path} unimplemented"}]}),
                        status_code=501)

    return app


def _merge_defaults(body: dict[str, Any], key: str, defaults: dict[str, Any]) -> None:
    current = body.get(key) or {}
    for name, value in defaults.items():
        if isinstance(value, dict):
            _merge_defaults(current, name, value)
        else:
            current.setdefault(name, value)
    body[key] = current


def _with_server_defaults(body: dict[str, Any]) -> dict[str, Any]:
    """Fill in what a real Weaviate adds to a class it stores (the client parses these)."""
    body.setdefault("multiTenancyConfig", {"enabled": False})
    body["multiTenancyConfig"].setdefault("autoTenantCreation", False)
    body["multiTenancyConfig"].setdefault("autoTenantActivation", False)
    body.setdefault("description", "")
    _merge_defaults(body, "invertedIndexConfig", {
        "bm25": {"b": 0.75, "k1": 1.2}, "cleanupIntervalSeconds": 60,
        "indexNullState": False, "indexPropertyLength": False, "indexTimestamps": False,
        "stopwords": {"preset": "en", "additions": None, "removals": None}})
    _merge_defaults(body, "replicationConfig", {"factor": 1, "asyncEnabled": False,
                                                "deletionStrategy": "NoAutomatedResolution"})
    _merge_defaults(body, "shardingConfig", {
        "virtualPerPhysical": 128, "desiredCount": 1, "actualCount": 1, "desiredVirtualCount": 128,
        "actualVirtualCount": 128, "key": "_id", "strategy": "hash", "function": "murmur3"})
    # Weaviate's documented HNSW defaults, as a server reports them back.
    hnsw = {"cleanupIntervalSeconds": 300, "distance": "cosine", "dynamicEfMin": 100,
            "dynamicEfMax": 500, "dynamicEfFactor": 8, "ef": -1, "efConstruction": 128,
            "filterStrategy": "sweeping", "flatSearchCutoff": 40000, "maxConnections": 32,
            "skip": False, "vectorCacheMaxObjects": 1000000000000}
    for named in (body.get("vectorConfig") or {}).values():
        _merge_defaults(named, "vectorIndexConfig", hnsw)
        named.setdefault("vectorIndexType", "hnsw")
    for prop in body.get("properties", []):
        is_text = "text" in prop.get("dataType", [])
        prop.setdefault("indexFilterable", True)
        prop.setdefault("indexSearchable", is_text)
        prop.setdefault("indexRangeFilters", False)
        prop.setdefault("description", "")
        if is_text:
            prop.setdefault("tokenization", "word")
    return body


# -- gRPC -------------------------------------------------------------------------------
def _vector_of(msg: Any) -> np.ndarray | None:
    if getattr(msg, "vector_bytes", b""):
        return np.frombuffer(msg.vector_bytes, dtype=np.float32).copy()
    if len(getattr(msg, "vector", [])):
        return np.asarray(list(msg.vector), dtype=np.float32)
    for named in getattr(msg, "vectors", []):
        if named.vector_bytes:
            return np.frombuffer(named.vector_bytes, dtype=np.float32).copy()
    return None


def _struct_to_dict(struct: struct_pb2.Struct) -> dict[str, Any]:
    from google.protobuf.json_format import MessageToDict

    return MessageToDict(struct)


def _value(name: str, value: Any, dates: set[str]) -> properties_pb2.Value:
    if name in dates:
        return properties_pb2.Value(date_value=str(value))
    if isinstance(value, bool):
        return properties_pb2.Value(bool_value=value)
    if isinstance(value, int | float):
        return properties_pb2.Value(number_value=float(value))
    return properties_pb2.Value(text_value=str(value))


def _matches(obj_id: str, obj: _Object, flt: base_pb2.Filters) -> bool:
    op = flt.operator
    if op == base_pb2.Filters.OPERATOR_AND:
        return all(_matches(obj_id, obj, f) for f in flt.filters)
    if op == base_pb2.Filters.OPERATOR_OR:
        return any(_matches(obj_id, obj, f) for f in flt.filters)
    prop = flt.target.property if flt.HasField("target") else (flt.on[0] if flt.on else "")
    actual = obj_id if prop == "_id" else obj.properties.get(prop)
    expected = flt.value_text
    if op == base_pb2.Filters.OPERATOR_EQUAL:
        return actual == expected
    if op == base_pb2.Filters.OPERATOR_NOT_EQUAL:
        return actual != expected
    raise NotImplementedError(f"stand-in: filter operator {op} unimplemented")


class WeaviateGrpc:
    def __init__(self, state: StandinState) -> None:
        self.state = state

    def _check(self, context: grpc.ServicerContext) -> None:
        if self.state.unavailable:
            context.abort(grpc.StatusCode.UNAVAILABLE, "stand-in made unavailable")

    def batch_objects(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._check(context)
        errors = []
        with self.state.lock:
            for index, obj in enumerate(request.objects):
                collection = self.state.get(obj.collection)
                if collection is None or obj.tenant not in collection.tenants:
                    errors.append(batch_pb2.BatchObjectsReply.BatchError(
                        index=index, error=f"tenant {obj.tenant!r} not found"))
                    continue
                props = _struct_to_dict(obj.properties.non_ref_properties)
                vector = _vector_of(obj)
                if vector is None:
                    errors.append(batch_pb2.BatchObjectsReply.BatchError(
                        index=index, error="no vector"))
                    continue
                now_ms = int(time.time() * 1000)
                previous = collection.objects[obj.tenant].get(obj.uuid)
                created = previous.created_ms if previous else now_ms
                collection.objects[obj.tenant][obj.uuid] = _Object(props, vector, created)
        return batch_pb2.BatchObjectsReply(took=0.0, errors=errors)

    def search(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._check(context)
        collection = self.state.get(request.collection)
        if collection is None or request.tenant not in collection.tenants:
            context.abort(grpc.StatusCode.NOT_FOUND, f"tenant {request.tenant!r} not found")
        with self.state.lock:
            items = list(collection.objects.get(request.tenant, {}).items())
        if request.HasField("filters"):
            items = [(i, o) for i, o in items if _matches(i, o, request.filters)]
        distances: dict[str, float] = {}
        if request.HasField("near_vector"):
            query = _vector_of(request.near_vector)
            assert query is not None
            query = query / (np.linalg.norm(query) or 1.0)
            for obj_id, obj in items:
                v = obj.vector / (np.linalg.norm(obj.vector) or 1.0)
                distances[obj_id] = float(1.0 - np.dot(query, v))
            items.sort(key=lambda item: distances[item[0]])
        limit = request.limit or 10
        dates = collection.date_props()
        results = []
        for obj_id, obj in items[:limit]:
            meta = search_get_pb2.MetadataResult(
                id=obj_id, creation_time_unix=obj.created_ms, creation_time_unix_present=True,
                last_update_time_unix=obj.created_ms, last_update_time_unix_present=True)
            if obj_id in distances:
                meta.distance, meta.distance_present = distances[obj_id], True
            if request.metadata.vector or list(request.metadata.vectors):
                meta.vectors.append(base_pb2.Vectors(
                    name="default", vector_bytes=obj.vector.astype(np.float32).tobytes(),
                    type=base_pb2.Vectors.VECTOR_TYPE_SINGLE_FP32))
            fields = {k: _value(k, v, dates) for k, v in obj.properties.items()}
            props = search_get_pb2.PropertiesResult(
                non_ref_props=properties_pb2.Properties(fields=fields),
                target_collection=collection.schema["class"])
            results.append(search_get_pb2.SearchResult(properties=props, metadata=meta))
        return search_get_pb2.SearchReply(took=0.0, results=results)

    def tenants_get(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._check(context)
        collection = self.state.get(request.collection)
        if collection is None:
            context.abort(grpc.StatusCode.NOT_FOUND, "collection not found")
        wanted = set(request.names.values) if request.HasField("names") else collection.tenants
        return tenants_pb2.TenantsGetReply(took=0.0, tenants=[
            tenants_pb2.Tenant(name=t, activity_status=tenants_pb2.TENANT_ACTIVITY_STATUS_HOT)
            for t in sorted(collection.tenants & wanted)])

    def aggregate(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._check(context)
        collection = self.state.get(request.collection)
        count = 0 if collection is None else len(collection.objects.get(request.tenant, {}))
        return aggregate_pb2.AggregateReply(
            took=0.0, single_result=aggregate_pb2.AggregateReply.Single(objects_count=count))

    def health(self, request: Any, context: grpc.ServicerContext) -> Any:
        return health_weaviate_pb2.WeaviateHealthCheckResponse(
            status=health_weaviate_pb2.WeaviateHealthCheckResponse.SERVING)


def _handler(fn: Any, req: Any, rep: Any) -> grpc.RpcMethodHandler:
    return grpc.unary_unary_rpc_method_handler(
        fn, request_deserializer=req.FromString, response_serializer=rep.SerializeToString)


@dataclass
class Standin:
    http_url: str
    grpc_port: int
    state: StandinState
    stop: Any


def start_standin() -> Standin:
    import uvicorn

    state = StandinState()
    servicer = WeaviateGrpc(state)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    server.add_generic_rpc_handlers([
        grpc.method_handlers_generic_handler("weaviate.v1.Weaviate", {
            "BatchObjects": _handler(servicer.batch_objects, batch_pb2.BatchObjectsRequest,
                                     batch_pb2.BatchObjectsReply),
            "Search": _handler(servicer.search, search_get_pb2.SearchRequest,
                               search_get_pb2.SearchReply),
            "TenantsGet": _handler(servicer.tenants_get, tenants_pb2.TenantsGetRequest,
                                   tenants_pb2.TenantsGetReply),
            "Aggregate": _handler(servicer.aggregate, aggregate_pb2.AggregateRequest,
                                  aggregate_pb2.AggregateReply),
        }),
        grpc.method_handlers_generic_handler("grpc.health.v1.Health", {
            "Check": _handler(servicer.health, health_weaviate_pb2.WeaviateHealthCheckRequest,
                              health_weaviate_pb2.WeaviateHealthCheckResponse),
        }),
    ])
    grpc_port = free_port()
    server.add_insecure_port(f"127.0.0.1:{grpc_port}")
    server.start()

    http_port = free_port()
    http = uvicorn.Server(uvicorn.Config(rest_app(state), host="127.0.0.1", port=http_port,
                                         log_level="warning"))
    thread = threading.Thread(target=http.run, daemon=True)
    thread.start()
    while not http.started:
        threading.Event().wait(0.02)

    def stop() -> None:
        http.should_exit = True
        server.stop(0)

    return Standin(f"http://127.0.0.1:{http_port}", grpc_port, state, stop)


_SHARED: Standin | None = None


def running_standin() -> Standin:
    """One stand-in per test session (collections are per model id, tenants per test)."""
    global _SHARED
    if _SHARED is None:
        _SHARED = start_standin()
    return _SHARED
