"""Indexing throughput through the indexer actors (Kafka -> LanceDB -> images.indexed).

    python -m benchmarks.index_bench [--vectors 5000] [--indexers 1 2]

Publishes ``images.processed`` events with 512-d vectors (and their stored bytes,
which the indexer checks still exist), then starts the indexer actors and times
until every ``images.indexed`` event is back. Writes results/index.json.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--vectors", type=int, default=5000)
    parser.add_argument("--indexers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batch", type=int, default=256)
    args = parser.parse_args()

    import ray

    from actors import indexer
    from benchmarks.common import machine, record
    from deeplens.broker import local_broker
    from deeplens.events import ImageProcessed, encode_vector
    from deeplens.kafka import EventProducer, Outbound, admin_client
    from deeplens.settings import KafkaSettings, Settings
    from deeplens.stage_actor import StageSpec, launch_stage, stop_stage
    from deeplens.storage import make_storage
    from deeplens.topics import TopicNames, ensure_topics
    from tests.kafka_helpers import read_raw

    ray.init(include_dashboard=False, log_to_driver=False)
    rng = np.random.default_rng(0)
    rows = []
    with local_broker() as broker:
        for count in args.indexers:
            prefix = f"ib{count}."
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
                             "vectors_per_s": round(args.vectors / elapsed, 1)})
                print(rows[-1], flush=True)
    ray.shutdown()
    print(f"machine: {machine()}; batch {args.batch}")
    print(f"recorded in {record('index', {'rows': rows})}")


if __name__ == "__main__":
    main()
