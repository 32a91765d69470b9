"""Turning encoded image bytes into everything DeepLens needs from the pixels.

One decode per image, and everything is taken from it:

- the model input: ``resize shorter side (bicubic, antialiased) -> center crop ->
  normalise with the model's mean/std``, i.e. what open_clip's ``preprocess`` does;
- a thumbnail (longest side ``THUMB_SIDE``, never enlarged), served to the owner;
- the hash image (``HASH_SIDE`` square grey, made from the thumbnail), from which
  ``deeplens.image_hashes`` computes the pHash and window hashes;
- the pixel fingerprint (exact tier): of a JPEG's coded data, of a PNG's or WebP's
  full-resolution pixels (``deeplens.image_hashes``), the same from every decoder.

Decoders behind one protocol (``Decoder``: ``decode(items) -> Decoded | DecodeError``
per item; one bad item fails alone):

- ``dali`` (``serve_apps.dali_decoder``): nvJPEG with ``device="mixed"`` on a GPU, its
  CPU path otherwise;
- ``torch`` (``serve_apps.torch_decoder``): torchvision's batched nvJPEG and transforms
  on the device, no DALI needed; PNG and WebP through a host thread pool;
- ``cpu`` (``serve_apps.pillow_decoder.CpuDecoder``): Pillow over every core, JPEGs
  decoded at a reduced DCT scale;
- ``pillow``: open_clip's own transform on a full Pillow decode, the reference.

``serve_apps.decoder_choice`` picks one per replica. Where the decoders differ: model
inputs, thumbnails and hash images by resampling (a level or two; DCT-domain scaling a
little more), and a JPEG's decoded pixels between nvJPEG and libjpeg-turbo; never the
fingerprint.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import torch

from serve_apps.dali_decoder import DaliDecoder
from serve_apps.decode_common import (
    Decoded,
    DecodeError,
    Decoder,
    Geometry,
    center_crop_geometry,
)
from serve_apps.decoder_choice import DecoderRefused, choose_decoder, make_decoder
from serve_apps.pillow_decoder import CpuDecoder, PillowDecoder
from serve_apps.torch_decoder import TorchDecoder

__all__ = ["CpuDecoder", "DaliDecoder", "DecodeError", "Decoded", "Decoder", "DecoderRefused",
           "Geometry", "PillowDecoder", "TorchDecoder", "center_crop_geometry",
           "choose_decoder", "encode_thumbnails", "make_decoder"]

THUMB_QUALITY = 80


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
        Image.fromarray(np.ascontiguousarray(thumb)).save(buf, "JPEG", quality=THUMB_QUALITY)
        out.append(buf.getvalue())
    return out
