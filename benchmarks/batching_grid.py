"""Batching grid: max_batch_size x batch_wait_timeout_s for the Embedder deployment.

    python -m benchmarks.batching_grid [--model ViT-B-32] [--requests 96]
        [--sizes 1 8 32] [--waits 0.002 0.01 0.1] [--concurrency 64] [--repeat 3]

For each cell the knobs are applied to the running deployment through its
user_config (``reconfigure``, no restart), then ``--requests`` single-image
requests are sent with at most ``--concurrency`` outstanding (closed loop: all of
them queue at once, so p50/p99 here are mostly queueing; ``benchmarks.tune`` measures
latency under an open-loop arrival rate and recommends a setting). Prints throughput,
p50/p99 latency and the mean batch size the deployment actually formed. Steady state:
one warm-up request per cell is not measured. The defaults (32 / 0.01) are a cell.
Writes a results file (benchmarks/common.py: ``--out``, ``--record``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


async def run_cell(handle, photos: list[bytes], concurrency: int) -> tuple[float, list[float]]:
    gate = asyncio.Semaphore(concurrency)
    latencies: list[float] = []

    async def one(data: bytes) -> None:
        async with gate:
            start = time.perf_counter()
            # embed_vectors: the upload batch queue the knobs set (``embed`` has a
            # query queue of its own, which reconfigure leaves alone)
            result = await handle.embed_vectors.remote([data])
            latencies.append(time.perf_counter() - start)
            assert result[0].ok

    start = time.perf_counter()
    await asyncio.gather(*(one(p) for p in photos))
    return len(photos) / (time.perf_counter() - start), latencies


def main() -> None:
    from benchmarks.common import bench_parser

    parser = bench_parser(__doc__)
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--requests", type=int, default=96)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--waits", type=float, nargs="+", default=[0.002, 0.01, 0.1])
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args()

    import ray
    from ray import serve

    from benchmarks.common import machine, mute_stderr_from_now, percentile, record
    from benchmarks.spread import repeated
    from cluster.samples import jpeg_bytes, scene
    from deeplens.settings import ModelSettings
    from serve_apps.embedder import Embedder, EmbedderArgs

    photos = [jpeg_bytes(scene(i, 320)) for i in range(args.requests)]
    ray.init(include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    logging.getLogger("ray.serve").setLevel(logging.WARNING)  # no per-deploy INFO lines
    model = ModelSettings(name=args.model, pretrained="random")
    args_ = EmbedderArgs(model=model, max_batch_size=max(args.sizes))
    rows = []
    for size in args.sizes:
        for wait in args.waits:
            app = Embedder.options(
                max_ongoing_requests=512,
                ray_actor_options={"num_cpus": 0.5},
                user_config={"max_batch_size": size, "batch_wait_timeout_s": wait},
            ).bind(args_)
            handle = serve.run(app, name="grid", route_prefix=None)
            handle.embed.remote(photos[0]).result(timeout_s=300)  # warm-up

            def one_run(_i: int, handle=handle) -> dict:
                before = handle.stats.remote().result()
                rate, latencies = asyncio.run(run_cell(handle, photos, args.concurrency))
                after = handle.stats.remote().result()
                batches = after["batches"] - before["batches"]
                return {"images_per_s": round(rate, 1),
                        "p50_ms": round(percentile(latencies, 50) * 1000, 1),
                        "p99_ms": round(percentile(latencies, 99) * 1000, 1),
                        "mean_formed_batch": round(
                            (after["items"] - before["items"]) / max(batches, 1), 1)}

            cell = repeated(args.repeat, one_run, label=f"{size}/{wait}")
            cell.pop("runs", None)
            rows.append({"max_batch_size": size, "batch_wait_timeout_s": wait, **cell})
            print({k: v for k, v in rows[-1].items() if k != "spread"}, flush=True)
    mute_stderr_from_now("batching_grid")  # shutdown noise to a log: the results come last
    serve.shutdown()
    ray.shutdown()
    print(f"machine: {machine()}; model {args.model} (random weights), "
          f"{args.requests} requests, concurrency {args.concurrency}")
    print("| max_batch_size | wait s | images/s | p50 ms | p99 ms | mean batch |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        spread = r.get("spread", {}).get("images_per_s")
        rate = f"{r['images_per_s']}" + (f" ({spread[0]:g}-{spread[1]:g})" if spread else "")
        print(f"| {r['max_batch_size']} | {r['batch_wait_timeout_s']} | {rate} | "
              f"{r['p50_ms']} | {r['p99_ms']} | {r['mean_formed_batch']} |")
    print(f"recorded in {record('batching', {'model': args.model, 'rows': rows})}")


if __name__ == "__main__":
    main()
