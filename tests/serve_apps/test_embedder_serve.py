"""The Embedder under real Ray Serve: dynamic batching, per-item failures, run-time knobs."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from deeplens.settings import ModelSettings, ServeSettings, Settings
from serve_apps.embedder import EmbedderArgs, build_embedder
from tests import images

TINY = ModelSettings(name="deeplens-tiny", pretrained="random")


@pytest.fixture(scope="module")
def embedder(ray_session):
    from ray import serve

    settings = Settings(model=TINY, serve=ServeSettings(num_cpus=0.5, max_batch_size=16,
                                                        batch_wait_timeout_s=0.05))
    handle = serve.run(build_embedder(settings), name="embedder-test", route_prefix=None)
    try:
        yield handle
    finally:
        serve.delete("embedder-test")


def test_concurrent_requests_form_batches(embedder) -> None:
    photos = [images.jpeg(seed) for seed in range(48)]
    responses = [embedder.embed.remote(p) for p in photos]
    results = [r.result(timeout_s=120) for r in responses]
    assert all(r.ok and r.vector.shape == (64,) for r in results)
    stats = embedder.stats.remote().result()
    assert stats["items"] >= 48
    assert stats["mean_batch_size"] > 1.0, stats
    assert stats["decoder"].startswith("cpu-pool")  # auto on a CPU replica (issue 26)
    assert stats["model_id"] == "deeplens-tiny/random-init-seed0"


def test_a_corrupt_image_fails_alone(embedder) -> None:
    batch = [images.jpeg(1), b"\xff\xd8\xff" + b"\x00" * 300, images.png(2), b"", images.webp(3)]
    results = embedder.embed.remote(batch).result(timeout_s=120)
    assert [r.ok for r in results] == [True, False, True, False, True]
    assert all(r.error_kind == "decode" for r in results if not r.ok)
    again = embedder.embed.remote(images.jpeg(1)).result(timeout_s=60)
    np.testing.assert_allclose(again.vector, results[0].vector, atol=1e-5)


def test_text_embedding_through_the_handle(embedder) -> None:
    [vector] = embedder.embed_text.remote(["a lighthouse at dusk"]).result(timeout_s=60)
    assert vector.shape == (64,) and abs(float(np.linalg.norm(vector)) - 1) < 1e-4


def test_batch_knobs_change_at_run_time(ray_session) -> None:
    from ray import serve

    settings = Settings(model=TINY, serve=ServeSettings(num_cpus=0.5))
    args = EmbedderArgs(model=TINY, max_batch_size=2, batch_wait_timeout_s=0.2)
    handle = serve.run(build_embedder(settings, args), name="knobs", route_prefix=None)
    try:
        async def burst(n: int) -> None:  # the upload path: the batch the knobs set
            # (embed() is the query lane, whose own small batch is fixed)
            await asyncio.gather(*(handle.embed_images.remote([images.jpeg(s)])
                                   for s in range(n)))

        asyncio.run(burst(16))
        assert handle.stats.remote().result()["max_batch_size_seen"] <= 2
        # Redeploy with only a new user_config: Serve hands it to reconfigure().
        handle = serve.run(_with_user_config(settings, args, {"max_batch_size": 8,
                                                              "batch_wait_timeout_s": 0.2}),
                           name="knobs", route_prefix=None)
        asyncio.run(burst(24))
        assert handle.stats.remote().result()["max_batch_size_seen"] > 2
    finally:
        serve.delete("knobs")


def _with_user_config(settings, args, user_config):
    from serve_apps.embedder import Embedder

    return Embedder.options(
        max_ongoing_requests=256, user_config=user_config,
        ray_actor_options={"num_cpus": 0.5, "num_gpus": 0}).bind(args)
