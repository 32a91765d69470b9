"""Search latency, recall@10, build, restart and freshness of the embedded store.

    python -m benchmarks.search_bench                  # candidates + the 1M / 100-tenant case
    python -m benchmarks.search_bench --skip-lance-ann  # without LanceDB's slow ANN build
    python -m benchmarks.search_bench --total 200000    # a smaller multi-tenant store

Vectors are 512-d unit vectors drawn around 200 cluster centres (CLIP embeddings
of a photo collection cluster by subject; uniform random vectors are the ANN
worst case and unlike real data). Queries are perturbed copies of stored vectors;
recall@10 is against numpy's exact top 10 of the same tenant. One query thread.

Part 1, **candidates side by side** on one tenant of 10k and of 100k vectors:
LanceDB exact (prefiltered scan), LanceDB IVF_HNSW_SQ (what DeepLens built past
``ann_min_rows`` before), a numpy flat float32 scan, a usearch HNSW (f16,
connectivity 16, expansion 128), and ``TenantIndex`` (what the search path now
uses: flat below 20k vectors, HNSW above).

Part 2, **the multi-tenant store**: ``--total`` vectors (default 1M) in one
LanceDB table across 100 tenants, one of them holding 100k, through
``MemoryIndexedStore`` as the Gateway runs it: p50/p99 and recall for a 10k and
the 100k tenant, time to load each tenant (restart: the first query after a start)
and to build the HNSW, memory per vector, and time from a write by another process
(an indexer) to visible in search.

Latencies are steady state: each measured search path answers one query before its
timed queries. ``--repeat N``: medians of N runs with their spread. Writes a results
file (benchmarks/common.py: ``--out``, ``--record``).
"""

from __future__ import annotations

import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

DIM = 512


def clustered(n: int, rng: np.random.Generator, dim: int = DIM) -> np.ndarray:
    centres = np.random.default_rng(42).normal(size=(200, dim))  # one world for all tenants
    x = centres[rng.integers(0, 200, n)] + rng.normal(scale=0.6, size=(n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def queries_for(vectors: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    picks = rng.integers(0, len(vectors), count)
    q = vectors[picks] + rng.normal(scale=0.05, size=(count, vectors.shape[1]))
    return (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)


def exact_truth(vectors: np.ndarray, queries: np.ndarray, prefix: str = "i") -> list[set[str]]:
    truth = []
    for q in queries:
        scores = vectors @ q
        truth.append({f"{prefix}{j}" for j in np.argpartition(-scores, 10)[:10]})
    return truth


def measure(search, queries: np.ndarray, truth: list[set[str]]) -> dict:
    """``search(q) -> list of ids``; p50/p99 ms and recall@10 over the queries."""
    search(queries[0])  # warm
    latencies, recalls = [], []
    for q, want in zip(queries, truth, strict=True):
        start = time.perf_counter()
        got = search(q)
        latencies.append((time.perf_counter() - start) * 1000)
        recalls.append(len(set(got[:10]) & want) / 10)
    lat = np.array(latencies)
    return {"p50_ms": round(float(np.percentile(lat, 50)), 3),
            "p99_ms": round(float(np.percentile(lat, 99)), 3),
            "recall_at_10": round(float(np.mean(recalls)), 4)}


def candidates(size: int, n_queries: int, lance_ann: bool, rng: np.random.Generator) -> list[dict]:
    from usearch.index import Index

    from deeplens.settings import VectorStoreSettings
    from deeplens.vectors.base import VectorRecord
    from deeplens.vectors.lancedb import LanceStore
    from deeplens.vectors.tenant_index import HNSW_EXPANSION_SEARCH, Row, TenantIndex

    vectors = clustered(size, rng)
    queries = queries_for(vectors, n_queries, rng)
    truth = exact_truth(vectors, queries)
    ids = np.array([f"i{j}" for j in range(size)])
    rows: list[dict] = []

    def row(name: str, figures: dict, build_s: float | None = None) -> None:
        rows.append({"vectors": size, "candidate": name, "build_s": build_s, **figures})
        print(rows[-1], flush=True)

    def flat(q: np.ndarray) -> list[str]:
        scores = vectors @ q
        top = np.argpartition(-scores, 10)[:10]
        return list(ids[top[np.argsort(-scores[top])]])

    row("numpy flat float32", measure(flat, queries, truth))

    started = time.perf_counter()
    graph = Index(ndim=DIM, metric="cos", dtype="f16", connectivity=16, expansion_add=128,
                  expansion_search=HNSW_EXPANSION_SEARCH)
    graph.add(np.arange(size), vectors, threads=2)
    build = time.perf_counter() - started
    row("usearch HNSW f16", measure(lambda q: list(ids[graph.search(q, 10).keys]), queries,
                                    truth), round(build, 1))

    started = time.perf_counter()
    index = TenantIndex(DIM)
    now = datetime.now(UTC)
    index.upsert([Row(f"i{j}", vectors[j], f"{j}.jpg", now, now) for j in range(size)])
    index.wait_built()
    build = time.perf_counter() - started
    mode = "HNSW" if index.hnsw is not None else "flat"
    row(f"TenantIndex ({mode}): the search path",
        measure(lambda q: [h.image_id for h in index.search(q, 10, frozenset())], queries,
                truth), round(build, 1))

    with tempfile.TemporaryDirectory() as tmp:
        store = LanceStore(Path(tmp), VectorStoreSettings(ann_min_rows=10**9))
        model = f"bench/{size}"
        for i in range(0, size, 10_000):
            store.upsert(model, [VectorRecord("bench", f"i{j}", vectors[j], f"{j}.jpg", now)
                                 for j in range(i, min(size, i + 10_000))])
        few = max(20, n_queries // 5)  # slow: fewer queries
        row("LanceDB exact (prefilter)", measure(
            lambda q: [h.image_id for h in store.search(model, "bench", q, 10)],
            queries[:few], truth[:few]))
        if lance_ann:
            from lancedb.index import IvfHnswSq

            started = time.perf_counter()
            store._table(model).create_index("vector", config=IvfHnswSq(distance_type="cosine"))
            build = time.perf_counter() - started
            store._indexed.clear()
            row("LanceDB IVF_HNSW_SQ", measure(
                lambda q: [h.image_id for h in store.search(model, "bench", q, 10)],
                queries[:few], truth[:few]), round(build, 1))
    return rows


def multi_tenant(total: int, big: int, n_queries: int, rng: np.random.Generator) -> dict:
    import pyarrow as pa

    from deeplens.settings import VectorStoreSettings
    from deeplens.vectors.base import VectorRecord, object_id
    from deeplens.vectors.lancedb import LanceStore
    from deeplens.vectors.memory import MemoryIndexedStore

    tenants = {"t000": big} | {f"t{i:03}": (total - big) // 99 for i in range(1, 100)}
    figures: dict = {"total_vectors": sum(tenants.values()), "tenants": len(tenants),
                     "big_tenant": big, "small_tenant": tenants["t001"]}
    kept: dict[str, np.ndarray] = {}
    model = "bench/multi"
    now = datetime.now(UTC)
    with tempfile.TemporaryDirectory() as tmp:
        writer = LanceStore(Path(tmp), VectorStoreSettings(ann_min_rows=10**9))
        started = time.perf_counter()
        writer.upsert(model, [VectorRecord("t999", "seed", clustered(1, rng)[0], "s.jpg", now)])
        table = writer._table(model)
        schema = writer._schema(DIM)
        for tenant, count in tenants.items():
            vectors = clustered(count, rng)
            if tenant in ("t000", "t001"):
                kept[tenant] = vectors
            for start in range(0, count, 50_000):
                part = vectors[start:start + 50_000]
                ids = [f"i{j}" for j in range(start, start + len(part))]
                table.add(pa.table({
                    "id": [object_id(tenant, i) for i in ids], "tenant_id": [tenant] * len(part),
                    "image_id": ids,
                    "vector": pa.FixedSizeListArray.from_arrays(pa.array(part.ravel()), DIM),
                    "original_file_name": [f"{i}.jpg" for i in ids],
                    "uploaded_at": pa.array([now] * len(part), pa.timestamp("us", tz="UTC")),
                    "indexed_at": pa.array([now] * len(part), pa.timestamp("us", tz="UTC"))},
                    schema=schema))
        table.optimize()
        writer._scalar.clear()
        writer._ensure_scalar_indexes(table)
        figures["write_s"] = round(time.perf_counter() - started, 1)
        print(f"wrote {figures['total_vectors']} vectors in {figures['write_s']} s", flush=True)

        search = MemoryIndexedStore(LanceStore(Path(tmp), VectorStoreSettings()), refresh_s=0.5)
        for tenant, label in (("t001", "small"), ("t000", "big")):
            started = time.perf_counter()
            index = search.tenant_index(model, tenant)
            loaded = time.perf_counter() - started
            assert index is not None
            index.wait_built()
            built = time.perf_counter() - started - loaded
            vectors = kept[tenant]
            queries = queries_for(vectors, n_queries, rng)
            result = measure(lambda q, t=tenant: [h.image_id for h in search.search(
                model, t, q, 10)], queries, exact_truth(vectors, queries))
            flat = index.vectors.nbytes if index.vectors is not None else 0  # None: graph only
            size = flat * len(index) / max(len(index.alive), 1)
            graph = index.hnsw.memory_usage if index.hnsw is not None else 0
            figures[label] = {
                "vectors": len(index), "path": "HNSW" if index.hnsw is not None else "flat",
                "load_s": round(loaded, 2), "hnsw_build_s": round(built, 1) if graph else None,
                "bytes_per_vector": round((size + graph) / len(index)), **result}
            print(label, figures[label], flush=True)

        other = LanceStore(Path(tmp), VectorStoreSettings())  # an indexer in another process
        delays = []
        for i in range(10):
            vector = clustered(1, rng)[0]
            other.upsert(model, [VectorRecord("t001", f"fresh{i}", vector, "f.jpg",
                                              datetime.now(UTC))])
            started = time.perf_counter()
            while time.perf_counter() - started < 10:
                hits = search.search(model, "t001", vector, 1)
                if hits and hits[0].image_id == f"fresh{i}":
                    break
                time.sleep(0.01)
            delays.append(time.perf_counter() - started)
        figures["upsert_to_visible_s"] = {"p50": round(float(np.median(delays)), 2),
                                          "max": round(max(delays), 2)}
        print("upsert to visible", figures["upsert_to_visible_s"], flush=True)
        search.close()
    return figures


def main() -> None:
    from benchmarks.common import bench_parser

    parser = bench_parser(__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--total", type=int, default=1_000_000)
    parser.add_argument("--big", type=int, default=100_000)
    parser.add_argument("--skip-lance-ann", action="store_true")
    parser.add_argument("--skip-candidates", action="store_true")
    args = parser.parse_args()

    from benchmarks.common import machine, record
    from benchmarks.spread import print_spread, repeated

    rng = np.random.default_rng(0)

    def one_run(_i: int) -> dict:
        rows: list[dict] = []
        if not args.skip_candidates:
            for size in args.sizes:
                rows += candidates(size, args.queries, not args.skip_lance_ann, rng)
        return {"candidates": rows,
                "multi": multi_tenant(args.total, args.big, args.queries, rng)}

    figures = repeated(args.repeat, one_run)
    rows, multi = figures["candidates"], figures["multi"]
    print(f"machine: {machine()}; {DIM}-d, {args.queries} queries, one thread")
    print("| vectors | candidate | p50 ms | p99 ms | recall@10 | build s |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['vectors']} | {r['candidate']} | {r['p50_ms']} | {r['p99_ms']} | "
              f"{r['recall_at_10']} | {r['build_s'] if r['build_s'] is not None else '-'} |")
    print(f"| {multi['total_vectors']} in {multi['tenants']} tenants | tenant | path | p50 ms | "
          "p99 ms | recall@10 | load s | HNSW build s | bytes/vector |")
    for label in ("small", "big"):
        f = multi[label]
        print(f"| | {f['vectors']} | {f['path']} | {f['p50_ms']} | {f['p99_ms']} | "
              f"{f['recall_at_10']} | {f['load_s']} | {f['hnsw_build_s'] or '-'} | "
              f"{f['bytes_per_vector']} |")
    print(f"upsert to visible: {multi['upsert_to_visible_s']}")
    print_spread(figures)
    print(f"recorded in {record('search', {'dim': DIM, **figures})}")


if __name__ == "__main__":
    main()
