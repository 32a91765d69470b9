"""Search latency through the HTTP API of a running stack, split by where it went.

    python -m benchmarks.search_http_bench [--images 60] [--queries 100] [--model ViT-B-32]
        [--repeat 3]

Starts the whole local stack (`deeplens up` in-process: broker, Ray, Embedder,
Gateway, every stage), uploads generated photos, waits until they are indexed, then
sends text searches and image searches one at a time. Each answer's
``Server-Timing`` header says how long the Embedder took to encode the query
(``embed``) and how long the index took to answer (``index``); the rest is HTTP,
auth, Serve routing and JSON. Random weights: speed does not depend on them. The
stack's start, the uploads and the first 5 queries of each kind (warm-up) are not
timed. ``--repeat N``: N rounds of queries against the same stack, medians with their
min-max. Results go to benchmarks/runs/ (``--record``: results/search_http.json).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

from benchmarks.common import machine, record, unlimited_ingestion
from cluster.samples import jpeg_bytes, sample_set, scene
from cluster.stack import LocalStack
from deeplens.broker import free_port
from deeplens.settings import (
    ModelSettings,
    ServeSettings,
    Settings,
)


def timings(answer: httpx.Response) -> dict[str, float]:
    parts = (p.split(";dur=") for p in answer.headers.get("Server-Timing", "").split(", ") if p)
    return {name: float(ms) for name, ms in parts}


def summarise(rows: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    out = {}
    for key in ("total", "embed", "index"):
        values = np.array([r[key] for r in rows])
        out[key] = {"p50_ms": round(float(np.percentile(values, 50)), 2),
                    "p99_ms": round(float(np.percentile(values, 99)), 2)}
    return out


def main() -> None:
    from benchmarks.common import BenchParser
    from benchmarks.spread import print_spread, repeated

    parser = BenchParser(__doc__)
    parser.add_argument("--images", type=int, default=60)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--model", default="ViT-B-32")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(
            data_dir=Path(tmp), api_keys="bench:bench-key-0123456789ab",
            model=ModelSettings(name=args.model, pretrained="random"),
            serve=ServeSettings(port=free_port()),
            ingestion=unlimited_ingestion())
        with LocalStack(settings) as stack:
            client = httpx.Client(base_url=stack.url, timeout=120, headers={
                "Authorization": "Bearer bench-key-0123456789ab"})
            ids = [client.post("/v1/images", files={"file": (name, data)}).json()["image_id"]
                   for name, data in sample_set(args.images)]
            deadline = time.monotonic() + 600
            while time.monotonic() < deadline:
                statuses = client.post("/v1/images/statuses",
                                       json={"image_ids": ids}).json()["statuses"]
                if sum(s in ("indexed", "failed") for s in statuses.values()) == len(ids):
                    break
                time.sleep(1)
            queries = [jpeg_bytes(scene(9000 + i, 224)) for i in range(args.queries)]

            def one_round(_: int) -> dict:
                results: dict[str, list[dict[str, float]]] = {"text": [], "image": []}
                for i in range(args.queries + 5):  # the first 5 of each warm up
                    started = time.perf_counter()
                    answer = client.post("/v1/search",
                                         json={"text": f"a photo number {i}", "k": 10})
                    row = timings(answer) | {"total": (time.perf_counter() - started) * 1000}
                    if i >= 5:
                        results["text"].append(row)
                    started = time.perf_counter()
                    answer = client.post("/v1/search/image", data={"k": "10"}, files={
                        "file": ("q.jpg", queries[i % len(queries)])})
                    row = timings(answer) | {"total": (time.perf_counter() - started) * 1000}
                    if i >= 5:
                        results["image"].append(row)
                return {kind: summarise(rows) for kind, rows in results.items()}

            summary = repeated(args.repeat, one_round)
    figures = {k: v for k, v in summary.items() if k in ("text", "image")}
    print(f"machine: {machine()}; model {args.model} (random weights, CPU); "
          f"{args.images} images indexed; {args.queries} queries of each kind, one at a time")
    print("| query | total p50 / p99 ms | Embedder p50 / p99 ms | index p50 / p99 ms |")
    print("|---|---|---|---|")
    for kind, f in figures.items():
        print(f"| {kind} | {f['total']['p50_ms']} / {f['total']['p99_ms']} | "
              f"{f['embed']['p50_ms']} / {f['embed']['p99_ms']} | "
              f"{f['index']['p50_ms']} / {f['index']['p99_ms']} |")
    print_spread(summary)
    path = record("search_http", {"model": args.model, "images": args.images, **summary})
    print(f"recorded in {path}")


if __name__ == "__main__":
    main()
