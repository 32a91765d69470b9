"""The pipeline's own ceiling: the whole stack with a model that costs nothing.

    python -m benchmarks.ceiling_bench [--images 400] [--clients 8] [--width 640 --height 480]

Starts what ``deeplens up`` starts (local broker, Ray, Serve with the upload gateway and
the Embedder, every stage actor) with the tiny test model (``deeplens-tiny``, 64 px,
2 layers) and rate limits raised, then uploads distinct JPEGs from N client threads
over HTTP. Nothing is skipped: validation, embedding, indexing, exact and near dedup,
usage and the catalog projection all run.

Prints, side by side:
- uploads/s at the edge while the pipeline runs;
- images/s from the first upload until every image is indexed *and* deduplicated;
- consumer lag per stage, sampled every second;
- CPU milliseconds per image by process role (each stage actor, the Serve replicas,
  the broker, Ray's own processes), read from /proc over the run: where the two cores go.

Writes results/ceiling.json.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

KEY = "bench-key-0123456789ab"


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--profile", type=float, default=0.0, metavar="SECONDS",
                        help="also sample every stage, Serve and proxy process with py-spy for "
                             "this long once uploads start (costs CPU: time figures of such a "
                             "run are not comparable with plain runs)")
    args = parser.parse_args()

    import httpx
    from pydantic import SecretStr

    from benchmarks.common import machine, record
    from benchmarks.stack_profile import profile_processes
    from cluster.metrics import offsets_and_lag
    from cluster.samples import scene
    from cluster.stack import LocalStack
    from deeplens.kafka import admin_client, make_consumer
    from deeplens.settings import IngestionSettings, ModelSettings, Settings
    from deeplens.topics import TopicNames
    from tests import images

    def jpeg(seed: int) -> bytes:
        # Photo-like scenes, not the smoother test pictures: those look so alike that the
        # near tier links a large share of them, and the run would measure that instead.
        img = scene(seed, max(args.width, args.height)).resize((args.width, args.height))
        return images.encode(img, "JPEG", quality=85)

    payloads = [jpeg(1000 + i) for i in range(args.images)]
    warmup = [jpeg(i) for i in range(16)]
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(
            data_dir=Path(tmp), api_keys=SecretStr(f"bench:{KEY}"),
            model=ModelSettings(name="deeplens-tiny", pretrained="random"),
            ingestion=IngestionSettings(upload_rate_limit_per_minute=10**7,
                                        upload_rate_limit_burst=10**6,
                                        rate_limit_per_minute=10**7, rate_limit_burst=10**6))
        with LocalStack(settings) as stack:
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

            warm_ids = [upload(d) for d in warmup]
            while finished(warm_ids) < len(warm_ids):
                time.sleep(0.2)
            pids = roles_by_pid(stack)
            admin = admin_client(stack.settings.kafka)
            consumer = make_consumer(stack.settings.kafka, "bench-lag-reader")
            names = TopicNames(stack.settings.kafka.topic_prefix)
            stages = {p.split(" ", 1)[1] for p in pids.values() if p.startswith("stage ")}
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
            profiler = threading.Thread(target=lambda: profiles.update(profile_processes(
                {pid: role for pid, role in pids.items() if _profiled(role)}, args.profile)),
                daemon=True)
            if args.profile:
                profiler.start()
            start = time.perf_counter()
            with ThreadPoolExecutor(args.clients) as pool:
                ids = list(pool.map(upload, payloads))
            uploads_s = time.perf_counter() - start
            while finished(ids) < len(ids):
                time.sleep(0.25)
                if time.perf_counter() - start > 1800:
                    raise SystemExit(f"only {finished(ids)} of {len(ids)} done after 30 min")
            total_s = time.perf_counter() - start
            after = cpu_snapshot(pids)
            if args.profile:
                profiler.join()
            stop.set()
            sampler.join()
            consumer.close()
    n = len(payloads)
    by_role: dict[str, float] = defaultdict(float)
    for pid, name in pids.items():
        by_role[name] += after.get(pid, 0.0) - before.get(pid, 0.0)
    cpu_ms = {name: round(1000 * s / n, 2) for name, s in
              sorted(by_role.items(), key=lambda kv: -kv[1]) if s > 0}
    figures = {"images": n, "clients": args.clients, "size": f"{args.width}x{args.height}",
               "uploads_per_s": round(n / uploads_s, 1),
               "end_to_end_images_per_s": round(n / total_s, 1),
               "cpu_ms_per_image_by_role": cpu_ms,
               "cpu_ms_per_image_total": round(sum(cpu_ms.values()), 1),
               "lag": lag_rows, "profile_s": args.profile, "profiles": profiles}
    print(f"machine: {machine()}")
    print(f"uploads at the edge:        {figures['uploads_per_s']:7.1f} /s")
    print(f"upload -> indexed + dedup:  {figures['end_to_end_images_per_s']:7.1f} images/s")
    print("\nlag per stage (messages not committed), every ~2 s:")
    stage_cols = sorted({k for row in lag_rows for k in row if k != "t"})
    print("| t (s) | " + " | ".join(stage_cols) + " |")
    print("|---|" + "---|" * len(stage_cols))
    for row in lag_rows[::2]:
        print(f"| {row['t']} | " + " | ".join(str(row.get(c, 0)) for c in stage_cols) + " |")
    print("\nCPU ms per image by process role (over the whole run):")
    print("| role | ms/image |\n|---|---|")
    for name, ms in cpu_ms.items():
        print(f"| {name} | {ms} |")
    print(f"| total | {figures['cpu_ms_per_image_total']} |")
    for name, prof in sorted(profiles.items(), key=lambda kv: -kv[1]["samples"]):
        print(f"\n### {name}: {prof['samples']} samples (py-spy, {args.profile:.0f} s)")
        print("where: " + "; ".join(f"{a} {pct}%" for a, pct in prof["areas"]))
        print("self:  " + "; ".join(f"{f} {pct}%" for f, pct in prof["self"]))
        print("ours:  " + "; ".join(f"{f} {pct}%" for f, pct in prof["deeplens_inclusive"]))
    print(f"recorded in {record('ceiling_profile' if args.profile else 'ceiling', figures)}")


if __name__ == "__main__":
    main()
