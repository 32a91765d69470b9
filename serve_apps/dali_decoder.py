"""DALI's decoder: nvJPEG with ``device="mixed"`` on a GPU (the fingerprint's sums are DALI
reductions on the device), its CPU path otherwise; fed through ``external_source`` with
variable batch sizes up to the maximum.

A DALI batch fails as a whole when one item does not decode; the decoder then rebuilds
its pipeline and retries item by item, and an item DALI cannot decode goes to Pillow.
Only an item neither can decode fails, and it fails alone. A fault of the device itself
is raised, never rebuilt around (``serve_apps.device_faults``).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from deeplens.containers import jpeg_components
from deeplens.image_hashes import HASH_SIDE, fingerprint, jpeg_fingerprint
from serve_apps.dali_torch import to_torch, to_torch_each
from serve_apps.decode_common import (
    Decoded,
    DecodeError,
    Geometry,
    center_crop_geometry,
    content_print,
    is_jpeg,
    replica_cpus,
)
from serve_apps.device_faults import is_device_fault
from serve_apps.pillow_decoder import PillowDecoder

log = logging.getLogger(__name__)


class DaliDecoder:
    """A DALI pipeline fed through ``external_source``; variable batch sizes up to max."""

    def __init__(self, *, image_size: int, mean: tuple[float, ...], std: tuple[float, ...],
                 max_batch_size: int, device: str, fallback: PillowDecoder,
                 num_threads: int = 0) -> None:
        self.image_size = image_size
        self.mean = [m * 255 for m in mean]
        self.std = [s * 255 for s in std]
        self.max_batch_size = max_batch_size
        self.gpu = device == "cuda"
        self.name = "dali-mixed" if self.gpu else "dali-cpu"
        self.num_threads = num_threads or replica_cpus()  # the replica's cores, not a fixed 2
        self.fallback = fallback
        self.fallbacks = 0  # items DALI could not decode but Pillow could
        self._pipe = self._build()

    def _build(self) -> Any:
        from nvidia.dali import fn, pipeline_def, types

        size = self.image_size

        @pipeline_def(batch_size=self.max_batch_size, num_threads=self.num_threads,
                      device_id=0 if self.gpu else None, exec_async=False,
                      exec_pipelined=False, prefetch_queue_depth=1)
        def pipeline() -> Any:
            # Output sizes and crop anchors per sample are computed on the host exactly as
            # torchvision's Resize/CenterCrop round them, so both paths sample one grid.
            encoded = fn.external_source(name="encoded", dtype=types.UINT8)
            width = fn.external_source(name="width", dtype=types.FLOAT)
            height = fn.external_source(name="height", dtype=types.FLOAT)
            pos_x = fn.external_source(name="pos_x", dtype=types.FLOAT)
            pos_y = fn.external_source(name="pos_y", dtype=types.FLOAT)
            thumb_w = fn.external_source(name="thumb_w", dtype=types.FLOAT)
            thumb_h = fn.external_source(name="thumb_h", dtype=types.FLOAT)
            images = fn.decoders.image(encoded, device="mixed" if self.gpu else "cpu",
                                       output_type=types.RGB)  # EXIF orientation applied
            model = fn.resize(images, resize_x=width, resize_y=height,
                              interp_type=types.INTERP_CUBIC, antialias=True)
            model = fn.crop_mirror_normalize(
                model, crop=(size, size), crop_pos_x=pos_x, crop_pos_y=pos_y,
                dtype=types.FLOAT, output_layout="CHW", mean=self.mean, std=self.std)
            thumb = fn.resize(images, resize_x=thumb_w, resize_y=thumb_h, antialias=True)
            grey = fn.color_space_conversion(
                fn.resize(thumb, size=(HASH_SIDE, HASH_SIDE), antialias=True),
                image_type=types.RGB, output_type=types.GRAY)
            if self.gpu:  # the fingerprint's sums on the device: KBs come back, not the image
                columns = fn.reductions.sum(images, axes=0, dtype=types.UINT64)
                rows = fn.reductions.sum(images, axes=[1, 2], dtype=types.UINT64)
                return model, thumb, grey, columns, rows
            return model, thumb, grey, images  # numpy sums over the host buffer (no copy)

        pipe = pipeline()
        pipe.build()
        return pipe

    def _run(self, items: list[bytes], geometry: list[Geometry]) -> list[Decoded]:
        feed = self._pipe.feed_input
        feed("encoded", [np.frombuffer(d, dtype=np.uint8) for d in items])
        for name, index in (("width", 0), ("height", 1), ("pos_x", 2), ("pos_y", 3),
                            ("thumb_w", 4), ("thumb_h", 5)):
            feed(name, [np.array(g[index], dtype=np.float32) for g in geometry])
        model, thumbs, greys, *rest = self._pipe.run()
        pixels = to_torch(model)
        if self.gpu:
            columns, rows = rest[0].as_cpu(), rest[1].as_cpu()
            thumbs_out = to_torch_each(thumbs)
            greys = greys.as_cpu()
            prints = [jpeg_fingerprint(d, g.orientation) if is_jpeg(d) else
                      fingerprint(g.full_w, g.full_h, np.asarray(columns[i]), np.asarray(rows[i]))
                      for i, (d, g) in enumerate(zip(items, geometry, strict=True))]
        else:
            (full,) = rest  # DALI reuses these buffers on the next run: use them now
            thumbs_out = [np.array(thumbs[i]) for i in range(len(items))]
            prints = [content_print(d, g.orientation, None if is_jpeg(d) else np.asarray(full[i]))
                      for i, (d, g) in enumerate(zip(items, geometry, strict=True))]
        return [Decoded(pixels[i], np.array(greys[i]).reshape(HASH_SIDE, HASH_SIDE), prints[i],
                        thumbs_out[i]) for i in range(len(items))]

    def decode(self, items: list[bytes]) -> list[Decoded | DecodeError]:
        out: list[Decoded | DecodeError | None] = [None] * len(items)
        ready: list[int] = []
        geometry: dict[int, Geometry] = {}
        for index, data in enumerate(items):
            try:
                geometry[index] = center_crop_geometry(data, self.image_size)
            except DecodeError as exc:
                out[index] = exc  # not even a readable header: no decoder will manage
                continue
            if jpeg_components(data) == 4:  # CMYK/YCCK: nvJPEG's handling is unverified,
                out[index] = self.fallback.decode([data])[0]  # Pillow = DALI CPU, exactly
            else:
                ready.append(index)
        for start in range(0, len(ready), self.max_batch_size):
            chunk = ready[start : start + self.max_batch_size]
            try:
                decoded = self._run([items[i] for i in chunk], [geometry[i] for i in chunk])
                for i, one in zip(chunk, decoded, strict=True):
                    out[i] = one
            except Exception as exc:  # noqa: BLE001 - one bad item spoils a DALI batch
                if is_device_fault(exc):
                    raise  # no rebuild on a failed device: the replica is broken
                self._pipe = self._build()
                for i in chunk:
                    out[i] = self._one(items[i], geometry[i])
        return out  # type: ignore[return-value]

    def _one(self, data: bytes, geometry: Geometry) -> Decoded | DecodeError:
        try:
            return self._run([data], [geometry])[0]
        except Exception as exc:  # noqa: BLE001
            if is_device_fault(exc):
                raise
            log.info("DALI could not decode an item (%s); trying Pillow", str(exc)[:120])
            self._pipe = self._build()
        try:
            decoded = self.fallback.decode_one(data)
            self.fallbacks += 1
            return decoded
        except DecodeError as exc:
            return exc
