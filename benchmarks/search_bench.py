"""Search in the embedded store: latency, QPS and recall@10 at 10k and 100k vectors.

    python -m benchmarks.search_bench [--sizes 10000 100000] [--queries 200]

Vectors are 512-d unit vectors drawn around 200 cluster centres (CLIP embeddings of
a photo collection cluster by subject; uniform random vectors are the ANN worst
case and unlike real data). One tenant holds them all. For each size: the exact
(brute-force) path, then the IVF_HNSW_SQ index DeepLens builds past
``ann_min_rows``, both through ``LanceStore.search`` with the tenant prefilter.
Recall@10 is against numpy's exact top 10. Queries are perturbed copies of
stored vectors. Writes results/search.json.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np


def clustered(n: int, dim: int, rng: np.random.Generator) -> np.ndarray:
    centres = rng.normal(size=(200, dim))
    x = centres[rng.integers(0, 200, n)] + rng.normal(scale=0.6, size=(n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def measure(store, model: str, queries: np.ndarray, truth: list[set[str]]) -> dict:
    latencies, recalls = [], []
    for q, want in zip(queries, truth, strict=True):
        start = time.perf_counter()
        hits = store.search(model, "bench", q, k=10)
        latencies.append(time.perf_counter() - start)
        recalls.append(len({h.image_id for h in hits} & want) / 10)
    lat = np.array(latencies) * 1000
    return {"p50_ms": round(float(np.percentile(lat, 50)), 2),
            "p99_ms": round(float(np.percentile(lat, 99)), 2),
            "qps_one_thread": round(len(lat) / (lat.sum() / 1000), 1),
            "recall_at_10": round(float(np.mean(recalls)), 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--dim", type=int, default=512)
    args = parser.parse_args()

    from benchmarks.common import machine, record
    from deeplens.settings import VectorStoreSettings
    from deeplens.vector_lancedb import LanceStore
    from deeplens.vector_store import VectorRecord

    rng = np.random.default_rng(0)
    rows = []
    for size in args.sizes:
        vectors = clustered(size, args.dim, rng)
        picks = rng.integers(0, size, args.queries)
        queries = vectors[picks] + rng.normal(scale=0.02, size=(args.queries, args.dim))
        queries = (queries / np.linalg.norm(queries, axis=1, keepdims=True)).astype(np.float32)
        top = np.argsort(-(queries @ vectors.T), axis=1)[:, :10]
        truth = [{f"i{j}" for j in row} for row in top]
        now = datetime.now(UTC)
        with tempfile.TemporaryDirectory() as tmp:
            store = LanceStore(Path(tmp), VectorStoreSettings(ann_min_rows=10**9))
            model = f"bench/{size}"
            start = time.perf_counter()
            for i in range(0, size, 5000):
                store.upsert(model, [VectorRecord("bench", f"i{j}", vectors[j], f"{j}.jpg", now)
                                     for j in range(i, min(size, i + 5000))])
            upsert_s = time.perf_counter() - start
            exact = measure(store, model, queries, truth)
            table = store._table(model)
            start = time.perf_counter()
            from lancedb.index import IvfHnswSq

            table.create_index("vector", config=IvfHnswSq(distance_type="cosine"))
            index_s = time.perf_counter() - start
            ann = measure(store, model, queries, truth)
        for mode, figures in (("exact", exact), ("ivf_hnsw_sq", ann)):
            rows.append({"vectors": size, "mode": mode,
                         "upsert_vectors_per_s": round(size / upsert_s),
                         "index_build_s": round(index_s, 1) if mode != "exact" else None,
                         **figures})
            print(rows[-1], flush=True)
    print(f"machine: {machine()}; {args.dim}-d, {args.queries} queries, one thread")
    print("| vectors | search | p50 ms | p99 ms | QPS (1 thread) | recall@10 |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['vectors']} | {r['mode']} | {r['p50_ms']} | {r['p99_ms']} | "
              f"{r['qps_one_thread']} | {r['recall_at_10']} |")
    print(f"recorded in {record('search', {'dim': args.dim, 'rows': rows})}")


if __name__ == "__main__":
    main()
