"""Tune the Embedder's batching: which max_batch_size and wait, for a latency target.

    python -m benchmarks.tune --p95-ms 500 [--model deeplens-tiny] [--sizes 8 32 64]
        [--waits 0.002 0.01 0.05] [--rates 20 40 60 | --fractions 0.3 0.6 0.9]
        [--seconds 6] [--repeat 3] [--out DIR]

Open loop, as traffic arrives: for every batch size x wait (applied through the
deployment's ``user_config``, no restart) and every arrival rate, single images arrive
at Poisson-distributed times whether or not earlier ones are answered (``embed_images``,
the feeders' call: decode, hashes, thumbnail, model). A request's latency runs from its
scheduled arrival to its answer, so queueing counts. Without ``--rates`` the rates are
``--fractions`` of the capacity measured first (closed loop, largest batch).

Steady state only: each setting gets a warm-up burst (not measured) and each cell drops
the arrivals of its first ``--warmup-s`` seconds. Per cell: offered and achieved
images/s, p50/p95/p99 ms, the batch the deployment formed. A plot of achieved
throughput against p95 (one line per setting, PNG and SVG) goes beside the results file.

Recommends the setting with the highest throughput that keeps up with its arrival rate
(achieved >= ``--keep-up`` x offered) with p95 under ``--p95-ms``, and prints the
settings lines that apply it. ``recommend`` and the figures are pure functions
(tests/benchmarks/test_tune.py).
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.common import percentile

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@dataclass(frozen=True)
class Choice:
    max_batch_size: int
    batch_wait_timeout_s: float
    rate: float  # the arrival rate it was measured at
    images_per_s: float
    p95_ms: float


def poisson_arrivals(rate: float, count: int, seed: int = 0) -> list[float]:
    """Arrival times (s from 0) of ``count`` requests of a Poisson process at ``rate``/s."""
    rng = random.Random(seed)
    t, times = 0.0, []
    for _ in range(count):
        t += rng.expovariate(rate)
        times.append(t)
    return times


def cell_figures(arrivals: list[float], answered: list[float], warmup_s: float) -> dict:
    """Steady-state figures of one cell from each request's arrival and answer time (s):
    arrivals in the first ``warmup_s`` are left out."""
    kept = [(a, d) for a, d in zip(arrivals, answered, strict=True) if a >= warmup_s]
    if len(kept) < 2:
        raise ValueError("too few requests after the warm-up: raise --seconds")
    latencies = [d - a for a, d in kept]
    span = max(d for _, d in kept) - min(a for a, _ in kept)
    offered = (len(kept) - 1) / (kept[-1][0] - kept[0][0]) if kept[-1][0] > kept[0][0] else 0
    return {"requests": len(kept), "offered_per_s": round(offered, 1),
            "images_per_s": round(len(kept) / span, 1),
            "p50_ms": round(percentile(latencies, 50) * 1000, 1),
            "p95_ms": round(percentile(latencies, 95) * 1000, 1),
            "p99_ms": round(percentile(latencies, 99) * 1000, 1)}


def recommend(cells: list[dict], p95_target_ms: float, keep_up: float = 0.9) -> Choice | None:
    """The setting with the highest throughput at a rate it kept up with (achieved >=
    keep_up x offered) and p95 under the target; ties go to the lower p95, then the shorter
    wait, then the smaller batch. None when no cell meets the target."""
    fitting = [c for c in cells if c["p95_ms"] <= p95_target_ms
               and c["images_per_s"] >= keep_up * c["offered_per_s"]]
    if not fitting:
        return None
    best = max(fitting, key=lambda c: (c["images_per_s"], -c["p95_ms"],
                                       -c["batch_wait_timeout_s"], -c["max_batch_size"]))
    return Choice(best["max_batch_size"], best["batch_wait_timeout_s"], best["rate"],
                  best["images_per_s"], best["p95_ms"])


def settings_lines(choice: Choice, max_ongoing_requests: int = 256) -> list[str]:
    """What applies the choice: the settings for ``deeplens up`` and the Serve config's
    user_config for a running cluster (applied by reconfigure, no restart)."""
    lines = [f"DEEPLENS_SERVE__MAX_BATCH_SIZE={choice.max_batch_size}",
             f"DEEPLENS_SERVE__BATCH_WAIT_TIMEOUT_S={choice.batch_wait_timeout_s:g}"]
    if max_ongoing_requests < 2 * choice.max_batch_size:
        lines.append(f"DEEPLENS_SERVE__MAX_ONGOING_REQUESTS={2 * choice.max_batch_size}")
    lines += ["# a running cluster: in cluster/serve_config.yaml, the Embedder's",
              f"#   user_config: {{max_batch_size: {choice.max_batch_size}, "
              f"batch_wait_timeout_s: {choice.batch_wait_timeout_s:g}}}",
              "# then: serve deploy cluster/serve_config.yaml"]
    return lines


def plot(cells: list[dict], stem: Path, p95_target_ms: float | None = None) -> list[Path]:
    """Achieved images/s against p95 ms, one line per setting over its rates: PNG and SVG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    settings = sorted({(c["max_batch_size"], c["batch_wait_timeout_s"]) for c in cells})
    for size, wait in settings:
        line = sorted((c for c in cells if (c["max_batch_size"], c["batch_wait_timeout_s"])
                       == (size, wait)), key=lambda c: c["rate"])
        ax.plot([c["p95_ms"] for c in line], [c["images_per_s"] for c in line], marker="o",
                label=f"batch {size}, wait {wait:g} s")
    if p95_target_ms:
        ax.axvline(p95_target_ms, color="grey", linestyle="--", label="p95 target")
    ax.set_xlabel("p95 latency (ms), arrival to answer")
    ax.set_ylabel("images/s answered")
    ax.set_xscale("log")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    paths = [stem.with_suffix(".png"), stem.with_suffix(".svg")]
    for path in paths:
        fig.savefig(path)
    plt.close(fig)
    return paths


# -- measuring (Ray) ----------------------------------------------------------------------


async def open_loop(call: Any, photos: list[bytes], arrivals: list[float]) -> list[float]:
    """Send request i at arrivals[i] whatever the earlier ones are doing; answer times."""
    loop = asyncio.get_running_loop()
    start = loop.time() + 0.05
    answered = [0.0] * len(arrivals)

    async def one(i: int, at: float) -> None:
        await asyncio.sleep(max(0.0, start + at - loop.time()))
        results = await call.remote([photos[i % len(photos)]])
        assert results[0].ok, results[0]
        answered[i] = loop.time() - start

    await asyncio.gather(*(one(i, at) for i, at in enumerate(arrivals)))
    return answered


async def closed_loop(call: Any, photos: list[bytes], concurrency: int, count: int) -> float:
    """Images/s with ``concurrency`` requests always outstanding (the capacity probe)."""
    gate = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        async with gate:
            await call.remote([photos[i % len(photos)]])

    started = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(count)))
    return count / (time.perf_counter() - started)


def measure(args: Any) -> dict:
    import ray
    from ray import serve

    from benchmarks.common import mute_stderr_from_now
    from benchmarks.spread import repeated
    from cluster.samples import jpeg_bytes, scene
    from deeplens.settings import ModelSettings
    from serve_apps.embedder import Embedder, EmbedderArgs

    photos = [jpeg_bytes(scene(i, args.side)) for i in range(64)]
    ray.init(include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    logging.getLogger("ray.serve").setLevel(logging.WARNING)  # no per-deploy INFO lines
    model = ModelSettings(name=args.model, pretrained=args.pretrained)
    deploy_args = EmbedderArgs(model=model, max_batch_size=max(args.sizes))

    def deploy(size: int, wait: float) -> Any:
        app = Embedder.options(
            num_replicas=args.replicas, max_ongoing_requests=max(512, 4 * size),
            ray_actor_options={"num_cpus": 0.5},
            user_config={"max_batch_size": size, "batch_wait_timeout_s": wait},
        ).bind(deploy_args)
        return serve.run(app, name="tune", route_prefix=None)

    handle = deploy(max(args.sizes), max(args.waits))
    handle.embed_images.remote(photos[:1]).result(timeout_s=600)
    rates = args.rates
    capacity = None
    if not rates:
        count = max(64, 8 * max(args.sizes))
        asyncio.run(closed_loop(handle.embed_images, photos, 2 * max(args.sizes), count))
        capacity = asyncio.run(closed_loop(handle.embed_images, photos,
                                           2 * max(args.sizes), count))
        rates = [round(capacity * f, 1) for f in args.fractions]
        print(f"capacity (closed loop, batch {max(args.sizes)}): {capacity:.1f} images/s; "
              f"rates {rates}", flush=True)
    cells = []
    for size in args.sizes:
        for wait in args.waits:
            handle = deploy(size, wait)
            burst = 2 * size  # warm-up, not measured: fills the batch path once
            asyncio.run(closed_loop(handle.embed_images, photos, burst, burst))
            for rate in rates:
                count = max(16, round(rate * (args.seconds + args.warmup_s)))

                def one_run(i: int, rate: float = rate, count: int = count,
                            handle: Any = handle) -> dict:
                    arrivals = poisson_arrivals(rate, count, seed=i)
                    before = handle.stats.remote().result()
                    answered = asyncio.run(open_loop(handle.embed_images, photos, arrivals))
                    after = handle.stats.remote().result()
                    batches = max(after["batches"] - before["batches"], 1)
                    return {**cell_figures(arrivals, answered, args.warmup_s),
                            "mean_formed_batch": round(
                                (after["items"] - before["items"]) / batches, 1)}

                cell = {"max_batch_size": size, "batch_wait_timeout_s": wait, "rate": rate,
                        **repeated(args.repeat, one_run, label=f"{size}/{wait}/{rate}")}
                cell.pop("runs", None)
                cells.append(cell)
                print({k: v for k, v in cell.items() if k != "spread"}, flush=True)
    mute_stderr_from_now("tune")  # shutdown noise to a log: the results come last
    serve.shutdown()
    ray.shutdown()
    return {"model": args.model, "replicas": args.replicas, "side": args.side,
            "capacity_images_per_s": round(capacity, 1) if capacity else None,
            "rates": rates, "warmup_s": args.warmup_s, "seconds": args.seconds,
            "repeat": args.repeat, "cells": cells}


def report(figures: dict, target: float, keep_up: float) -> Choice | None:
    print("\n| batch | wait s | offered/s | images/s | p50 ms | p95 ms | p99 ms | formed |")
    print("|---|---|---|---|---|---|---|---|")
    for c in figures["cells"]:
        spread = c.get("spread", {})
        p95 = f"{c['p95_ms']}" + (f" ({spread['p95_ms'][0]:g}-{spread['p95_ms'][1]:g})"
                                  if "p95_ms" in spread else "")
        print(f"| {c['max_batch_size']} | {c['batch_wait_timeout_s']:g} | {c['offered_per_s']} "
              f"| {c['images_per_s']} | {c['p50_ms']} | {p95} | {c['p99_ms']} | "
              f"{c['mean_formed_batch']} |")
    return recommend(figures["cells"], target, keep_up)


def main() -> None:
    from benchmarks.common import bench_parser, machine, record

    parser = bench_parser(__doc__)
    parser.add_argument("--p95-ms", type=float, required=True, help="latency target")
    parser.add_argument("--model", default="deeplens-tiny",
                        help="model name (default the tiny test model; ViT-B-32 on a GPU)")
    parser.add_argument("--pretrained", default="random")
    parser.add_argument("--sizes", type=int, nargs="+", default=[8, 32, 64])
    parser.add_argument("--waits", type=float, nargs="+", default=[0.002, 0.01, 0.05])
    parser.add_argument("--rates", type=float, nargs="+", default=[],
                        help="arrival rates (images/s); default: --fractions of capacity")
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.3, 0.6, 0.9])
    parser.add_argument("--seconds", type=float, default=6.0, help="measured per cell")
    parser.add_argument("--warmup-s", type=float, default=1.0,
                        help="arrivals in a cell's first seconds, left out")
    parser.add_argument("--keep-up", type=float, default=0.9,
                        help="a cell counts when it answers at least this share of its rate")
    parser.add_argument("--replicas", type=int, default=1)
    parser.add_argument("--side", type=int, default=320, help="photo size (px)")
    args = parser.parse_args()

    figures = measure(args)
    choice = report(figures, args.p95_ms, args.keep_up)
    figures["p95_target_ms"] = args.p95_ms
    figures["recommended"] = choice.__dict__ if choice else None
    path = record("tune", figures)
    charts = plot(figures["cells"], path.with_suffix(""), args.p95_ms)
    print(f"\nmachine: {machine()}; model {args.model} ({args.pretrained} weights), "
          f"{args.replicas} replica(s); steady state: warm-up burst and first "
          f"{args.warmup_s:g} s of each cell left out")
    print(f"plot: {', '.join(map(str, charts))}")
    print(f"recorded in {path}")
    if choice is None:
        print(f"\nno setting kept p95 under {args.p95_ms:g} ms at any rate it kept up with: "
              "lower the rates, raise the target or add replicas")
        return
    print(f"\nrecommended: max_batch_size {choice.max_batch_size}, wait "
          f"{choice.batch_wait_timeout_s:g} s: {choice.images_per_s} images/s at "
          f"p95 {choice.p95_ms} ms (offered {choice.rate}/s)")
    print("\n".join(settings_lines(choice)))


if __name__ == "__main__":
    main()
