"""Hours of use compressed into minutes: does any role of the local stack keep growing?

    python -m benchmarks.soak_bench [--rounds 10] [--images 1000] [--clients 8]

Starts what ``deeplens up`` starts (local broker, Ray, Serve, every stage actor) with the
tiny model and rate limits raised. Each round uploads ``--images`` distinct JPEGs from N
client threads, waits until every one is indexed and deduplicated, then runs as many
image searches and status reads. After each round it records the memory (PSS) of every
role: the broker, each stage, the Serve replicas, Ray's own processes.

Growth is judged after the first rounds (warm-up: caches, JIT, pools), on the slope of
each role's memory over the remaining rounds in which it ran as many processes as in
the last round (the scaling controller adds and removes stage actors: a step in their
count is not growth). ``--allow-kb-per-image`` is what the stored data may explain in
any one role: the Gateway's search index of the tiny model's 64-d vectors with their
ids, dedup's hash cache (~400 bytes an image). Anything above it fails the run loudly
(exit 1), naming the role; a role with fewer than two such rounds is listed as not
judged.

Writes benchmarks/runs/soak-<time>.json (--out to choose; results/soak.json with --record).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from benchmarks.common import unlimited_ingestion

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

KEY = "soak-key-0123456789ab"


def slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of ys over xs (0 with fewer than two points)."""
    if len(xs) < 2:
        return 0.0
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / den if den else 0.0


def steady_rounds(rounds: list[dict], name: str) -> list[dict]:
    """The last rounds in a row in which role ``name`` ran as many processes as in the
    last one (rows recorded without process counts: all of them)."""
    count = rounds[-1].get("processes", {}).get(name) if rounds else None
    kept: list[dict] = []
    for row in reversed(rounds):
        if row.get("processes", {}).get(name) != count:
            break
        kept.insert(0, row)
    return kept


def growth_per_image(rounds: list[dict], warmup: int) -> dict[str, float | None]:
    """Bytes per stored image each role grew by over the rounds after ``warmup`` with its
    final process count; None where fewer than two such rounds are left."""
    after = rounds[warmup:]
    growth: dict[str, float | None] = {}
    for name in sorted({name for r in after for name in r["memory_mb"]}):
        kept = steady_rounds(after, name)
        growth[name] = slope([r["stored_images"] for r in kept],
                             [r["memory_mb"].get(name, 0.0) * 2**20 for r in kept]
                             ) if len(kept) >= 2 else None
    return growth


def main() -> int:
    from benchmarks.common import BenchParser

    parser = BenchParser(__doc__, repeat=False)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--images", type=int, default=1000, help="uploads per round")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--warmup-rounds", type=int, default=2)
    parser.add_argument("--recycle-messages", type=int, default=2000,
                        help="the local broker recycles a drained topic at this many records "
                             "(DEEPLENS_KAFKA__LOCAL_BROKER_RECYCLE_MESSAGES; the default "
                             "10,000 is more than a short soak writes)")
    parser.add_argument("--allow-kb-per-image", type=float, default=3.0,
                        help="growth per stored image any one role may show after warm-up")
    args = parser.parse_args()

    import httpx
    from pydantic import SecretStr

    from benchmarks.common import record
    from cluster.footprint import footprint
    from cluster.samples import scene
    from cluster.stack import LocalStack
    from deeplens.settings import KafkaSettings, ModelSettings, Settings
    from ingestion.catalog import Catalog
    from tests import images

    def jpeg(seed: int) -> bytes:
        return images.encode(scene(seed, 320), "JPEG", quality=85)

    rounds: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(
            data_dir=Path(tmp), api_keys=SecretStr(f"soak:{KEY}"),
            model=ModelSettings(name="deeplens-tiny", pretrained="random"),
            kafka=KafkaSettings(local_broker_recycle_interval_s=5.0,
                                local_broker_recycle_messages=args.recycle_messages),
            ingestion=unlimited_ingestion())
        with LocalStack(settings) as stack:
            catalog = Catalog(stack.settings.effective_catalog_url)
            client = httpx.Client(base_url=stack.url, timeout=120,
                                  headers={"Authorization": f"Bearer {KEY}"},
                                  limits=httpx.Limits(max_connections=args.clients))

            def upload(seed: int) -> str:
                answer = client.post("/v1/images", files={"file": ("p.jpg", jpeg(seed))})
                assert answer.status_code == 202, answer.text
                return str(answer.json()["image_id"])

            def search(seed: int) -> None:
                answer = client.post("/v1/search/image", data={"k": "10"},
                                     files={"file": ("q.jpg", jpeg(seed))})
                assert answer.status_code == 200, answer.text

            def finished(ids: list[str]) -> bool:
                statuses = {}
                for start in range(0, len(ids), 500):
                    statuses.update(client.post("/v1/images/statuses", json={
                        "image_ids": ids[start:start + 500]}).json()["statuses"])
                return all(s in ("indexed", "failed") for s in statuses.values())

            stored = 0
            with ThreadPoolExecutor(args.clients) as pool:
                for n in range(args.rounds):
                    began = time.perf_counter()
                    seeds = range(100_000 + n * args.images, 100_000 + (n + 1) * args.images)
                    ids = list(pool.map(upload, seeds))
                    while not finished(ids):
                        time.sleep(0.5)
                    list(pool.map(search, seeds))
                    list(pool.map(lambda i: client.get(f"/v1/images/{i}"), ids))
                    stored += len(ids)
                    total, by_role = footprint()
                    row = {"round": n + 1, "stored_images": stored,
                           "seconds": round(time.perf_counter() - began, 1),
                           "total_mb": round(total / 2**20, 1),
                           "memory_mb": {name: round(size / 2**20, 1)
                                         for name, (size, _) in by_role.items()},
                           "processes": {name: n for name, (_, n) in by_role.items()},
                           "broker_recycled": dict(stack.recycler.stats.recycled)
                           if stack.recycler else {}}
                    rounds.append(row)
                    print(f"round {n + 1}: {stored} stored, {row['seconds']} s, "
                          f"{row['total_mb']} MB in all; broker "
                          f"{row['memory_mb'].get('broker', 0)} MB", flush=True)
            client.close()
            rows = catalog.counts_by_tenant().get("soak", {})

    growth = growth_per_image(rounds, args.warmup_rounds)
    judged = {name: b for name, b in growth.items() if b is not None}
    over = {name: round(b / 1024, 2) for name, b in judged.items()
            if b / 1024 > args.allow_kb_per_image}
    print("growth per stored image after warm-up (KB): " + ", ".join(
        f"{name} {b / 1024:.2f}" for name, b in sorted(judged.items(), key=lambda kv: -kv[1])))
    path = record("soak", {
        "rounds": rounds, "images_per_round": args.images, "clients": args.clients,
        "warmup_rounds": args.warmup_rounds, "allow_kb_per_image": args.allow_kb_per_image,
        "growth_kb_per_image": {k: round(v / 1024, 3) for k, v in judged.items()},
        "not_judged": sorted(set(growth) - set(judged)),
        "catalog_counts": rows, "over_budget": over})
    print(f"wrote {path}")
    if over:
        print(f"FAIL: memory grows faster than the stored data explains: {over} KB per image",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
