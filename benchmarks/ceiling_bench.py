"""The pipeline's own ceiling: the whole stack with a model that costs nothing.

    python -m benchmarks.ceiling_bench [--images 400] [--repeat 3] [--clients 8]
        [--feeders 2] [--partitions 6] [--replicas 1] [--max-batch-size 64] [--in-flight 4]
        [--grid feeders=1,2 max_batch_size=32,64]

Starts what ``deeplens up`` starts (local broker, Ray, Serve with the upload gateway and
the Embedder, every stage actor) with the tiny test model (``deeplens-tiny``, 64 px,
2 layers) and rate limits raised, then uploads distinct JPEGs from N client threads
over HTTP. Nothing is skipped: validation, embedding, indexing, exact and near dedup,
usage and the catalog projection all run.

Steady state only: the stack's start and a warm-up batch (16 images through the whole
path) come before anything is measured; then the stack idles ``--idle-s`` seconds to
measure each process's fixed CPU per second (polling, heartbeats); then ``--repeat``
rounds of ``--images`` new images each, in the same stack. Per round:

- uploads/s at the edge while the pipeline runs;
- images/s from the first upload until every image is indexed *and* deduplicated;
- consumer lag per stage, sampled every second;
- CPU ms per image by process role (each stage actor, the Serve replicas, the broker,
  Ray's own processes), from /proc over the round, and the same net of the fixed cost
  per second (``marginal_...``: what an extra image costs; ``benchmarks.sizing`` uses it).

The knobs are settings objects, as ``deeplens up`` takes them from DEEPLENS_* variables:
``--feeders`` (and the other stages' actor counts), ``--partitions`` (every topic at
least), ``--replicas`` (Embedder), ``--gateway-replicas``, ``--max-batch-size`` and
``--wait`` (Embedder batching), ``--consumer-batch`` (messages per consumer batch),
``--in-flight`` (batches each feeder keeps at the Embedder). ``--grid KNOB=V1,V2 ...``
runs every combination, each in a fresh stack, and records one row per cell
(``ceiling_grid``).
"""

from __future__ import annotations

import itertools
import os
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from benchmarks.common import unlimited_ingestion

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

KEY = "bench-key-0123456789ab"
# knob -> (settings group, field): the grid's names are the options' names
KNOBS = {"feeders": ("actors", "feeders"), "validators": ("actors", "validators"),
         "indexers": ("actors", "indexers"), "dedupers": ("actors", "dedupers"),
         "projectors": ("actors", "projectors"),
         "in_flight": ("actors", "feeder_batches_in_flight"),
         "partitions": ("kafka", "min_partitions"), "consumer_batch": ("kafka", "batch_size"),
         "replicas": ("serve", "replicas"), "gateway_replicas": ("serve", "gateway_replicas"),
         "max_batch_size": ("serve", "max_batch_size"),
         "wait": ("serve", "batch_wait_timeout_s")}


def roles_by_pid(stack) -> dict[int, str]:
    """Every process of the stack, named: stage actors by their stage, others by role."""
    import ray

    from cluster.footprint import descendants, role

    named = {p: role(p) for p in descendants(os.getpid())}
    stages = ray.get([a.stats.remote() for a in stack.actors])
    pids = ray.get([a.pid.remote() for a in stack.actors])
    for pid, stats in zip(pids, stages, strict=True):
        named[pid] = f"stage {stats['stage']}"
    named[os.getpid()] = "bench driver (clients)"
    return named


def _profiled(role: str) -> bool:
    return role.startswith(("stage ", "Serve ", "ProxyActor"))


def cpu_snapshot(pids: dict[int, str]) -> dict[int, float]:
    from cluster.footprint import cpu_seconds

    return {pid: cpu_seconds(pid) for pid in pids}


def by_role(pids: dict[int, str], before: dict[int, float],
            after: dict[int, float]) -> dict[str, float]:
    """CPU seconds per role between two snapshots."""
    seconds: dict[str, float] = defaultdict(float)
    for pid, name in pids.items():
        seconds[name] += after.get(pid, 0.0) - before.get(pid, 0.0)
    return seconds


def per_image(cpu_s: dict[str, float], images: int, idle_per_s: dict[str, float],
              elapsed_s: float) -> tuple[dict[str, float], dict[str, float]]:
    """CPU ms per image by role over a round, and the same net of the fixed cost per
    second measured idle (never below 0), both largest first."""
    whole = {r: round(1000 * s / images, 2) for r, s in
             sorted(cpu_s.items(), key=lambda kv: -kv[1]) if s > 0}
    net = {r: round(max(0.0, 1000 * (s - idle_per_s.get(r, 0.0) * elapsed_s) / images), 2)
           for r, s in sorted(cpu_s.items(), key=lambda kv: -kv[1]) if s > 0}
    return whole, net


def settings_for(knobs: dict[str, Any], data_dir: Path, import_root: Path | None = None) -> Any:
    """The stack's Settings with the knobs applied as settings objects (and, for
    ``--mode import``, the folder imports may read)."""
    from pydantic import SecretStr

    from deeplens.settings import (
        ActorSettings,
        KafkaSettings,
        ModelSettings,
        ServeSettings,
        Settings,
    )

    groups: dict[str, dict[str, Any]] = {"actors": {}, "kafka": {}, "serve": {}}
    for knob, value in knobs.items():
        if value is not None:
            group, field = KNOBS[knob]
            groups[group][field] = value
    return Settings(
        data_dir=data_dir, api_keys=SecretStr(f"bench:{KEY}"),
        model=ModelSettings(name="deeplens-tiny", pretrained="random"),
        actors=ActorSettings(**groups["actors"]), kafka=KafkaSettings(**groups["kafka"]),
        serve=ServeSettings(**groups["serve"]),
        ingestion=unlimited_ingestion(),
        imports={"allowed_roots": [str(import_root)] if import_root else []})


def applied_knobs(settings: Any) -> dict[str, Any]:
    """Every knob's value in the running stack's settings."""
    return {knob: getattr(getattr(settings, group), field)
            for knob, (group, field) in KNOBS.items()}


def parse_grid(items: list[str]) -> dict[str, list[Any]]:
    """``["feeders=1,2", "wait=0.01,0.05"]`` -> {"feeders": [1, 2], "wait": [0.01, 0.05]}."""
    grid: dict[str, list[Any]] = {}
    for item in items:
        knob, _, values = item.partition("=")
        knob = knob.strip().replace("-", "_")
        if knob not in KNOBS or not values:
            raise SystemExit(f"--grid {item!r}: use KNOB=V1,V2 with KNOB one of "
                             f"{', '.join(KNOBS)}")
        grid[knob] = [float(v) if knob == "wait" else int(v) for v in values.split(",")]
    return grid


def measure_stack(knobs: dict[str, Any], args: Any) -> dict:
    """Start a stack with the knobs, warm it, measure its idle cost, then ``--repeat``
    rounds; the rounds summarized (median, spread)."""
    import httpx

    from benchmarks.common import quietly_closed
    from benchmarks.spread import repeated
    from benchmarks.stack_profile import profile_processes
    from cluster.lag import offsets_and_lag
    from cluster.samples import scene
    from cluster.stack import LocalStack
    from deeplens.kafka import admin_client, make_consumer
    from deeplens.topics import TopicNames
    from tests import images

    def jpeg(seed: int) -> bytes:
        # Photo-like scenes, not the smoother test pictures: those look so alike that the
        # near tier links a large share of them, and the run would measure that instead.
        img = scene(seed, max(args.width, args.height)).resize((args.width, args.height))
        return images.encode(img, "JPEG", quality=85)

    warmup = [jpeg(i) for i in range(16)]
    with tempfile.TemporaryDirectory() as tmp, quietly_closed(LocalStack(settings_for(
            knobs, Path(tmp), Path(tmp) / "import-src" if args.mode == "import" else None)),
            "ceiling") as stack:
        from ingestion.catalog import Catalog

        catalog = Catalog(stack.settings.effective_catalog_url)
        client = httpx.Client(base_url=stack.url, timeout=120,
                              headers={"Authorization": f"Bearer {KEY}"},
                              limits=httpx.Limits(max_connections=args.clients))

        def upload(data: bytes) -> str:
            answer = client.post("/v1/images", files={"file": ("p.jpg", data)})
            assert answer.status_code == 202, answer.text
            return str(answer.json()["image_id"])

        def finished(ids: list[str]) -> int:
            """Images indexed with their duplicate check recorded."""
            done = 0
            for start in range(0, len(ids), 500):
                rows = [catalog.get("bench", i) for i in ids[start : start + 500]]
                done += sum(1 for r in rows if r and r.status == "indexed" and r.dedup_tiers)
            return done

        from benchmarks.ceiling_modes import outside_embedder, sender

        send = sender(args.mode, stack, client, upload, Path(tmp) / "import-src")
        warm_ids = send(warmup, -1, args.clients)
        while finished(warm_ids) < len(warm_ids):
            time.sleep(0.2)
        pids = roles_by_pid(stack)
        admin = admin_client(stack.settings.kafka)
        consumer = make_consumer(stack.settings.kafka, "bench-lag-reader")
        names = TopicNames(stack.settings.kafka.topic_prefix)
        stages = {p.split(" ", 1)[1] for p in pids.values() if p.startswith("stage ")}
        knobs_applied = applied_knobs(stack.settings)

        idle_before, idle_start = cpu_snapshot(pids), time.perf_counter()
        time.sleep(args.idle_s)
        idle_s = time.perf_counter() - idle_start
        idle_per_s = {r: s / idle_s for r, s in
                      by_role(pids, idle_before, cpu_snapshot(pids)).items()}

        def one_round(r: int) -> dict:
            payloads = [jpeg(1000 + r * args.images + i) for i in range(args.images)]
            lag_rows: list[dict] = []
            stop = threading.Event()
            t0 = time.perf_counter()

            def sample_lag() -> None:
                while not stop.is_set():
                    _, lags = offsets_and_lag(admin, consumer, names, stages)
                    per_stage: dict[str, int] = defaultdict(int)
                    for (stage, _topic, _p), behind in lags.items():
                        per_stage[stage] += behind
                    lag_rows.append({"t": round(time.perf_counter() - t0, 1), **per_stage})
                    stop.wait(1.0)

            before = cpu_snapshot(pids)
            sampler = threading.Thread(target=sample_lag, daemon=True)
            sampler.start()
            profiles: dict[str, dict] = {}
            profiling = bool(args.profile) and r == 0
            profiler = threading.Thread(target=lambda: profiles.update(profile_processes(
                {pid: role for pid, role in pids.items() if _profiled(role)}, args.profile)),
                daemon=True)
            if profiling:
                profiler.start()
            if hasattr(send, "prepare"):  # an import's folder, written before the clock
                send.prepare(payloads, r)
            start, driver_cpu = time.perf_counter(), time.process_time()
            ids = send(payloads, r, args.clients)
            uploads_s = time.perf_counter() - start
            driver_cpu = time.process_time() - driver_cpu  # the importer, in import mode
            while finished(ids) < len(ids):
                time.sleep(0.25)
                if time.perf_counter() - start > 1800:
                    raise SystemExit(f"only {finished(ids)} of {len(ids)} done after 30 min")
            total_s = time.perf_counter() - start
            after = cpu_snapshot(pids)
            if profiling:
                profiler.join()
            stop.set()
            sampler.join()
            n = len(payloads)
            cpu = by_role(pids, before, after)
            if args.mode == "import":  # the import runs in this process: it counts
                cpu["importer (bench driver)"] = driver_cpu
            whole, net = per_image(cpu, n, idle_per_s, total_s)
            outside = outside_embedder(whole)
            return {"uploads_per_s": round(n / uploads_s, 1),
                    "end_to_end_images_per_s": round(n / total_s, 1),
                    "cpu_ms_per_image_by_role": whole,
                    "cpu_ms_per_image_total": round(sum(whole.values()), 1),
                    "cpu_ms_per_image_outside_embedder": round(outside, 1),
                    "marginal_cpu_ms_per_image_by_role": net,
                    "marginal_cpu_ms_per_image_total": round(sum(net.values()), 1),
                    "lag": lag_rows, **({"profiles": profiles} if profiling else {})}

        summary = repeated(args.repeat, one_round, label="round")
        consumer.close()
    fixed = {r: round(1000 * s, 1) for r, s in sorted(idle_per_s.items(), key=lambda kv: -kv[1])
             if s > 0}
    return {"mode": args.mode, "images": args.images, "clients": args.clients,
            "size": f"{args.width}x{args.height}", "knobs": knobs_applied,
            "idle_s": round(idle_s, 1), "fixed_cpu_ms_per_s_by_role": fixed,
            "profile_s": args.profile, **summary}


def print_cell(figures: dict) -> None:
    from benchmarks.spread import key_path, with_spread

    print(f"uploads at the edge:        "
          f"{with_spread(figures, 'uploads_per_s', figures['uploads_per_s'], ' /s')}")
    rate = with_spread(figures, "end_to_end_images_per_s", figures["end_to_end_images_per_s"],
                       " images/s")
    print(f"upload -> indexed + dedup:  {rate}")
    lag_rows = figures["lag"]
    print("\nlag per stage (messages not committed), every ~2 s (first round):")
    stage_cols = sorted({k for row in lag_rows for k in row if k != "t"})
    print("| t (s) | " + " | ".join(stage_cols) + " |")
    print("|---|" + "---|" * len(stage_cols))
    for row in lag_rows[::2]:
        print(f"| {row['t']} | " + " | ".join(str(row.get(c, 0)) for c in stage_cols) + " |")
    print(f"\nCPU by process role: ms per image over the round, the same net of the fixed "
          f"cost (measured idle for {figures['idle_s']} s), and that fixed ms per second:")
    print("| role | ms/image | net ms/image | fixed ms/s |\n|---|---|---|---|")
    whole, net = figures["cpu_ms_per_image_by_role"], figures["marginal_cpu_ms_per_image_by_role"]
    fixed = figures["fixed_cpu_ms_per_s_by_role"]
    for name, ms in whole.items():
        path = key_path("cpu_ms_per_image_by_role", name)
        print(f"| {name} | {with_spread(figures, path, ms)} | {net.get(name, '-')} | "
              f"{fixed.get(name, 0)} |")
    print(f"| total | {figures['cpu_ms_per_image_total']} | "
          f"{figures['marginal_cpu_ms_per_image_total']} | {round(sum(fixed.values()), 1)} |")
    print(f"host CPU per image outside the Embedder ({figures.get('mode', 'single')}): "
          f"{figures.get('cpu_ms_per_image_outside_embedder')} ms")
    for name, prof in sorted(figures.get("profiles", {}).items(),
                             key=lambda kv: -kv[1]["samples"]):
        print(f"\n### {name}: {prof['samples']} samples (py-spy, {figures['profile_s']:.0f} s)")
        print("where: " + "; ".join(f"{a} {pct}%" for a, pct in prof["areas"]))
        print("self:  " + "; ".join(f"{f} {pct}%" for f, pct in prof["self"]))
        print("ours:  " + "; ".join(f"{f} {pct}%" for f, pct in prof["deeplens_inclusive"]))


def main() -> None:
    from benchmarks.common import bench_parser, machine, record

    parser = bench_parser(__doc__)
    parser.add_argument("--images", type=int, default=400, help="images per round")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--mode", choices=["single", "batch", "import"], default="single",
                        help="how images enter: one upload per request, POST /v1/images/batch "
                             "(--clients batches at once), or `deeplens import` of a folder "
                             "(run in this process; its CPU is counted)")
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--idle-s", type=float, default=3.0,
                        help="idle time measured for the fixed CPU per second")
    parser.add_argument("--profile", type=float, default=0.0, metavar="SECONDS",
                        help="also sample every stage, Serve and proxy process with py-spy for "
                             "this long once the first round's uploads start (costs CPU: time "
                             "figures of such a run are not comparable with plain runs)")
    knobs = parser.add_argument_group("knobs (default: the settings' defaults)")
    for knob, (group, field) in KNOBS.items():
        knobs.add_argument(f"--{knob.replace('_', '-')}", dest=knob, default=None,
                           type=float if knob == "wait" else int,
                           help=f"{group}.{field} (DEEPLENS_{group.upper()}__{field.upper()})")
    parser.add_argument("--grid", nargs="+", default=[], metavar="KNOB=V1,V2",
                        help="every combination of these knob values, a fresh stack each")
    args = parser.parse_args()

    base = {knob: getattr(args, knob) for knob in KNOBS}
    grid = parse_grid(args.grid)
    print(f"machine: {machine()}; steady state: the stack's start and a 16-image warm-up are "
          "not measured", flush=True)
    if not grid:
        figures = measure_stack(base, args)
        print()
        print_cell(figures)
        name = "ceiling_profile" if args.profile else "ceiling"
        name += "" if args.mode == "single" else f"_{args.mode}"
        print(f"\nknobs: {figures['knobs']}")
        print(f"recorded in {record(name, figures)}")
        return
    cells = []
    for values in itertools.product(*grid.values()):
        knobs_cell = {**base, **dict(zip(grid, values, strict=True))}
        print(f"\n== {dict(zip(grid, values, strict=True))}", flush=True)
        figures = measure_stack(knobs_cell, args)
        figures.pop("runs", None)
        cells.append(figures)
        print(f"   {figures['end_to_end_images_per_s']} images/s end to end, "
              f"{figures['uploads_per_s']} uploads/s", flush=True)
    print("\n| " + " | ".join(grid) + " | uploads/s | images/s end to end | CPU ms/image |")
    print("|---|" + "---|" * (len(grid) + 2))
    for cell in cells:
        print("| " + " | ".join(str(cell["knobs"][k]) for k in grid) + " | "
              f"{cell['uploads_per_s']} | "
              f"{cell['end_to_end_images_per_s']} | {cell['cpu_ms_per_image_total']} |")
    print(f"recorded in {record('ceiling_grid', {'grid': grid, 'cells': cells})}")


if __name__ == "__main__":
    main()
