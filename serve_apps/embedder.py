"""The Embedder: a Ray Serve deployment that batches images across requests.

Requests (one image or a list) are gathered by ``@serve.batch`` into batches of
up to ``max_batch_size`` (tunable at run time through ``user_config``), decoded
with DALI, encoded by open_clip, and answered item by item: a bad item gets an
error result, never an exception that would fail its whole batch.

The Embedder makes the only full-resolution decode of an image. Uploads
(``embed_images``) get back, with their vector, the dedup hashes and a JPEG
thumbnail made from that decode; query images (``embed``) get the vector only.

Two batches are in flight at once: while the model encodes one, the next is
decoded (a decode lock and a model lock keep each phase to one batch). The
model's busy fraction over the last ``BUSY_WINDOW_S`` is in ``stats()``.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from deeplens.serve_names import EMBEDDER_DEPLOYMENT
from deeplens.settings import ModelSettings, Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Embedding:
    """One item's answer: a vector, or why there is none."""

    vector: np.ndarray | None
    model_id: str
    error: str | None = None
    error_kind: str | None = None  # "decode" (permanent) or "device" (transient)
    phash: int | None = None  # 64-bit perceptual hash (deeplens.image_hashes.phash)
    windows: bytes | None = None  # window pHashes, big-endian u64 (image_hashes.WINDOWS)
    fingerprint: str | None = None  # of the full-resolution pixels
    thumbnail: bytes | None = None  # JPEG, uploads only

    @property
    def ok(self) -> bool:
        return self.vector is not None


@dataclass(frozen=True)
class EmbedderArgs:
    model: ModelSettings
    decoder: str = "dali"  # or "pillow"
    max_batch_size: int = 32
    batch_wait_timeout_s: float = 0.01
    device: str | None = None  # None: CUDA when there is one
    torch_threads: int = 0  # 0: every core of the node
    max_image_pixels: int = 89_478_485  # the upload limit; decoders refuse larger images


BUSY_WINDOW_S = 30.0


class Phases:
    """Locks and clocks of the two phases of a batch: decode (host, or DALI on the device)
    and model. One batch per phase at a time, so two batches in flight overlap."""

    def __init__(self) -> None:
        self.decode_lock = threading.Lock()
        self.model_lock = threading.Lock()
        self.decode_s = 0.0
        self.model_s = 0.0
        self._model_spans: deque[tuple[float, float]] = deque(maxlen=100_000)
        self._first: float | None = None

    @contextmanager
    def decoding(self) -> Any:
        with self.decode_lock:
            start = time.perf_counter()
            self._first = self._first or start
            try:
                yield
            finally:
                self.decode_s += time.perf_counter() - start

    @contextmanager
    def encoding(self) -> Any:
        with self.model_lock:
            start = time.perf_counter()
            try:
                yield
            finally:
                end = time.perf_counter()
                self.model_s += end - start
                self._model_spans.append((start, end))

    def busy_fraction(self, now: float | None = None) -> float:
        """Model-busy seconds / wall seconds over the last BUSY_WINDOW_S (or since the
        first batch, if sooner)."""
        now = time.perf_counter() if now is None else now
        if self._first is None:
            return 0.0
        since = max(now - BUSY_WINDOW_S, self._first)
        while self._model_spans and self._model_spans[0][1] < since:
            self._model_spans.popleft()
        busy = sum(min(end, now) - max(start, since) for start, end in self._model_spans)
        return max(0.0, min(1.0, busy / max(now - since, 1e-9)))



def embed_items(clip: Any, decoder: Any, items: list[bytes],
                thumbnails: list[bool] | None = None,
                phases: Phases | None = None) -> list[Embedding]:
    """Decode and encode a batch; one result per item, failures isolated per item.

    Items with ``thumbnails[i]`` get hashes and a JPEG thumbnail from the same decode.
    """
    from deeplens.image_hashes import window_hashes
    from serve_apps.decode import Decoded, encode_thumbnails
    from serve_apps.model import encode_with_split

    phases = phases or Phases()
    wanted = thumbnails or [False] * len(items)
    with phases.decoding():
        decoded = _decode_isolated(decoder, items)
        good = [i for i, d in enumerate(decoded) if isinstance(d, Decoded)]
        extras: dict[int, tuple[bytes, str, bytes]] = {}
        keep = [i for i in good if wanted[i]]
        for i, jpeg in zip(keep, encode_thumbnails([decoded[i].thumbnail for i in keep]),
                           strict=True):
            windows = window_hashes(decoded[i].hash_image).astype(">u8").tobytes()
            extras[i] = (windows, decoded[i].fingerprint, jpeg)
    results: list[Embedding] = [
        Embedding(None, clip.model_id, error=str(d), error_kind="decode")
        for d in decoded
    ]
    if good:
        import torch

        with phases.encoding():
            pixels = torch.stack([decoded[i].pixels for i in good])
            vectors = encode_with_split(clip, pixels)
        for index, vector in zip(good, vectors, strict=True):
            if isinstance(vector, Exception):
                results[index] = Embedding(None, clip.model_id, error=str(vector),
                                           error_kind="device")
                continue
            windows, fp, jpeg = extras.get(index, (None, None, None))
            results[index] = Embedding(
                vector.numpy().astype(np.float32), clip.model_id,
                phash=int.from_bytes(windows[:8], "big") if windows else None,
                windows=windows, fingerprint=fp, thumbnail=jpeg)
    return results


def _decode_isolated(decoder: Any, items: list[bytes]) -> list[Any]:
    """The decoder's batch answer; should it raise, each item alone, so only the bad fail."""
    from serve_apps.decode import DecodeError

    try:
        return decoder.decode(items)  # type: ignore[no-any-return]
    except Exception:  # noqa: BLE001 - a decoder defect must not fail the batch-mates
        log.warning("batch decode raised; decoding %d items one by one", len(items))
    out: list[Any] = []
    for item in items:
        try:
            out.extend(decoder.decode([item]))
        except Exception as exc:  # noqa: BLE001
            out.append(DecodeError(f"undecodable image: {type(exc).__name__}: {exc}"))
    return out


def embed_isolated(clip: Any, decoder: Any, items: list[bytes],
                   thumbnails: list[bool] | None = None,
                   phases: Phases | None = None) -> list[Embedding]:
    """``embed_items``; should the batch raise for any reason but the device, each item
    alone: no input can fail a batch-mate (another tenant's, say)."""
    wanted = thumbnails or [False] * len(items)
    try:
        return embed_items(clip, decoder, items, wanted, phases)
    except Exception as exc:  # noqa: BLE001
        if _is_device_fault(exc) or len(items) == 1:
            raise
        log.warning("batch of %d raised (%s); embedding item by item", len(items), exc)
    results: list[Embedding] = []
    for item, want in zip(items, wanted, strict=True):
        try:
            results.extend(embed_items(clip, decoder, [item], [want], phases))
        except Exception as exc:  # noqa: BLE001
            if _is_device_fault(exc):
                raise
            results.append(Embedding(None, clip.model_id, error=f"{type(exc).__name__}: {exc}",
                                     error_kind="decode"))
    return results


def _is_device_fault(exc: BaseException) -> bool:
    return isinstance(exc, RuntimeError) and "cuda" in str(exc).lower()


class Embedder:
    """The deployment body; ``build_embedder`` wraps it with Serve options."""

    def __init__(self, args: EmbedderArgs) -> None:
        import os

        import torch
        from PIL import Image

        from serve_apps.decode import make_decoder
        from serve_apps.model import load_clip

        # Query images reach the Embedder without the validation stage: Pillow and the
        # header geometry refuse anything past the upload limit before decoding it.
        Image.MAX_IMAGE_PIXELS = args.max_image_pixels
        self.args = args
        # Ray sets OMP_NUM_THREADS from the replica's CPU request (1 for 0.5 CPU); on a CPU
        # replica that halves the model's speed on a 2-core machine, so set it explicitly.
        torch.set_num_threads(args.torch_threads or os.cpu_count() or 1)
        self.clip = load_clip(args.model, device=args.device)
        self.decoder = make_decoder(args.decoder, clip=self.clip,
                                    max_batch_size=args.max_batch_size)
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
        """Vectors of query images (one, or a list): no thumbnail, no hashes."""
        if isinstance(image, list):
            return list(await asyncio.gather(*(self._batch((item, False)) for item in image)))
        return await self._batch((image, False))  # type: ignore[no-any-return]

    async def embed_images(self, images: list[bytes]) -> list[Embedding]:
        """Uploads, one call per consumer batch: vectors, dedup hashes and thumbnails.
        Items still join ``@serve.batch`` batches one by one, across every caller."""
        return list(await asyncio.gather(*(self._batch((item, True)) for item in images)))

    async def embed_text(self, texts: list[str]) -> list[np.ndarray]:
        from serve_apps.model import encode_texts

        vectors = await asyncio.to_thread(encode_texts, self.clip, texts)
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
            "gpu_utilization": _gpu_utilization(self.clip.device),
        }

    def check_health(self) -> None:
        """Serve calls this periodically; raising marks the replica for replacement."""
        if self._broken:
            raise RuntimeError(f"Embedder replica broken: {self._broken}")

    async def _batch(self, items: list[tuple[bytes, bool]]) -> list[Embedding]:
        raise NotImplementedError  # replaced by the @serve.batch method in build_embedder

    def _run_batch(self, requests: list[tuple[bytes, bool]]) -> list[Embedding]:
        start = time.perf_counter()
        items = [data for data, _ in requests]
        try:
            results = embed_isolated(self.clip, self.decoder, items,
                                     [want for _, want in requests], self.phases)
        except RuntimeError as exc:
            if _is_device_fault(exc):
                self._broken = str(exc)[:300]  # a device fault: let Serve replace us
            raise
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


def embedder_class() -> type:
    """The Embedder with its ``@serve.batch`` method attached (Ray imported lazily)."""
    from ray import serve

    class ServeEmbedder(Embedder):
        # Two batches in flight: one decodes while the other is on the model (Phases).
        @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.01, max_concurrent_batches=2)
        async def _batch(self, items: list[tuple[bytes, bool]]) -> list[Embedding]:
            return await asyncio.to_thread(self._run_batch, items)

    ServeEmbedder.__name__ = ServeEmbedder.__qualname__ = EMBEDDER_DEPLOYMENT
    return ServeEmbedder


def build_embedder(settings: Settings, args: EmbedderArgs | None = None) -> Any:
    """The Embedder application, its replicas, resources and batching from settings."""
    from ray import serve

    cfg = settings.serve
    args = args or EmbedderArgs(model=settings.model, max_batch_size=cfg.max_batch_size,
                                batch_wait_timeout_s=cfg.batch_wait_timeout_s,
                                torch_threads=cfg.torch_threads,
                                max_image_pixels=settings.ingestion.max_image_pixels)
    options: dict[str, Any] = {
        "name": EMBEDDER_DEPLOYMENT,
        "max_ongoing_requests": cfg.max_ongoing_requests,
        "ray_actor_options": {"num_cpus": cfg.num_cpus, "num_gpus": cfg.num_gpus,
                              **({"resources": cfg.resources} if cfg.resources else {})},
        "user_config": {"max_batch_size": args.max_batch_size,
                        "batch_wait_timeout_s": args.batch_wait_timeout_s},
        "health_check_period_s": 10,
        "health_check_timeout_s": 30,
    }
    if cfg.autoscale_max_replicas > cfg.replicas:
        options["autoscaling_config"] = {
            "min_replicas": cfg.replicas, "max_replicas": cfg.autoscale_max_replicas,
            "target_ongoing_requests": cfg.max_batch_size * 2,
        }
    else:
        options["num_replicas"] = cfg.replicas
    return serve.deployment(embedder_class()).options(**options).bind(args)
