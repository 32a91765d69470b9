"""Pipeline efficiency: how much of the bare Embedder's speed the whole path keeps.

    python -m benchmarks.pipeline_bench [--model ViT-B-32] [--images 192] [--batch 32]
        [--repeat 3]

Three measurements in one run, same model, same batch size, same JPEGs:

1. bare   - the Embedder's own work in one process: the same DALI decoder (with the
            dedup hashes and thumbnails), then the model, in batches (no Serve, no Kafka);
2. serve  - JPEG bytes through the Embedder deployment's handle (``embed_images``),
            requests concurrent so ``@serve.batch`` forms full batches;
3. path   - ``images.uploaded`` events on Kafka -> validators -> feeders -> Embedder ->
            indexer and dedup -> ``images.indexed``, timed from the moment the stages
            are up to the last ``images.indexed``.

During the path the Embedder's ``stats()`` are sampled every second; the busy fraction
(model-busy seconds / wall seconds) is reported over the sustained part, between 10 %
and 90 % of the images embedded. Prints images/s, the ratios to bare and the busy
fraction. Each measurement is warmed up first (model load, DALI pipeline, Serve
deployment and the first request are not timed). ``--repeat N``: the three
measurements N times (the path on fresh topics and a fresh catalog each time, against
the same Embedder deployment), medians with their min-max. Results go to
benchmarks/runs/ (``--record``: results/pipeline.json).
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def bare_rate(model_settings, photos: list[bytes], batch: int, runs: int = 1) -> list[float]:
    from serve_apps.decode import make_decoder
    from serve_apps.embed_batch import embed_items
    from serve_apps.model import load_clip

    clip = load_clip(model_settings)
    decoder = make_decoder("dali", clip=clip, max_batch_size=batch)
    embed_items(clip, decoder, photos[:batch], [True] * batch)  # warm-up
    return [_bare_once(clip, decoder, photos, batch) for _ in range(runs)]


def _bare_once(clip, decoder, photos: list[bytes], batch: int) -> float:
    from serve_apps.embed_batch import embed_items

    start = time.perf_counter()
    for i in range(0, len(photos), batch):
        chunk = photos[i : i + batch]
        assert all(r.ok for r in embed_items(clip, decoder, chunk, [True] * len(chunk)))
    return len(photos) / (time.perf_counter() - start)


def serve_rate(handle, photos: list[bytes]) -> float:
    handle.embed_images.remote(photos[:1]).result(timeout_s=300)  # warm-up
    start = time.perf_counter()
    responses = [handle.embed_images.remote([p]) for p in photos]
    results = [r.result(timeout_s=600)[0] for r in responses]
    elapsed = time.perf_counter() - start
    assert all(r.ok for r in results)
    return len(photos) / elapsed


def put_uploaded(settings, tenant: str, payloads: list[bytes]) -> None:
    """Store images and publish images.uploaded for them, as the upload edge would."""
    import hashlib

    from deeplens.events import ImageUploaded, utcnow
    from deeplens.kafka import EventProducer, Outbound
    from deeplens.storage import make_storage, object_path

    storage = make_storage(settings)
    events = []
    for i, data in enumerate(payloads):
        image_id = f"{i:06d}" + "b" * 26
        path = object_path(tenant, image_id, "jpg")
        storage.put(path, data)
        events.append(ImageUploaded(
            tenant_id=tenant, image_id=image_id, original_file_name=f"{i}.jpg",
            storage_provider="local", storage_path=path, file_size=len(data),
            mime_type="image/jpeg", sha256=hashlib.sha256(data).hexdigest(),
            uploaded_at=utcnow()))
    EventProducer(settings.kafka, prefix=settings.kafka.topic_prefix).send(
        [Outbound(e.topic, e.image_id, e) for e in events])


def path_rate(settings, handle, photos: list[bytes]) -> tuple[float, float, list]:
    from actors import dedup, embedding_feeder, indexer, validator
    from deeplens.stage_actor import StageSpec, launch_stage, stop_stage
    from tests.kafka_helpers import read_topic

    batch = settings.serve.max_batch_size
    specs = [
        (StageSpec(validator.STAGE, validator.TOPICS, "actors.validator:build_handler",
                   batch_size=batch), 1),
        (StageSpec(embedding_feeder.STAGE, embedding_feeder.TOPICS,
                   "actors.embedding_feeder:build_handler", batch_size=batch,
                   max_in_flight=settings.actors.feeder_batches_in_flight),
         settings.actors.feeders),
        (StageSpec(indexer.STAGE, indexer.TOPICS, "actors.indexer:build_handler",
                   batch_size=batch), 1),
        (StageSpec(dedup.STAGE, dedup.TOPICS, "actors.dedup:build_handler",
                   batch_size=batch), 1),
    ]
    put_uploaded(settings, "bench", photos)
    samples: list[tuple[float, float, int]] = []
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            stats = handle.stats.remote().result(timeout_s=30)
            samples.append((time.perf_counter(), stats["model_busy_s"], stats["items"]))
            done.wait(1.0)

    first = handle.stats.remote().result(timeout_s=30)["items"]
    actors = [a for spec, count in specs for a in launch_stage(settings, spec, count)]
    sampler = threading.Thread(target=sample, daemon=True)
    try:
        start = time.perf_counter()
        sampler.start()
        indexed = read_topic(settings.kafka, "images.indexed", expect=len(photos),
                             timeout_s=1800)
        elapsed = time.perf_counter() - start
    finally:
        done.set()
        sampler.join()
        stop_stage(actors)
    assert len({e.image_id for e in indexed}) == len(photos), "every image indexed"
    n = len(photos)
    steady = [s for s in samples if first + 0.1 * n <= s[2] <= first + 0.9 * n]
    busy = ((steady[-1][1] - steady[0][1]) / (steady[-1][0] - steady[0][0])
            if len(steady) >= 2 else float("nan"))
    return n / elapsed, busy, samples


def main() -> None:
    from benchmarks.common import BenchParser

    parser = BenchParser(__doc__)
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--images", type=int, default=192)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--feeders", type=int, default=1)
    parser.add_argument("--side", type=int, default=320, help="photo size (px, square-ish)")
    args = parser.parse_args()

    import ray
    from ray import serve

    from benchmarks.common import machine, mute_stderr_from_now, quietly_closed, record
    from benchmarks.spread import print_spread, summarize
    from cluster.samples import jpeg_bytes, scene
    from deeplens.broker import local_broker
    from deeplens.kafka import admin_client
    from deeplens.serve_names import EMBEDDER_APP
    from deeplens.settings import ActorSettings, KafkaSettings, ModelSettings, ServeSettings, Settings
    from deeplens.topics import TopicNames, ensure_topics
    from serve_apps.embedder import build_embedder

    model = ModelSettings(name=args.model, pretrained="random")
    photos = [jpeg_bytes(scene(i, args.side)) for i in range(args.images)]
    bares = bare_rate(model, photos, args.batch, args.repeat)
    print(f"bare (decode + hashes + thumbnail + model): {bares} images/s", flush=True)

    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    runs = []
    with quietly_closed(local_broker(), "pipeline_bench") as broker, \
            tempfile.TemporaryDirectory() as tmp:

        def settings_for(r: int) -> Settings:
            prefix = f"pb{r}."
            kafka = KafkaSettings(bootstrap_servers=broker.bootstrap, topic_prefix=prefix,
                                  one_record_per_batch=True, batch_size=args.batch)
            ensure_topics(admin_client(kafka), TopicNames(prefix))
            (Path(tmp) / f"round{r}").mkdir(exist_ok=True)
            return Settings(
                data_dir=Path(tmp) / f"round{r}", kafka=kafka, model=model,
                serve=ServeSettings(max_batch_size=args.batch, batch_wait_timeout_s=0.05,
                                    num_cpus=0.5, max_ongoing_requests=args.batch * 4),
                actors=ActorSettings(feeders=args.feeders, feeder_batches_in_flight=2,
                                     num_cpus=0.1),
            )

        handle = serve.run(build_embedder(settings_for(0)), name=EMBEDDER_APP,
                           route_prefix=None)
        for r, bare in enumerate(bares):
            served = serve_rate(handle, photos)
            print(f"serve:       {served:7.1f} images/s  ({served / bare:.0%} of bare)",
                  flush=True)
            whole, busy, samples = path_rate(settings_for(r), handle, photos)
            stats = handle.stats.remote().result()
            print(f"whole path:  {whole:7.1f} images/s  ({whole / bare:.0%} of bare), "
                  f"Embedder busy {busy:.0%} in the sustained part", flush=True)
            runs.append({
                "model": args.model, "batch": args.batch, "images": args.images,
                "side": args.side, "feeders": args.feeders,
                "bare_images_per_s": round(bare, 1), "serve_images_per_s": round(served, 1),
                "path_images_per_s": round(whole, 1),
                "serve_over_bare": round(served / bare, 3),
                "path_over_bare": round(whole / bare, 3),
                "path_busy_fraction": round(busy, 3),
                "embedder_mean_batch": round(stats["mean_batch_size"], 1),
                "busy_samples": [(round(t - samples[0][0], 1), round(b, 2), i)
                                 for t, b, i in samples] if samples else []})
            if args.repeat > 1:
                print(f"[run {r + 1}/{args.repeat} done]", flush=True)
        mute_stderr_from_now("pipeline_bench")  # shutdown noise to a log: results come last
        serve.shutdown()
    ray.shutdown()
    figures = summarize(runs)
    print_spread(figures)
    shown = {k: v for k, v in figures.items() if k not in ("busy_samples", "runs", "spread")}
    print(f"machine: {machine()}\n{shown}")
    print(f"recorded in {record('pipeline', figures)}")


if __name__ == "__main__":
    main()
