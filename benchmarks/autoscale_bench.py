"""Elastic Embedder: time to drain a burst with the scaling controller against fixed
replica counts, side by side.

    python -m benchmarks.autoscale_bench [--model ViT-B-32] [--images 200] [--max 3]

Three runs of the whole local stack (``LocalStack``: broker, Ray, every stage, the
scaling controller), the same burst of ``images.uploaded`` events each time:

1. fixed 1  - ``SERVE__REPLICAS=1``;
2. fixed N  - ``SERVE__REPLICAS=N`` (``--max``);
3. auto     - ``SERVE__REPLICAS=1``, ``SERVE__AUTOSCALE_MAX_REPLICAS=N``, the controller
              with bench-sized delays (``--interval``, ``--upscale-delay``).

Each run times from the burst being published to the last ``images.indexed`` event,
and samples the running Embedder replicas every second (how soon auto reached N). Stage
actors scale by themselves in all three runs; only the Embedder's count differs. On a
CPU-only machine the replicas share the same cores, so more of them need not drain
faster: the behaviour is the point here, the speed-up belongs on a GPU cluster.
Prints a table; writes the results file (``--record``: results/autoscale.json).
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def run(label: str, args: Any, photos: list[bytes], replicas: int, most: int) -> dict:
    from benchmarks.pipeline_bench import put_uploaded
    from cluster.stack import LocalStack
    from deeplens.broker import free_port
    from deeplens.scaling_settings import ScalingSettings
    from deeplens.serve_names import running_embedder_replicas
    from deeplens.settings import ActorSettings, KafkaSettings, ModelSettings, ServeSettings, Settings
    from tests.kafka_helpers import read_topic

    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(
            data_dir=Path(tmp), kafka=KafkaSettings(batch_size=args.batch),
            model=ModelSettings(name=args.model, pretrained="random"),
            serve=ServeSettings(port=free_port(), replicas=replicas, autoscale_max_replicas=most,
                                num_cpus=0.1, max_batch_size=args.batch),
            actors=ActorSettings(num_cpus=0.05),
            scaling=ScalingSettings(interval_s=args.interval, upscale_delay_s=args.upscale_delay,
                                    downscale_delay_s=args.downscale_delay,
                                    queued_images_per_replica=args.per_replica))
        with LocalStack(settings) as stack:
            samples: list[tuple[float, int]] = []
            done = threading.Event()
            began = time.monotonic()

            def sample() -> None:
                while not done.is_set():
                    samples.append((round(time.monotonic() - began, 1),
                                    running_embedder_replicas() or 0))
                    done.wait(1.0)

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            put_uploaded(stack.settings, "bench", photos)
            indexed = read_topic(stack.settings.kafka, "images.indexed", expect=len(photos),
                                 timeout_s=1800)
            drained = time.monotonic() - began
            done.set()
            sampler.join()
            import ray

            report = ray.get(stack.controller.stats.remote(), timeout=30) \
                if stack.controller is not None else {}
    distinct = len({e.image_id for e in indexed})  # type: ignore[attr-defined]
    reached = next((t for t, n in samples if n >= most), None) if most > replicas else None
    row = {"run": label, "drain_s": round(drained, 1), "images_per_s":
           round(len(photos) / drained, 1), "indexed": distinct, "max_replicas":
           max((n for _, n in samples), default=0), "reached_max_at_s": reached,
           "cold_starts_s": report.get("cold_starts_s", []),
           "replica_samples": samples, "steps": report.get("steps", [])}
    print(f"{label:8} drained {len(photos)} in {row['drain_s']:6.1f} s "
          f"({row['images_per_s']:5.1f}/s), replicas up to {row['max_replicas']}"
          + (f", {most} at {reached} s" if reached is not None else ""), flush=True)
    return row


def main() -> None:
    from benchmarks.common import BenchParser

    parser = BenchParser(__doc__, repeat=False)
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--max", type=int, default=3, help="replicas of fixed N and auto's cap")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--side", type=int, default=224, help="photo size (px)")
    parser.add_argument("--interval", type=float, default=2.0)
    parser.add_argument("--upscale-delay", type=float, default=4.0)
    parser.add_argument("--downscale-delay", type=float, default=60.0)
    parser.add_argument("--per-replica", type=int, default=32,
                        help="SCALING__QUEUED_IMAGES_PER_REPLICA")
    args = parser.parse_args()

    from benchmarks.common import machine, record
    from cluster.samples import jpeg_bytes, scene

    photos = [jpeg_bytes(scene(i, args.side)) for i in range(args.images)]
    rows = [run("fixed 1", args, photos, 1, 1),
            run(f"fixed {args.max}", args, photos, args.max, args.max),
            run("auto", args, photos, 1, args.max)]
    by = {r["run"].replace(" ", "_"): r for r in rows}
    print(f"machine: {machine()}")
    print(f"{'run':8} {'drain s':>8} {'images/s':>9} {'max replicas':>13}")
    for r in rows:
        print(f"{r['run']:8} {r['drain_s']:>8} {r['images_per_s']:>9} {r['max_replicas']:>13}")
    print(f"recorded in {record('autoscale', {'model': args.model, 'images': args.images, **by})}")


if __name__ == "__main__":
    main()
