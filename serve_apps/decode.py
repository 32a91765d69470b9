"""Turning encoded image bytes into the model's input tensors.

Two decoders behind one protocol: DALI (nvJPEG with ``device="mixed"`` on a GPU,
its CPU path otherwise) and Pillow with open_clip's own transform. Both produce
``resize shorter side (bicubic, antialiased) -> center crop -> normalise with the
model's mean/std``, i.e. what open_clip's ``preprocess`` does.

A DALI batch fails as a whole when one item does not decode; the decoder then
rebuilds its pipeline and retries item by item, and an item DALI cannot decode
goes to Pillow. Only an item neither can decode fails, and it fails alone.
"""

from __future__ import annotations

import io
import logging
from typing import Any, Protocol

import numpy as np
import torch

log = logging.getLogger(__name__)


class DecodeError(ValueError):
    """This item is not an image either decoder can read."""


class Decoder(Protocol):
    name: str

    def decode(self, items: list[bytes]) -> list[torch.Tensor | DecodeError]: ...


class PillowDecoder:
    """open_clip's own preprocessing on Pillow-decoded images (the reference path)."""

    name = "pillow"

    def __init__(self, preprocess: Any) -> None:
        self.preprocess = preprocess

    def decode_one(self, data: bytes) -> torch.Tensor:
        from PIL import Image, UnidentifiedImageError

        try:
            from PIL import ImageOps

            with Image.open(io.BytesIO(data)) as img:
                upright = ImageOps.exif_transpose(img)
                return self.preprocess(upright.convert("RGB"))  # type: ignore[no-any-return]
        except UnidentifiedImageError as exc:
            raise DecodeError(f"undecodable image: {exc}") from exc
        except Exception as exc:  # noqa: BLE001 - bombs, truncation, parser bugs: this item only
            raise DecodeError(f"undecodable image: {type(exc).__name__}: {exc}") from exc

    def decode(self, items: list[bytes]) -> list[torch.Tensor | DecodeError]:
        out: list[torch.Tensor | DecodeError] = []
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
            # Output size and crop anchor per sample are computed on the host exactly as
            # torchvision's Resize/CenterCrop round them, so both paths sample one grid.
            encoded = fn.external_source(name="encoded", dtype=types.UINT8)
            width = fn.external_source(name="width", dtype=types.FLOAT)
            height = fn.external_source(name="height", dtype=types.FLOAT)
            pos_x = fn.external_source(name="pos_x", dtype=types.FLOAT)
            pos_y = fn.external_source(name="pos_y", dtype=types.FLOAT)
            images = fn.decoders.image(encoded, device="mixed" if self.gpu else "cpu",
                                       output_type=types.RGB)
            images = fn.resize(images, resize_x=width, resize_y=height,
                               interp_type=types.INTERP_CUBIC, antialias=True)
            return fn.crop_mirror_normalize(
                images, crop=(size, size), crop_pos_x=pos_x, crop_pos_y=pos_y,
                dtype=types.FLOAT, output_layout="CHW", mean=self.mean, std=self.std)

        pipe = pipeline()
        pipe.build()
        return pipe

    def _run(self, items: list[bytes], geometry: list[_Geometry]) -> torch.Tensor:
        feed = self._pipe.feed_input
        feed("encoded", [np.frombuffer(d, dtype=np.uint8) for d in items])
        for name, index in (("width", 0), ("height", 1), ("pos_x", 2), ("pos_y", 3)):
            feed(name, [np.array(g[index], dtype=np.float32) for g in geometry])
        (out,) = self._pipe.run()
        return _to_torch(out)

    def decode(self, items: list[bytes]) -> list[torch.Tensor | DecodeError]:
        out: list[torch.Tensor | DecodeError | None] = [None] * len(items)
        ready: list[int] = []
        geometry: dict[int, _Geometry] = {}
        for index, data in enumerate(items):
            try:
                geometry[index] = center_crop_geometry(data, self.image_size)
                ready.append(index)
            except DecodeError as exc:
                out[index] = exc  # not even a readable header: no decoder will manage
        for start in range(0, len(ready), self.max_batch_size):
            chunk = ready[start : start + self.max_batch_size]
            try:
                tensors = self._run([items[i] for i in chunk], [geometry[i] for i in chunk])
                for i, tensor in zip(chunk, tensors, strict=True):
                    out[i] = tensor
            except Exception:  # noqa: BLE001 - one bad item spoils a DALI batch: go item by item
                self._pipe = self._build()
                for i in chunk:
                    out[i] = self._one(items[i], geometry[i])
        return out  # type: ignore[return-value]

    def _one(self, data: bytes, geometry: _Geometry) -> torch.Tensor | DecodeError:
        for _ in range(1):
            try:
                return self._run([data], [geometry])[0]
            except Exception as exc:  # noqa: BLE001
                log.info("DALI could not decode an item (%s); trying Pillow", str(exc)[:120])
                self._pipe = self._build()
        try:
            tensor = self.fallback.decode_one(data)
            self.fallbacks += 1
            return tensor
        except DecodeError as exc:
            return exc


_Geometry = tuple[int, int, float, float]  # resized width, height; crop_pos_x, crop_pos_y


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
    return new_w, new_h, min(pos_x, 1.0), min(pos_y, 1.0)


def _to_torch(tensor_list: Any) -> torch.Tensor:
    if hasattr(tensor_list, "as_cpu") and type(tensor_list).__name__.endswith("GPU"):
        from nvidia.dali.plugin.pytorch import feed_ndarray

        dense = tensor_list.as_tensor()
        result = torch.empty(dense.shape(), dtype=torch.float32, device="cuda")
        feed_ndarray(dense, result)
        return result
    return torch.from_numpy(np.array(tensor_list.as_tensor()))


def make_decoder(kind: str, *, clip: Any, max_batch_size: int) -> Decoder:
    """``dali`` (the default) or ``pillow``; DALI runs on the model's device."""
    pillow = PillowDecoder(clip.preprocess)
    if kind == "pillow":
        return pillow
    return DaliDecoder(image_size=clip.image_size, mean=clip.mean, std=clip.std,
                       max_batch_size=max_batch_size, device=clip.device.type, fallback=pillow)
