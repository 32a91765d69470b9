"""Pipeline efficiency: how much of the bare model's speed the whole path keeps.

    python -m benchmarks.pipeline_bench [--model ViT-B-32] [--images 192] [--batch 32]

Three measurements in one run, same model, same batch size, same JPEGs:

1. bare   - decoded tensors through ``encode_images`` in batches (no decode, no Serve);
2. serve  - JPEG bytes through the Embedder deployment's handle (DALI decode + model),
            requests concurrent so ``@serve.batch`` forms full batches;
3. path   - ``images.validated`` events on Kafka -> feeder actors -> Embedder ->
            ``images.processed`` acknowledged, timed from the first event to the last.

Prints images/s for each and the ratios to bare; writes results/pipeline.json.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def bare_rate(model_settings, photos: list[bytes], batch: int) -> float:
    import torch

    from serve_apps.decode import PillowDecoder
    from serve_apps.model import encode_images, load_clip

    clip = load_clip(model_settings)
    tensors = torch.stack(PillowDecoder(clip.preprocess).decode(photos))  # type: ignore[arg-type]
    encode_images(clip, tensors[:batch])  # warm-up
    start = time.perf_counter()
    for i in range(0, len(tensors), batch):
        encode_images(clip, tensors[i : i + batch])
    return len(tensors) / (time.perf_counter() - start)


def serve_rate(handle, photos: list[bytes]) -> float:
    handle.embed.remote(photos[0]).result(timeout_s=300)  # warm-up
    start = time.perf_counter()
    responses = [handle.embed.remote(p) for p in photos]
    results = [r.result(timeout_s=600) for r in responses]
    elapsed = time.perf_counter() - start
    assert all(r.ok for r in results)
    return len(photos) / elapsed


def path_rate(settings, photos: list[bytes], feeders: int) -> float:
    from actors import embedding_feeder
    from deeplens.stage_actor import StageSpec, launch_stage, stop_stage
    from tests.actors.test_embedding_pipeline import put_validated
    from tests.kafka_helpers import read_topic

    spec = StageSpec(embedding_feeder.STAGE, embedding_feeder.TOPICS,
                     "actors.embedding_feeder:build_handler",
                     batch_size=settings.serve.max_batch_size,
                     max_in_flight=settings.actors.feeder_batches_in_flight)
    # The events wait on Kafka first; the clock runs from the moment the feeders are up
    # until the last images.processed is read back: the path's steady throughput.
    put_validated(settings, "bench", len(photos), payloads=photos)
    actors = launch_stage(settings, spec, feeders)
    try:
        start = time.perf_counter()
        processed = read_topic(settings.kafka, "images.processed", expect=len(photos),
                               timeout_s=1200)
        elapsed = time.perf_counter() - start
    finally:
        stop_stage(actors)
    assert len({p.image_id for p in processed}) == len(photos)
    return len(photos) / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--images", type=int, default=192)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--feeders", type=int, default=1)
    args = parser.parse_args()

    import ray
    from ray import serve

    from actors.embedding_feeder import EMBEDDER_APP
    from benchmarks.common import machine, record
    from cluster.samples import jpeg_bytes, scene
    from deeplens.broker import local_broker
    from deeplens.kafka import admin_client
    from deeplens.settings import ActorSettings, KafkaSettings, ModelSettings, ServeSettings, Settings
    from deeplens.topics import TopicNames, ensure_topics
    from serve_apps.embedder import build_embedder

    model = ModelSettings(name=args.model, pretrained="random")
    photos = [jpeg_bytes(scene(i, 320)) for i in range(args.images)]
    bare = bare_rate(model, photos, args.batch)
    print(f"bare model:  {bare:7.1f} images/s", flush=True)

    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    with local_broker() as broker, tempfile.TemporaryDirectory() as tmp:
        kafka = KafkaSettings(bootstrap_servers=broker.bootstrap,
                          one_record_per_batch=True, batch_size=args.batch)
        ensure_topics(admin_client(kafka), TopicNames(""))
        settings = Settings(
            data_dir=Path(tmp), kafka=kafka, model=model,
            serve=ServeSettings(max_batch_size=args.batch, batch_wait_timeout_s=0.05,
                                num_cpus=0.5),
            actors=ActorSettings(feeders=args.feeders, feeder_batches_in_flight=2),
        )
        handle = serve.run(build_embedder(settings), name=EMBEDDER_APP, route_prefix=None)
        served = serve_rate(handle, photos)
        print(f"serve:       {served:7.1f} images/s  ({served / bare:.0%} of bare)", flush=True)
        whole = path_rate(settings, photos, args.feeders)
        stats = handle.stats.remote().result()
        print(f"whole path:  {whole:7.1f} images/s  ({whole / bare:.0%} of bare)", flush=True)
        serve.shutdown()
    ray.shutdown()
    figures = {"model": args.model, "batch": args.batch, "images": args.images,
               "feeders": args.feeders, "bare_images_per_s": round(bare, 1),
               "serve_images_per_s": round(served, 1), "path_images_per_s": round(whole, 1),
               "serve_over_bare": round(served / bare, 3), "path_over_bare": round(whole / bare, 3),
               "embedder_mean_batch": round(stats["mean_batch_size"], 1)}
    print(f"machine: {machine()}\n{figures}")
    print(f"recorded in {record('pipeline', figures)}")


if __name__ == "__main__":
    main()
