"""The Embedder: a Ray Serve deployment that batches images across requests.

Requests (one image or a list) are gathered by ``@serve.batch`` into batches of
up to ``max_batch_size`` (tunable at run time through ``user_config``), decoded
(DALI, torchvision's nvJPEG or a CPU pool: ``serve_apps.decoder_choice``), encoded
by open_clip, and answered item by item: a bad item gets an
error result, never an exception that would fail its whole batch (the batch work
is ``serve_apps/embed_batch.py``).

Uploads (``embed_images``) get back, with their vector, the dedup hashes and a JPEG
thumbnail from the Embedder's one decode; query images (``embed``) get the vector only.
Two batches are in flight at once: while the model encodes one, the next is decoded.
The model's busy fraction over the last ``BUSY_WINDOW_S`` is in ``stats()``.

A fault of the device (``serve_apps.device_faults``) in any phase fails the whole call
with ``DeviceFault`` and fails no item; the replica then refuses work and fails its
health check, so Serve replaces it while the caller retries.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
from ray import serve

from deeplens.serve_names import EMBEDDER_DEPLOYMENT
from deeplens.settings import ModelSettings, Settings
from serve_apps.device_faults import DeviceFault, is_device_fault
from serve_apps.embed_batch import Embedding, Phases, embed_isolated

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EmbedderArgs:
    model: ModelSettings
    decoder: str = "auto"  # serve_apps.decoder_choice: auto, dali, torch, cpu, pillow
    allow_cpu_decode: bool = False  # a GPU replica may decode on its host
    decode_threads: int = 0  # 0: every core the replica may run on
    max_batch_size: int = 32
    batch_wait_timeout_s: float = 0.01
    device: str | None = None  # None: CUDA when there is one
    torch_threads: int = 0  # 0: every core of the node
    max_image_pixels: int = 89_478_485  # the upload limit; decoders refuse larger images


@serve.deployment(name=EMBEDDER_DEPLOYMENT, health_check_period_s=10, health_check_timeout_s=30)
class Embedder:
    """The deployment; ``build_embedder`` sets its replicas, resources and batching."""

    def __init__(self, args: EmbedderArgs) -> None:
        import os

        import torch
        from PIL import Image

        from serve_apps.decode import choose_decoder
        from serve_apps.model import load_clip

        # Query images reach the Embedder without the validation stage: Pillow and the
        # header geometry refuse anything past the upload limit before decoding it.
        Image.MAX_IMAGE_PIXELS = args.max_image_pixels
        self.args = args
        # Ray sets OMP_NUM_THREADS from the replica's CPU request (1 for 0.5 CPU); on a CPU
        # replica that halves the model's speed on a 2-core machine, so set it explicitly.
        torch.set_num_threads(args.torch_threads or os.cpu_count() or 1)
        self.clip = load_clip(args.model, device=args.device)
        self.decoder, self.decoders_passed_over = choose_decoder(
            args.decoder, clip=self.clip, max_batch_size=args.max_batch_size,
            threads=args.decode_threads, allow_cpu_decode=args.allow_cpu_decode)
        self.batch_sizes: deque[int] = deque(maxlen=10_000)
        self.items = 0
        self.busy_s = 0.0
        self.phases = Phases()
        self._broken: str | None = None
        log.info("Embedder ready: %s on %s (%s), decoder %s", self.clip.model_id,
                 self.clip.device, self.clip.dtype, self.decoder.name)

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Batching knobs change at run time (serve deploy with a new user_config)."""
        if "max_batch_size" in user_config:
            self._batch.set_max_batch_size(int(user_config["max_batch_size"]))
        if "batch_wait_timeout_s" in user_config:
            self._batch.set_batch_wait_timeout_s(float(user_config["batch_wait_timeout_s"]))

    async def embed(self, image: bytes | list[bytes]) -> Embedding | list[Embedding]:
        """Vectors of query images (one, or a list): no thumbnail, no hashes. Queries have
        a batch queue of their own, so a search never waits behind upload batches."""
        if isinstance(image, list):
            return list(await asyncio.gather(*(self._query_batch(item) for item in image)))
        return await self._query_batch(image)  # type: ignore[no-any-return]

    async def embed_images(self, images: list[bytes]) -> list[Embedding]:
        """Uploads, one call per consumer batch: vectors, dedup hashes and thumbnails.
        Items still join ``@serve.batch`` batches one by one, across every caller."""
        return list(await asyncio.gather(*(self._batch((item, True)) for item in images)))

    async def embed_vectors(self, images: list[bytes]) -> list[Embedding]:
        """Vectors only, on the upload batches: a model change's backfill and the second
        model's embedding of new uploads (no thumbnail, no hashes)."""
        return list(await asyncio.gather(*(self._batch((item, False)) for item in images)))

    async def embed_text(self, texts: list[str]) -> list[np.ndarray]:
        from serve_apps.model import encode_texts

        def encode() -> Any:
            with self._on_device():
                return encode_texts(self.clip, texts)

        vectors = await asyncio.to_thread(encode)
        return [v.numpy().astype(np.float32) for v in vectors]

    def model_id(self) -> str:
        return self.clip.model_id

    def pid(self) -> int:
        """The replica's process id (fault-injection tests kill it)."""
        import os

        return os.getpid()

    def stats(self) -> dict[str, Any]:
        sizes = list(self.batch_sizes)
        return {
            "model_id": self.clip.model_id, "decoder": self.decoder.name,
            "device": str(self.clip.device), "batches": len(sizes), "items": self.items,
            "mean_batch_size": float(np.mean(sizes)) if sizes else 0.0,
            "max_batch_size_seen": max(sizes, default=0), "busy_s": round(self.busy_s, 3),
            "decode_busy_s": round(self.phases.decode_s, 3),
            "model_busy_s": round(self.phases.model_s, 3),
            "busy_fraction": round(self.phases.busy_fraction(), 4),
            "dali_fallbacks": getattr(self.decoder, "fallbacks", 0),
            "decoder_fallbacks": getattr(self.decoder, "fallbacks", 0),
            "decoders_passed_over": list(self.decoders_passed_over),
            "gpu_utilization": _gpu_utilization(self.clip.device),
        }

    def check_health(self) -> None:
        """Serve calls this periodically; raising marks the replica for replacement."""
        if self._broken:
            raise DeviceFault(f"Embedder replica broken: {self._broken}")

    @contextmanager
    def _on_device(self) -> Iterator[None]:
        """Device work: refused once the device failed; a device fault in it marks the
        replica broken (Serve replaces it) and fails the call, never an item."""
        if self._broken:
            raise DeviceFault(f"Embedder replica broken: {self._broken}")
        try:
            yield
        except Exception as exc:
            if not is_device_fault(exc):
                raise
            self._broken = f"{type(exc).__name__}: {exc}"[:300]
            log.error("device fault; this replica refuses work until Serve replaces it: %s",
                      self._broken)
            if isinstance(exc, DeviceFault):
                raise
            raise DeviceFault(f"device fault: {self._broken}") from exc

    # Two batches in flight: one decodes while the other is on the model (Phases).
    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.01, max_concurrent_batches=2)
    async def _batch(self, items: list[tuple[bytes, bool]]) -> list[Embedding]:
        return await asyncio.to_thread(self._run_batch, items)

    # Queries: small batches, formed at once, beside the upload batches (never behind them).
    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.0, max_concurrent_batches=2)
    async def _query_batch(self, items: list[bytes]) -> list[Embedding]:
        return await asyncio.to_thread(self._run_batch, [(data, False) for data in items])

    def _run_batch(self, requests: list[tuple[bytes, bool]]) -> list[Embedding]:
        start = time.perf_counter()
        items = [data for data, _ in requests]
        with self._on_device():
            results = embed_isolated(self.clip, self.decoder, items,
                                     [want for _, want in requests], self.phases)
        self.busy_s += time.perf_counter() - start
        self.batch_sizes.append(len(items))
        self.items += len(items)
        return results


def _gpu_utilization(device: Any) -> float | None:
    """The card's busy share (0..1) as NVML reports it; None without a GPU."""
    if getattr(device, "type", "cpu") != "cuda":
        return None
    try:
        import torch

        return float(torch.cuda.utilization(device)) / 100.0
    except Exception:  # noqa: BLE001 - NVML missing: no figure rather than a crash
        return None


def build_embedder(settings: Settings, args: EmbedderArgs | None = None) -> Any:
    """The Embedder application, its replicas, resources and batching from settings."""
    cfg = settings.serve
    args = args or EmbedderArgs(model=settings.model, max_batch_size=cfg.max_batch_size,
                                batch_wait_timeout_s=cfg.batch_wait_timeout_s,
                                torch_threads=cfg.torch_threads, decoder=cfg.decoder,
                                allow_cpu_decode=cfg.allow_cpu_decode,
                                decode_threads=cfg.decode_threads,
                                max_image_pixels=settings.ingestion.max_image_pixels)
    options: dict[str, Any] = {
        "max_ongoing_requests": cfg.max_ongoing_requests,
        "ray_actor_options": {"num_cpus": cfg.num_cpus, "num_gpus": cfg.num_gpus,
                              **({"resources": cfg.resources} if cfg.resources else {})},
        "user_config": {"max_batch_size": args.max_batch_size,
                        "batch_wait_timeout_s": args.batch_wait_timeout_s},
    }
    # Replicas start at SERVE__REPLICAS; the scaling controller (cluster/controller.py)
    # moves them up to SERVE__AUTOSCALE_MAX_REPLICAS by queued images, through Serve's
    # external-scaler API. Serve's own autoscaler counts handle calls, and the feeders
    # send few, large ones: it would never see a backlog (issue 27).
    options["num_replicas"] = cfg.replicas
    return Embedder.options(**options).bind(args)
