"""One Embedder batch: decode, hash, thumbnail and encode, failures isolated per item.

The Embedder makes the only full-resolution decode of an image. Items that want them
(uploads) get, with their vector, the dedup hashes and a JPEG thumbnail made from that
decode; query images get the vector only. ``Phases`` holds a decode lock and a model
lock, so two batches in flight overlap: one decodes while the other is on the model.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from serve_apps.device_faults import DeviceFault, is_device_fault

__all__ = ["BUSY_WINDOW_S", "DeviceFault", "Embedding", "Phases", "embed_isolated",
           "embed_items", "is_device_fault"]

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


BUSY_WINDOW_S = 30.0


class Phases:
    """Locks and clocks of the two phases of a batch: decode (host, or DALI on the device)
    and model. One batch per phase at a time, so two batches in flight overlap."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self.clock = clock
        self.decode_lock = threading.Lock()
        self.model_lock = threading.Lock()
        self.decode_s = 0.0
        self.model_s = 0.0
        self._model_spans: deque[tuple[float, float]] = deque(maxlen=100_000)
        self._first: float | None = None

    @contextmanager
    def decoding(self) -> Any:
        with self.decode_lock:
            start = self.clock()
            self._first = start if self._first is None else self._first
            try:
                yield
            finally:
                self.decode_s += self.clock() - start

    @contextmanager
    def encoding(self) -> Any:
        with self.model_lock:
            start = self.clock()
            try:
                yield
            finally:
                end = self.clock()
                self.model_s += end - start
                self._model_spans.append((start, end))

    def busy_fraction(self, now: float | None = None) -> float:
        """Model-busy seconds / wall seconds over the last BUSY_WINDOW_S (or since the
        first batch, if sooner)."""
        now = self.clock() if now is None else now
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
    # Only failures are formatted: str() of a decoded item would print its tensors
    # (a profile of the Embedder found ~10 % of its CPU there).
    results: list[Embedding | None] = [
        None if isinstance(d, Decoded) else
        Embedding(None, clip.model_id, error=str(d), error_kind="decode") for d in decoded]
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
    return results  # type: ignore[return-value] - every good index was filled above


def _decode_isolated(decoder: Any, items: list[bytes]) -> list[Any]:
    """The decoder's batch answer; should it raise, each item alone, so only the bad fail.
    A fault of the device is no item's: it raises ``DeviceFault`` for the whole call."""
    from serve_apps.decode import DecodeError

    try:
        return decoder.decode(items)  # type: ignore[no-any-return]
    except Exception as exc:  # noqa: BLE001 - a decoder defect must not fail the batch-mates
        _raise_if_device_fault(exc, "decode")
        log.warning("batch decode raised; decoding %d items one by one", len(items))
    out: list[Any] = []
    for item in items:
        try:
            out.extend(decoder.decode([item]))
        except Exception as exc:  # noqa: BLE001
            _raise_if_device_fault(exc, "decode")
            out.append(DecodeError(f"undecodable image: {type(exc).__name__}: {exc}"))
    return out


def _raise_if_device_fault(exc: BaseException, phase: str) -> None:
    if isinstance(exc, DeviceFault):
        raise exc
    if is_device_fault(exc):
        raise DeviceFault(f"device fault during {phase}: {type(exc).__name__}: {exc}") from exc


def embed_isolated(clip: Any, decoder: Any, items: list[bytes],
                   thumbnails: list[bool] | None = None,
                   phases: Phases | None = None) -> list[Embedding]:
    """``embed_items``; should the batch raise for any reason but the device, each item
    alone: no input can fail a batch-mate (another tenant's, say). A fault of the device,
    in any phase, raises ``DeviceFault`` and fails no item."""
    wanted = thumbnails or [False] * len(items)
    try:
        return embed_items(clip, decoder, items, wanted, phases)
    except Exception as exc:  # noqa: BLE001
        _raise_if_device_fault(exc, "the batch")
        if len(items) == 1:
            raise
        log.warning("batch of %d raised (%s); embedding item by item", len(items), exc)
    results: list[Embedding] = []
    for item, want in zip(items, wanted, strict=True):
        try:
            results.extend(embed_items(clip, decoder, [item], [want], phases))
        except Exception as exc:  # noqa: BLE001
            _raise_if_device_fault(exc, "the batch")
            results.append(Embedding(None, clip.model_id, error=f"{type(exc).__name__}: {exc}",
                                     error_kind="decode"))
    return results
