"""Indexing throughput through the indexer actors (Kafka -> LanceDB -> images.indexed).

    python -m benchmarks.index_bench [--vectors 5000] [--indexers 1 2] [--repeat 3]

Publishes ``images.processed`` events with 512-d vectors (and their stored bytes,
which the indexer checks still exist), then starts the indexer actors and waits for
every ``images.indexed`` event.

Steady state: ``vectors_per_s`` counts the indexed events between the 10th and the 90th
percentile of their broker timestamps, so the actors' start and consumer-group join
(~5 s here) and the last stragglers are left out; ``with_start_vectors_per_s`` is the
whole time from launching the actors, start-up included. Writes a results file
(benchmarks/common.py: ``--out``, ``--record``).
"""

from __future__ import annotations

import os
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def steady_rate(timestamps_ms: list[int]) -> float:
    """Events/s between the 10th and 90th percentile of their timestamps."""
    ordered = sorted(timestamps_ms)
    low, high = int(0.1 * len(ordered)), int(0.9 * len(ordered)) - 1
    span_s = (ordered[high] - ordered[low]) / 1000
    return (high - low) / span_s if span_s > 0 else float("nan")


def main() -> None:
    from benchmarks.common import bench_parser

    parser = bench_parser(__doc__)
    parser.add_argument("--vectors", type=int, default=5000)
    parser.add_argument("--indexers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batch", type=int, default=256)
    args = parser.parse_args()

    import ray

    from actors import indexer
    from benchmarks.common import machine, mute_stderr_from_now, record
    from benchmarks.spread import repeated
    from deeplens.broker import local_broker
    from deeplens.events import ImageProcessed, encode_vector
    from deeplens.kafka import EventProducer, Outbound, admin_client
    from deeplens.settings import KafkaSettings, Settings
    from deeplens.stage_actor import StageSpec, launch_stage, stop_stage
    from deeplens.storage import make_storage
    from deeplens.topics import TopicNames, ensure_topics
    from tests.kafka_helpers import read_raw

    ray.init(include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    rng = np.random.default_rng(0)
    broker_cm = local_broker()
    broker = broker_cm.__enter__()

    def one_round(r: int) -> dict:
        rows = []
        for count in args.indexers:
            prefix = f"ib{r}-{count}."
            kafka = KafkaSettings(bootstrap_servers=broker.bootstrap,
                          one_record_per_batch=True, topic_prefix=prefix,
                                  batch_size=args.batch)
            ensure_topics(admin_client(kafka), TopicNames(prefix))
            with tempfile.TemporaryDirectory() as tmp:
                settings = Settings(data_dir=Path(tmp), kafka=kafka)
                storage = make_storage(settings)
                now = datetime.now(UTC)
                events = []
                for i in range(args.vectors):
                    path = f"bench/{i:06d}.jpg"
                    storage.put(path, b"x")
                    v = rng.normal(size=512)
                    events.append(ImageProcessed(
                        tenant_id="bench", image_id=f"{i:06d}", original_file_name="b.jpg",
                        storage_provider="local", storage_path=path, file_size=1,
                        mime_type="image/jpeg", sha256="0" * 64, uploaded_at=now, width=1,
                        height=1, format="JPEG", validated_at=now,
                        features_f32=encode_vector(v / np.linalg.norm(v)),
                        feature_model="bench/random-init", processed_at=now))
                EventProducer(kafka, prefix=prefix).send(
                    [Outbound(e.topic, e.image_id, e) for e in events])
                spec = StageSpec(indexer.STAGE, indexer.TOPICS, "actors.indexer:build_handler",
                                 batch_size=args.batch)
                actors = launch_stage(settings, spec, count)
                start = time.perf_counter()
                indexed = read_raw(kafka, "images.indexed", expect=args.vectors, timeout_s=900)
                elapsed = time.perf_counter() - start
                stop_stage(actors)
                assert len(indexed) >= args.vectors
                rows.append({"indexers": count, "vectors": args.vectors,
                             "vectors_per_s": round(steady_rate(
                                 [m.timestamp()[1] for m in indexed]), 1),
                             "with_start_vectors_per_s": round(args.vectors / elapsed, 1)})
                print(rows[-1], flush=True)
        return {"rows": rows}

    figures = repeated(args.repeat, one_round)
    mute_stderr_from_now("index_bench")  # shutdown noise to a log: the results come last
    broker_cm.__exit__(None, None, None)
    ray.shutdown()
    print(f"\nmachine: {machine()}; batch {args.batch}; vectors/s in the steady part "
          "(10th-90th percentile of indexed timestamps: actor start and group join left out)")
    print("| indexers | vectors/s | with start-up |\n|---|---|---|")
    for i, row in enumerate(figures["rows"]):
        spread = figures.get("spread", {}).get(f"rows[{i}].vectors_per_s")
        rate = f"{row['vectors_per_s']}" + (f" ({spread[0]:g}-{spread[1]:g})" if spread else "")
        print(f"| {row['indexers']} | {rate} | {row['with_start_vectors_per_s']} |")
    print(f"recorded in {record('index', figures)}")


if __name__ == "__main__":
    main()
