"""Both decoders turn every camera variant into the right upright RGB picture (issue 23,
item 1): an MPO's first picture, CMYK and 16-bit grey at their true levels."""

from __future__ import annotations

import numpy as np
import pytest

from deeplens.image_hashes import pillow_parts
from serve_apps.decode import make_decoder
from serve_apps.embed_batch import embed_items
from serve_apps.model import load_clip
from tests import images
from tests.serve_apps.test_model_and_decode import TINY

FORMATS = images.camera_formats(seed=5)
# Mean absolute difference, in 8-bit levels, of a thumbnail from the reference picture's:
# lossy encodings and a 256-colour palette stay well under it (6-10 measured); another
# picture, or a 16-bit grey clipped to white, is far over it (40-130).
LEVELS = 14


@pytest.fixture(scope="module")
def clip():
    return load_clip(TINY, device="cpu")


def reference(kind: str) -> np.ndarray:
    picture = images.photo(96, 72, 5)
    if "grey" in kind:
        picture = picture.convert("L").convert("RGB")
    return np.asarray(pillow_parts(picture)[2], dtype=np.float64)


@pytest.mark.parametrize("kind", ["pillow", "dali", "cpu", "torch"])
def test_every_camera_variant_decodes_to_its_picture(clip, kind) -> None:
    decoder = make_decoder(kind, clip=clip, max_batch_size=16)
    decoded = decoder.decode(list(FORMATS.values()))
    for name, one in zip(FORMATS, decoded, strict=True):
        thumb = np.asarray(one.thumbnail, dtype=np.float64)
        assert thumb.shape == reference(name).shape, name  # upright, 3 channels
        assert np.abs(thumb - reference(name)).mean() < LEVELS, name
    assert getattr(decoder, "fallbacks", 0) == 0  # DALI needed no item-by-item rescue


def test_both_decoders_agree_on_every_variant(clip) -> None:
    pillow = make_decoder("pillow", clip=clip, max_batch_size=16).decode(list(FORMATS.values()))
    dali = make_decoder("dali", clip=clip, max_batch_size=16).decode(list(FORMATS.values()))
    for name, p, d in zip(FORMATS, pillow, dali, strict=True):
        assert p.fingerprint == d.fingerprint, name  # the same pixels, to the level
        assert float((p.pixels - d.pixels).abs().mean()) < 0.006, name


def test_every_camera_variant_gets_a_vector_hashes_and_a_thumbnail(clip) -> None:
    dali = make_decoder("dali", clip=clip, max_batch_size=16)
    results = embed_items(clip, dali, list(FORMATS.values()), [True] * len(FORMATS))
    assert [r.error for r in results] == [None] * len(FORMATS)
    assert all(r.thumbnail and r.windows and r.fingerprint for r in results)


def test_dedups_own_decode_of_old_events_agrees_with_the_embedder(clip) -> None:
    """Version-1 events carry no hashes; dedup decodes their bytes with the same
    ``upright_rgb``, so a 16-bit grey PNG gets the fingerprint the Embedder gives it."""
    from actors.dedup import content_hashes

    dali = make_decoder("dali", clip=clip, max_batch_size=16).decode(list(FORMATS.values()))
    for (name, data), decoded in zip(FORMATS.items(), dali, strict=True):
        assert content_hashes(data)[0] == decoded.fingerprint, name
