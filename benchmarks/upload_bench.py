"""Upload throughput and latency through the HTTP API, broker acknowledgement included.

    python -m benchmarks.upload_bench [--images 400] [--concurrency 1 4 16] [--repeat 3]

Starts a local broker and the upload API (uvicorn, one process), uploads distinct
JPEGs (~20 KB) from N client threads, and prints uploads/s and p50/p99 latency per
concurrency level. The broker's and the API's start are not timed. ``--repeat N``
runs every level N times against the same API (new images each time) and reports
medians with their min-max. Results go to benchmarks/runs/ (``--record``:
benchmarks/results/upload.json).
"""

from __future__ import annotations

import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from benchmarks.common import machine, percentile, record, unlimited_ingestion
from deeplens.broker import local_broker
from deeplens.kafka import admin_client
from deeplens.settings import KafkaSettings, Settings
from deeplens.topics import TopicNames, ensure_topics
from ingestion.api import create_app
from tests import images
from tests.http_server import serve_app


def run_level(url: str, payloads: list[bytes], concurrency: int) -> dict:
    latencies: list[float] = []
    client = httpx.Client(base_url=url, headers={"Authorization": "Bearer bench-key-0123456789ab"},
                          timeout=60, limits=httpx.Limits(max_connections=concurrency))

    def one(data: bytes) -> int:
        start = time.perf_counter()
        status = client.post("/v1/images", files={"file": ("b.jpg", data)}).status_code
        latencies.append(time.perf_counter() - start)
        return status

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        statuses = list(pool.map(one, payloads))
    elapsed = time.perf_counter() - start
    assert statuses.count(202) == len(payloads), f"non-202 answers: {set(statuses)}"
    return {"concurrency": concurrency, "uploads": len(payloads),
            "uploads_per_s": round(len(payloads) / elapsed, 1),
            "p50_ms": round(percentile(latencies, 50) * 1000, 1),
            "p99_ms": round(percentile(latencies, 99) * 1000, 1)}


def main() -> None:
    from benchmarks.common import BenchParser
    from benchmarks.spread import print_spread, repeated

    parser = BenchParser(__doc__)
    parser.add_argument("--images", type=int, default=400, help="uploads per level")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    args = parser.parse_args()
    with local_broker() as broker, tempfile.TemporaryDirectory() as tmp:
        kafka = KafkaSettings(bootstrap_servers=broker.bootstrap, one_record_per_batch=True)
        ensure_topics(admin_client(kafka), TopicNames(""))
        settings = Settings(data_dir=Path(tmp), api_keys="bench:bench-key-0123456789ab", kafka=kafka,
                            ingestion=unlimited_ingestion())
        seed = 0
        with serve_app(create_app(settings)) as url:
            def one_round(_: int) -> dict:
                nonlocal seed
                rows = []
                for level in args.concurrency:
                    payloads = [images.jpeg(seed + i, 160, 120) for i in range(args.images)]
                    seed += args.images
                    rows.append(run_level(url, payloads, level))
                    print(rows[-1], flush=True)
                return {"levels": rows}

            figures = repeated(args.repeat, one_round)
    print(f"machine: {machine()}")
    print("| concurrency | uploads/s | p50 ms | p99 ms |\n|---|---|---|---|")
    for r in figures["levels"]:
        print(f"| {r['concurrency']} | {r['uploads_per_s']} | {r['p50_ms']} | {r['p99_ms']} |")
    print_spread(figures)
    print(f"recorded in {record('upload', figures)}")


if __name__ == "__main__":
    main()
