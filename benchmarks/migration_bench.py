"""A model change on this machine: backfill images/s with the tiny model, and live
upload -> indexed p95 while the backfill runs against without it, side by side.

    python -m benchmarks.migration_bench [--images 300] [--live-s 20] [--share 0.5]

One local stack (SQLite + LanceDB, tiny model, random weights seed 0). ``--images``
are uploaded and indexed first. Then, for ``--live-s`` seconds, 2 uploads/s with no
migration (``without``); then ``deeplens model migrate`` to seed 1 and 2 uploads/s
while it backfills (``during``: uploads sent between the backfill's start and its
end). Latency is the catalog's ``pipeline_seconds`` (upload -> indexed) of each live
upload. Prints a table; writes the results file (``--record``: results/migration.json).
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks.common import unlimited_ingestion

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

KEY = "key-bench-0123456789ab"


def live_uploads(http: Any, seed: int, until: Any, every_s: float = 0.5) -> list[str]:
    from cluster.samples import jpeg_bytes, scene

    ids = []
    while not until():
        began = time.monotonic()
        answer = http.post("/v1/images", files={"file": (f"l{seed}.jpg",
                                                         jpeg_bytes(scene(seed, 160)))})
        if answer.status_code == 202:
            ids.append(answer.json()["image_id"])
        seed += 1
        time.sleep(max(0.0, every_s - (time.monotonic() - began)))
    return ids


def latencies(settings: Any, http: Any, ids: list[str]) -> list[float]:
    import sqlalchemy as sa

    from deeplens.db import make_engine
    from ingestion.tables import images
    from tests.cluster.test_end_to_end import wait_indexed

    wait_indexed(http, ids, timeout_s=300)
    with make_engine(settings.effective_catalog_url).connect() as conn:
        rows = conn.execute(sa.select(images.c.pipeline_seconds).where(
            images.c.image_id.in_(ids), images.c.pipeline_seconds.is_not(None))).scalars()
        return [float(v) for v in rows]


def summary(values: list[float]) -> dict[str, Any]:
    from benchmarks.common import percentile

    return {"uploads": len(values), "p50_s": round(percentile(values, 50), 3),
            "p95_s": round(percentile(values, 95), 3)}


def run(args: Any) -> dict[str, Any]:
    import httpx

    from cluster import model_ops
    from cluster.samples import jpeg_bytes, scene
    from cluster.stack import LocalStack
    from deeplens.broker import free_port
    from deeplens.migration_settings import MigrationSettings
    from deeplens.settings import ModelSettings, ServeSettings, Settings
    from tests.cluster.test_end_to_end import wait_indexed

    tiny = ModelSettings(name="deeplens-tiny", pretrained="random", random_seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(
            data_dir=Path(tmp), model=tiny, api_keys=f"bench:{KEY}",
            serve=ServeSettings(port=free_port(), num_cpus=0.25, max_batch_size=16),
            migration=MigrationSettings(backfill_share=args.share, backfill_page=args.page),
            # The bench's polling and uploads from one key stay under the rate limits.
            ingestion=unlimited_ingestion())
        with LocalStack(settings) as stack:
            http = httpx.Client(base_url=stack.url, timeout=60,
                                headers={"Authorization": f"Bearer {KEY}"})
            ids = [http.post("/v1/images", files={"file": (f"p{i}.jpg", jpeg_bytes(
                scene(i, 160)))}).json()["image_id"] for i in range(args.images)]
            wait_indexed(http, ids, timeout_s=600)
            ends = time.monotonic() + args.live_s
            without = latencies(stack.settings, http, live_uploads(
                http, 10_000, lambda: time.monotonic() > ends))
            state = {"value": ""}

            def watch() -> None:
                while state["value"] not in ("ready", "error"):
                    report = model_ops.describe(stack.settings)["migration"] or {}
                    state["value"] = "error" if report.get("error") else report.get("state", "")
                    state["report"] = report  # type: ignore[assignment]
                    time.sleep(0.2)

            model_ops.start_remote(stack.settings, tiny.model_copy(update={"random_seed": 1}))
            watcher = threading.Thread(target=watch, daemon=True)
            watcher.start()
            while state["value"] in ("", "deploying"):
                time.sleep(0.1)
            began = time.monotonic()
            during_ids = live_uploads(http, 20_000, lambda: state["value"] != "backfilling")
            backfill_s = time.monotonic() - began
            watcher.join(60)
            during = latencies(stack.settings, http, during_ids)
            done = sum(t["done"] for t in state["report"]["tenants"])  # type: ignore[index]
    return {"images": args.images, "share": args.share, "page": args.page,
            "backfill": {"images": done, "seconds": round(backfill_s, 1),
                         "images_per_s": round(done / backfill_s, 1)},
            "live_without_backfill": summary(without),
            "live_during_backfill": summary(during)}


def main() -> None:
    from benchmarks.common import BenchParser, machine, record

    parser = BenchParser(__doc__, repeat=False)
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--live-s", type=float, default=20.0)
    parser.add_argument("--share", type=float, default=0.5, help="MIGRATION__BACKFILL_SHARE")
    parser.add_argument("--page", type=int, default=32, help="MIGRATION__BACKFILL_PAGE")
    args = parser.parse_args()
    figures = run(args)
    print(f"machine: {machine()}")
    fill = figures["backfill"]
    print(f"backfill: {fill['images']} images in {fill['seconds']} s = "
          f"{fill['images_per_s']} images/s (share {args.share})")
    for name in ("live_without_backfill", "live_during_backfill"):
        row = figures[name]
        print(f"{name:24} uploads {row['uploads']:4}  p50 {row['p50_s']:.3f} s  "
              f"p95 {row['p95_s']:.3f} s")
    print(f"recorded in {record('migration', figures)}")


if __name__ == "__main__":
    main()
