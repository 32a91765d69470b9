"""Cost per image with a large tenant stored, against an empty store, side by side.

    python -m benchmarks.scale_bench [--rows 1000000] [--others 99] [--other-rows 10000]

Pre-fills one tenant with ``--rows`` images by bulk load, not through the pipeline:
catalog rows, hash rows with window hashes, vectors (``--dim``) and a tombstone for
every tenth; plus ``--others`` tenants of ``--other-rows`` each. Then runs the real
stage handlers in-process (``build_handler`` of dedup, indexer and projection, as
``benchmarks/stage_cost.py`` calls them) on ``--new`` new images and ``--deletes``
deletes in the big tenant, and the same on an empty store. Reports:

- CPU ms per image of each stage, prefilled and empty, and their ratio;
- the near look-up (``HashIndex.near``, the exact scan) per image in the big tenant, and
  per image of a batch of 64 looked up together (``HashIndex.near_many``, as dedup does);
- delete: dedup's CPU per delete event, and the search side's (tombstone applied by a
  refresh of the Gateway's index);
- restart: a new dedup cache and a new Gateway index, time to their first answer;
- memory per stored image: the dedup cache's arrays, and the Gateway's index (arrays,
  per-slot objects and HNSW graph), each also as the process's RSS growth;
- search in the big tenant: p50/p99 latency and recall@10 against an exact scan.

Writes a results file (benchmarks/common.py: ``--out``, ``--record``).
"""

from __future__ import annotations

import base64
import os
import resource
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

MODEL = "bench/random-init-seed0"  # as stage_cost: the similar tier is off (--similar)
NOW = datetime(2026, 12, 1, tzinfo=UTC)
PAGE = 20_000


def rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def unit_vectors(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    """Clustered unit vectors (a photo collection is not uniform noise)."""
    centres = rng.normal(size=(256, dim)).astype(np.float32)
    x = centres[rng.integers(0, 256, n)] + rng.normal(scale=0.7, size=(n, dim)).astype(
        np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def catalog_row(tenant: str, image_id: str, status: str) -> dict[str, Any]:
    return {"image_id": image_id, "tenant_id": tenant, "sha256": image_id * 2,
            "original_file_name": f"{image_id[:8]}.jpg", "storage_provider": "local",
            "storage_path": f"{tenant}/{image_id}.jpg", "file_size": 1000,
            "mime_type": "image/jpeg", "status": status, "stage": None, "width": 640,
            "height": 480, "format": "JPEG", "uploaded_at": NOW}


def prefill(settings: Any, tenant: str, n: int, dim: int, rng: np.random.Generator,
            tombstone_every: int = 10) -> list[str]:
    """Bulk-load ``n`` images of ``tenant``: catalog, hashes, vectors, tombstones."""
    import pyarrow as pa

    from deeplens.db import make_engine
    from deeplens.hash_index import image_hashes
    from deeplens.image_hashes import WINDOWS
    from deeplens.tombstones import deleted_images
    from deeplens.vectors.base import object_id
    from deeplens.vectors.lancedb import LanceStore
    from ingestion.tables import images

    engine = make_engine(settings.effective_catalog_url)
    lance = LanceStore(settings.data_dir / "vectors", settings.vector_store)
    ids = [uuid.uuid4().hex for _ in range(n)]
    width = len(WINDOWS)
    for start in range(0, n, PAGE):
        part = ids[start:start + PAGE]
        windows = rng.integers(0, 2**63, size=(len(part), width), dtype=np.int64)
        windows = windows.astype(">u8")
        with engine.begin() as conn:
            conn.execute(images.insert(), [catalog_row(tenant, i, "indexed") for i in part])
            conn.execute(image_hashes.insert(), [
                {"tenant_id": tenant, "image_id": i, "sha256": i * 2, "pixel_sha256": "px1:" + i,
                 "phash": int(windows[k, 0].astype(np.int64)), "windows": windows[k].tobytes()}
                for k, i in enumerate(part)])
            dead = part[::tombstone_every]
            conn.execute(deleted_images.insert(), [
                {"tenant_id": tenant, "image_id": "gone-" + i, "deleted_at": NOW} for i in dead])
        vectors = unit_vectors(rng, len(part), dim)
        table = lance._table(MODEL, dim)
        table.add(pa.table({
            "id": [object_id(tenant, i) for i in part], "tenant_id": [tenant] * len(part),
            "image_id": part,
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), dim),
            "original_file_name": [f"{i[:8]}.jpg" for i in part],
            "uploaded_at": pa.array([NOW] * len(part), pa.timestamp("us", tz="UTC")),
            "indexed_at": pa.array([NOW] * len(part), pa.timestamp("us", tz="UTC"))},
            schema=table.schema))
    return ids


def settle_store(settings: Any) -> None:
    """Scalar indexes and one compaction once every tenant is in, old versions dropped: a
    compaction after each tenant rewrote the growing table 100 times and LanceDB keeps
    superseded files for 7 days by default, which filled a 63 GB disk at 1M + 99 x 10k."""
    from datetime import timedelta

    from deeplens.vectors.lancedb import LanceStore

    lance = LanceStore(settings.data_dir / "vectors", settings.vector_store)  # as prefill
    lance._ensure_scalar_indexes(lance._table(MODEL))
    lance._table(MODEL).optimize(cleanup_older_than=timedelta(0))


def new_events(tenant: str, n: int, dim: int, rng: np.random.Generator) -> list[Any]:
    from deeplens.events import ImageProcessed, encode_vector
    from deeplens.image_hashes import WINDOWS, hex64

    out = []
    for _ in range(n):
        image_id = uuid.uuid4().hex
        windows = rng.integers(0, 2**63, size=len(WINDOWS), dtype=np.int64).astype(np.uint64)
        out.append(ImageProcessed(
            tenant_id=tenant, image_id=image_id, original_file_name="n.jpg",
            storage_provider="local", storage_path=f"{tenant}/{image_id}.jpg", file_size=1000,
            mime_type="image/jpeg", sha256=image_id * 2, uploaded_at=NOW, width=640,
            height=480, format="JPEG", validated_at=NOW, feature_model=MODEL,
            processed_at=NOW, features_f32=encode_vector(unit_vectors(rng, 1, dim)[0]),
            phash=hex64(int(windows[0])),
            window_hashes=base64.b64encode(windows.astype(">u8").tobytes()).decode(),
            pixel_fingerprint="px1:" + image_id))
    return out


def run_stages(settings: Any, tenant: str, ids: list[str], args: Any,
               rng: np.random.Generator) -> dict[str, float]:
    """CPU ms per image of dedup, indexer, projection on new images, and per delete."""
    from actors import dedup, indexer
    from benchmarks.stage_cost import as_envelopes, run_stage
    from deeplens.db import make_engine
    from deeplens.events import ImageDeleted
    from deeplens.stage_sdk import Envelope
    from deeplens.tombstones import Tombstones
    from ingestion import projection
    from ingestion.tables import images

    handlers = {"dedup": dedup.build_handler(settings),
                "indexer": indexer.build_handler(settings),
                "projection": projection.build_handler(settings)}
    events = new_events(tenant, args.warm + args.new, args.dim, rng)
    with make_engine(settings.effective_catalog_url).begin() as conn:
        conn.execute(images.insert(), [catalog_row(tenant, e.image_id, "processed")
                                       for e in events])
    envs = [Envelope(topic="images.processed", partition=0, offset=i, key=None,
                     timestamp=None, event=e) for i, e in enumerate(events)]
    warm, measured = envs[: args.warm], envs[args.warm:]
    for stage in ("dedup", "indexer"):
        run_stage(handlers[stage], warm, args.batch)  # first load of the tenant: not per image
    cost: dict[str, float] = {}
    cost["dedup"], found = run_stage(handlers["dedup"], measured, args.batch)
    cost["indexer"], indexed = run_stage(handlers["indexer"], measured, args.batch)
    cost["projection"], _ = run_stage(handlers["projection"],
                                      as_envelopes(indexed) + as_envelopes(found), args.batch)
    per_image = {stage: 1000 * seconds / len(measured) for stage, seconds in cost.items()}
    victims = list(rng.choice(ids, size=min(args.deletes, len(ids)), replace=False)) if ids \
        else [e.image_id for e in events[: args.deletes]]
    tombstones = Tombstones(settings.effective_catalog_url)
    for image_id in victims:
        tombstones.bury(tenant, image_id)
    deletes = [Envelope(topic="images.deleted", partition=0, offset=i, key=None,
                        timestamp=None, event=ImageDeleted(tenant_id=tenant, image_id=v))
               for i, v in enumerate(victims)]
    seconds, _ = run_stage(handlers["dedup"], deletes, args.batch)
    per_image["dedup per delete"] = 1000 * seconds / len(deletes)
    return per_image


def near_and_memory(settings: Any, tenant: str, n_rows: int, args: Any,
                    rng: np.random.Generator) -> dict[str, Any]:
    """The dedup cache on the big tenant: restart to first answer, look-up, memory."""
    from deeplens.hash_index import HashIndex
    from deeplens.image_hashes import WINDOWS

    before = rss_bytes()
    index = HashIndex(settings.effective_catalog_url)
    query = rng.integers(0, 2**63, size=len(WINDOWS), dtype=np.int64).astype(np.uint64)
    start = time.perf_counter()
    index.near(tenant, "q", int(query[0]), 10, query, 12)
    first = time.perf_counter() - start
    cached = index._cache[tenant]
    times = []
    for _ in range(args.queries):
        query = rng.integers(0, 2**63, size=len(WINDOWS), dtype=np.int64).astype(np.uint64)
        start = time.perf_counter()
        index.near(tenant, "q", int(query[0]), 10, query, 12)
        times.append(time.perf_counter() - start)
    batched = []  # what dedup does with a consumer batch: one pass for 64 look-ups
    for _ in range(max(1, args.queries // 64)):
        queries = [(f"q{j}", int(q[0]), q) for j, q in enumerate(rng.integers(
            0, 2**63, size=(64, len(WINDOWS)), dtype=np.int64).astype(np.uint64))]
        start = time.perf_counter()
        index.near_many(tenant, queries, 10, 12, refresh=False)
        batched.append((time.perf_counter() - start) / len(queries))
    return {"restart_to_first_answer_s": round(first, 2),
            "near_lookup_ms_p50": round(1000 * float(np.median(times)), 2),
            "near_lookup_ms_p99": round(1000 * float(np.quantile(times, 0.99)), 2),
            "near_lookup_batched_ms_per_image": round(1000 * float(np.median(batched)), 2),
            "cache_bytes_per_image": round(cached.nbytes() / len(cached), 1),
            "rss_bytes_per_image": round((rss_bytes() - before) / n_rows, 1)}


def search_side(settings: Any, tenant: str, n_rows: int, args: Any,
                rng: np.random.Generator) -> dict[str, Any]:
    """The Gateway's index on the big tenant: restart, memory, search, delete."""
    from deeplens.tombstones import Tombstones
    from deeplens.vectors.graph_cache import GraphCache
    from deeplens.vectors.lancedb import LanceStore
    from deeplens.vectors.memory import MemoryIndexedStore

    def gateway() -> Any:  # as make_search_store builds it, with the graphs saved on disk
        return MemoryIndexedStore(
            LanceStore(settings.data_dir / "vectors", settings.vector_store), tombstones,
            refresh_s=3600, graphs=GraphCache(settings.data_dir / "search-graphs"))

    before = rss_bytes()
    tombstones = Tombstones(settings.effective_catalog_url)
    store = gateway()
    probe = unit_vectors(rng, 1, args.dim)[0]
    start = time.perf_counter()
    store.search(MODEL, tenant, probe, 10)
    first = time.perf_counter() - start
    index = store.tenant_index(MODEL, tenant)
    assert index is not None
    start = time.perf_counter()
    built = index.wait_built(3600)
    build_s = time.perf_counter() - start
    growth = rss_bytes() - before
    live = np.flatnonzero(index.alive[: index.used])
    held = index.vectors_of(live)  # once the graph is built, its f16 copy is the only one
    queries = held[rng.choice(len(live), size=args.queries)] + rng.normal(
        scale=0.05, size=(args.queries, args.dim)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    times, recalls = [], []
    for q in queries:
        start = time.perf_counter()
        hits = store.search(MODEL, tenant, q, 10)
        times.append(time.perf_counter() - start)
        scores = held @ q
        exact = {index.ids[s] for s in live[np.argpartition(-scores, 10)[:10]]}
        recalls.append(len(exact & {h.image_id for h in hits}) / 10)
    del held
    victims = [index.ids[s] for s in rng.choice(live, size=args.deletes, replace=False)]
    cpu = time.process_time()
    for image_id in victims:  # as the Gateway learns of each: a tombstone, then a refresh
        tombstones.bury(tenant, image_id)
        store.refresh()
    delete_ms = 1000 * (time.process_time() - cpu) / len(victims)
    store.close()
    # A second restart: the graph saved by the first build is read back, not rebuilt.
    again = gateway()
    start = time.perf_counter()
    again.search(MODEL, tenant, probe, 10)
    resumed_first = time.perf_counter() - start
    resumed = again.tenant_index(MODEL, tenant)
    resumed_graph = resumed is not None and resumed.hnsw is not None
    again.close()
    return {"restart_to_first_answer_s": round(first, 2), "hnsw": built,
            "restart_with_saved_graph_s": round(resumed_first, 2),
            "saved_graph_used": resumed_graph,
            "hnsw_build_s": round(build_s, 1),
            "index_bytes_per_image": round(index.nbytes() / len(index), 1),
            "rss_bytes_per_image": round(growth / n_rows, 1),
            "search_ms_p50": round(1000 * float(np.median(times)), 3),
            "search_ms_p99": round(1000 * float(np.quantile(times, 0.99)), 3),
            "recall_at_10": round(float(np.mean(recalls)), 4),
            "cpu_ms_per_delete_tombstone_and_refresh": round(delete_ms, 3)}


def projected(results: dict[str, Any], size: int) -> dict[str, float]:
    """What one tenant of ``size`` images costs a node, scaled from this run's measured
    per-image figures: memory linearly, the near look-up linearly (an exact scan), the
    other per-image CPU as measured (it does not grow with the tenant)."""
    rows = results["rows"]
    return {
        "dedup_cache_gb": round(results["dedup_cache"]["cache_bytes_per_image"] * size / 1e9,
                                2),
        "gateway_index_gb": round(results["gateway"]["index_bytes_per_image"] * size / 1e9, 2),
        "near_lookup_ms": round(results["dedup_cache"]["near_lookup_ms_p50"] * size / rows, 1),
        "near_lookup_batched_ms": round(
            results["dedup_cache"]["near_lookup_batched_ms_per_image"] * size / rows, 2),
        # dedup's stage runs the batched look-up: its CPU grows by that per image
        "dedup_cpu_ms_per_image": round(results["prefilled"]["dedup"]
                                        + results["dedup_cache"]["near_lookup_batched_ms_per_image"]
                                        * (size / rows - 1), 1),
    }


def make_settings(data_dir: Path) -> Any:
    from deeplens.settings import Settings

    data_dir.mkdir(parents=True, exist_ok=True)
    return Settings(data_dir=data_dir)


def main() -> None:
    from benchmarks.common import bench_parser, record

    parser = bench_parser(__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--others", type=int, default=99)
    parser.add_argument("--other-rows", type=int, default=10_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--new", type=int, default=1000)
    parser.add_argument("--warm", type=int, default=32)
    parser.add_argument("--deletes", type=int, default=200)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--similar", action="store_true",
                        help="a real-model id: dedup's similar tier runs (and loads vectors)")
    args = parser.parse_args()
    global MODEL
    if args.similar:
        MODEL = "bench/scale"

    from deeplens.hash_index import near_distances
    from deeplens.image_hashes import WINDOWS

    near_distances(np.zeros((1, len(WINDOWS)), np.uint64), np.zeros(len(WINDOWS), np.uint64))
    rng = np.random.default_rng(0)
    results: dict[str, Any] = {"rows": args.rows, "others": args.others,
                               "other_rows": args.other_rows, "dim": args.dim}
    with tempfile.TemporaryDirectory(dir=os.environ.get("SCALE_BENCH_DIR")) as tmp:
        empty = make_settings(Path(tmp) / "empty")
        results["empty"] = run_stages(empty, "big", [], args, rng)
        print("empty store:", results["empty"], flush=True)
        full = make_settings(Path(tmp) / "full")
        start = time.perf_counter()
        ids = prefill(full, "big", args.rows, args.dim, rng)
        for k in range(args.others):
            prefill(full, f"other{k}", args.other_rows, args.dim, rng)
        settle_store(full)
        results["prefill_s"] = round(time.perf_counter() - start, 1)
        print(f"prefilled in {results['prefill_s']} s", flush=True)
        results["prefilled"] = run_stages(full, "big", ids, args, rng)
        print("prefilled store:", results["prefilled"], flush=True)
        results["ratio"] = {k: round(results["prefilled"][k] / results["empty"][k], 2)
                            for k in results["empty"] if results["empty"][k] > 0}
        results["dedup_cache"] = near_and_memory(full, "big", args.rows, args, rng)
        print("dedup cache:", results["dedup_cache"], flush=True)
        results["gateway"] = search_side(full, "big", args.rows, args, rng)
        print("gateway:", results["gateway"], flush=True)
    results["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    results["tenant_of"] = {label: projected(results, size)
                            for label, size in (("1M", 10**6), ("10M", 10**7))}
    record("scale", results)


if __name__ == "__main__":
    main()
