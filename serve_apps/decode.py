"""Turning encoded image bytes into everything DeepLens needs from the pixels.

One full-resolution decode per image, and everything is taken from it:

- the model input: ``resize shorter side (bicubic, antialiased) -> center crop ->
  normalise with the model's mean/std``, i.e. what open_clip's ``preprocess`` does;
- a thumbnail (longest side ``THUMB_SIDE``, never enlarged), served to the owner;
- the hash image (``HASH_SIDE`` square grey, made from the thumbnail) and the
  pixel fingerprint's row and column sums, from which ``deeplens.image_hashes``
  computes the dedup hashes.

Two decoders behind one protocol: DALI (nvJPEG with ``device="mixed"`` on a GPU,
where the sums are DALI reductions on the device; its CPU path otherwise) and
Pillow with open_clip's own transform (the reference, and the fallback).

A DALI batch fails as a whole when one item does not decode; the decoder then
rebuilds its pipeline and retries item by item, and an item DALI cannot decode
goes to Pillow. Only an item neither can decode fails, and it fails alone. A fault of
the device itself is raised, never rebuilt around (``serve_apps.device_faults``).
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from deeplens.containers import jpeg_components
from deeplens.formats import upright_rgb
from deeplens.image_hashes import (
    HASH_SIDE,
    fingerprint,
    fingerprint_of,
    pillow_parts,
    thumb_size,
)
from serve_apps.dali_torch import to_torch, to_torch_each
from serve_apps.device_faults import is_device_fault

log = logging.getLogger(__name__)

THUMB_QUALITY = 80


class DecodeError(ValueError):
    """This item is not an image either decoder can read."""


@dataclass(frozen=True)
class Decoded:
    """What one decode of one image yields."""

    pixels: torch.Tensor  # the model input, C x S x S float32 (on the device for DALI mixed)
    hash_image: np.ndarray  # HASH_SIDE x HASH_SIDE uint8 grey levels
    fingerprint: str  # deeplens.image_hashes.fingerprint of the full-resolution pixels
    thumbnail: Any  # H x W x 3 uint8, longest side <= THUMB_SIDE (numpy, or a CUDA tensor)


class Decoder(Protocol):
    name: str

    def decode(self, items: list[bytes]) -> list[Decoded | DecodeError]: ...


class PillowDecoder:
    """open_clip's own preprocessing on Pillow-decoded images (the reference path)."""

    name = "pillow"

    def __init__(self, preprocess: Any) -> None:
        self.preprocess = preprocess

    def decode_one(self, data: bytes) -> Decoded:
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(io.BytesIO(data)) as img:  # an MPO's first picture
                rgb = upright_rgb(img)
            grey, print_, thumb = pillow_parts(rgb)
            return Decoded(self.preprocess(rgb), grey, print_, np.asarray(thumb))
        except UnidentifiedImageError as exc:
            raise DecodeError(f"undecodable image: {exc}") from exc
        except Exception as exc:  # noqa: BLE001 - bombs, truncation, parser bugs: this item only
            raise DecodeError(f"undecodable image: {type(exc).__name__}: {exc}") from exc

    def decode(self, items: list[bytes]) -> list[Decoded | DecodeError]:
        out: list[Decoded | DecodeError] = []
        for data in items:
            try:
                out.append(self.decode_one(data))
            except DecodeError as exc:
                out.append(exc)
        return out


class DaliDecoder:
    """A DALI pipeline fed through ``external_source``; variable batch sizes up to max."""

    def __init__(self, *, image_size: int, mean: tuple[float, ...], std: tuple[float, ...],
                 max_batch_size: int, device: str, fallback: PillowDecoder,
                 num_threads: int = 2) -> None:
        self.image_size = image_size
        self.mean = [m * 255 for m in mean]
        self.std = [s * 255 for s in std]
        self.max_batch_size = max_batch_size
        self.gpu = device == "cuda"
        self.name = "dali-mixed" if self.gpu else "dali-cpu"
        self.num_threads = num_threads
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

    def _run(self, items: list[bytes], geometry: list[_Geometry]) -> list[Decoded]:
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
            prints = [fingerprint(g[6], g[7], np.asarray(columns[i]), np.asarray(rows[i]))
                      for i, g in enumerate(geometry)]
        else:
            (full,) = rest  # DALI reuses these buffers on the next run: use them now
            thumbs_out = [np.array(thumbs[i]) for i in range(len(items))]
            prints = [fingerprint_of(np.asarray(full[i])) for i in range(len(items))]
        return [Decoded(pixels[i], np.array(greys[i]).reshape(HASH_SIDE, HASH_SIDE), prints[i],
                        thumbs_out[i]) for i in range(len(items))]

    def decode(self, items: list[bytes]) -> list[Decoded | DecodeError]:
        out: list[Decoded | DecodeError | None] = [None] * len(items)
        ready: list[int] = []
        geometry: dict[int, _Geometry] = {}
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

    def _one(self, data: bytes, geometry: _Geometry) -> Decoded | DecodeError:
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


# Resized width, height and crop_pos_x, crop_pos_y of the model input; the thumbnail's
# width and height; the upright full-resolution width and height.
_Geometry = tuple[int, int, float, float, int, int, int, int]


def center_crop_geometry(data: bytes, size: int) -> _Geometry:
    """torchvision's Resize(size) + CenterCrop(size) arithmetic, from the image header.

    The orientation tag is applied (both decoders turn images upright).
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as img:
            width, height = img.size
            if img.getexif().get(0x0112, 1) in (5, 6, 7, 8):  # rotated by 90 degrees
                width, height = height, width
    except UnidentifiedImageError as exc:
        raise DecodeError(f"undecodable image: {exc}") from exc
    except Exception as exc:  # noqa: BLE001 - e.g. DecompressionBombError: this item only
        raise DecodeError(f"undecodable image: {type(exc).__name__}: {exc}") from exc
    budget = Image.MAX_IMAGE_PIXELS
    if budget and width * height > budget:  # never hand a bomb to a decoder
        raise DecodeError(f"{width}x{height} exceeds the pixel limit of {budget}")
    if width <= 0 or height <= 0:
        raise DecodeError(f"undecodable image: {width}x{height}")
    if width <= height:
        new_w, new_h = size, int(size * height / width)
    else:
        new_w, new_h = int(size * width / height), size
    left = int(round((new_w - size) / 2.0))
    top = int(round((new_h - size) / 2.0))
    # DALI places the window at crop_pos * (extent - crop); a quarter pixel of slack keeps
    # float error from moving it off the integer anchor torchvision uses.
    pos_x = (left + 0.25) / (new_w - size) if new_w > size else 0.5
    pos_y = (top + 0.25) / (new_h - size) if new_h > size else 0.5
    return (new_w, new_h, min(pos_x, 1.0), min(pos_y, 1.0), *thumb_size(width, height),
            width, height)


def encode_thumbnails(thumbnails: list[Any]) -> list[bytes]:
    """JPEG bytes of H x W x 3 uint8 thumbnails: nvJPEG for CUDA tensors, Pillow otherwise
    (~0.3 ms for 320 x 240 on one core of the development machine)."""
    if thumbnails and isinstance(thumbnails[0], torch.Tensor) and thumbnails[0].is_cuda:
        from torchvision.io import encode_jpeg

        encoded = encode_jpeg([t.permute(2, 0, 1).contiguous() for t in thumbnails],
                              quality=THUMB_QUALITY)
        return [e.cpu().numpy().tobytes() for e in encoded]
    from PIL import Image

    out = []
    for thumb in thumbnails:
        buf = io.BytesIO()
        Image.fromarray(np.asarray(thumb)).save(buf, "JPEG", quality=THUMB_QUALITY)
        out.append(buf.getvalue())
    return out


def make_decoder(kind: str, *, clip: Any, max_batch_size: int) -> Decoder:
    """``dali`` (the default) or ``pillow``; DALI runs on the model's device."""
    pillow = PillowDecoder(clip.preprocess)
    if kind == "pillow":
        return pillow
    return DaliDecoder(image_size=clip.image_size, mean=clip.mean, std=clip.std,
                       max_batch_size=max_batch_size, device=clip.device.type, fallback=pillow)
