"""The Embedder's pure parts: model loading, DALI vs open_clip preprocessing, isolation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from deeplens.settings import ModelSettings
from serve_apps.decode import DaliDecoder, DecodeError, PillowDecoder, make_decoder
from serve_apps.embed_batch import embed_items
from serve_apps.model import ModelLoadError, encode_images, encode_texts, load_clip
from tests import images

TINY = ModelSettings(name="deeplens-tiny", pretrained="random")

# DALI's and Pillow's bicubic antialiased resizes differ in rounding. Measured on
# this machine: max abs difference 0.015 (64 px, tiny model) to 0.030 (224 px,
# ViT-B-32) in normalised units, i.e. one to two 8-bit levels; mean 0.003.
PIXEL_TOLERANCE = 0.05
MEAN_TOLERANCE = 0.006
# Embeddings of the two inputs (unit vectors) must agree to this cosine.
COSINE_TOLERANCE = 0.995
DECODERS = ["pillow", "dali", "cpu", "torch"]


@pytest.fixture(scope="module")
def clip():
    return load_clip(TINY, device="cpu")


def test_random_weights_are_labelled(clip) -> None:
    assert clip.model_id == "deeplens-tiny/random-init-seed0" and clip.random_init
    assert clip.image_size == 64 and clip.embed_dim == 64


def test_missing_weights_fail_loudly_unless_random_is_asked_for() -> None:
    with pytest.raises(ModelLoadError, match="DEEPLENS_MODEL__PRETRAINED=random"):
        load_clip(ModelSettings(name="deeplens-tiny", pretrained="laion2b_s34b_b79k"), "cpu")
    with pytest.raises(ModelLoadError, match="unknown open_clip architecture"):
        load_clip(ModelSettings(name="no-such-arch", pretrained="random"), "cpu")


def test_weights_file_loads_and_is_identified(clip, tmp_path) -> None:
    path = tmp_path / "tiny-weights.pt"
    torch.save(clip.model.state_dict(), path)
    loaded = load_clip(ModelSettings(name="deeplens-tiny", pretrained=str(path)), "cpu")
    assert loaded.model_id.startswith("deeplens-tiny/file-tiny-weights-")
    pixels = torch.randn(2, 3, 64, 64)
    assert torch.allclose(encode_images(loaded, pixels), encode_images(clip, pixels), atol=1e-5)


@pytest.mark.parametrize("maker", [images.jpeg, images.png, images.webp])
def test_dali_matches_open_clip_preprocess(clip, maker) -> None:
    photos = [maker(seed) for seed in range(4)]
    reference = torch.stack([d.pixels for d in PillowDecoder(clip.preprocess).decode(photos)])
    dali = make_decoder("dali", clip=clip, max_batch_size=8)
    assert isinstance(dali, DaliDecoder) and dali.name == "dali-cpu"
    ours = torch.stack([d.pixels for d in dali.decode(photos)])
    assert ours.shape == reference.shape == (4, 3, 64, 64)
    assert (ours - reference).abs().max().item() < PIXEL_TOLERANCE
    assert (ours - reference).abs().mean().item() < MEAN_TOLERANCE
    cosine = (encode_images(clip, ours) * encode_images(clip, reference)).sum(-1)
    assert cosine.min().item() > COSINE_TOLERANCE


def test_corrupt_item_fails_alone_in_a_dali_batch(clip) -> None:
    dali = make_decoder("dali", clip=clip, max_batch_size=8)
    batch = [images.jpeg(1), b"\xff\xd8\xff\xe0" + b"garbage" * 40, images.png(2),
             images.truncated_jpeg(3), images.jpeg(4)]
    results = embed_items(clip, dali, batch)
    # The truncated JPEG too: libjpeg-turbo stops early, and Pillow refuses it as truncated.
    assert [r.ok for r in results] == [True, False, True, False, True]
    assert results[1].error_kind == results[3].error_kind == "decode"
    assert results[1].error and "truncated" in (results[3].error or "")
    # The good items equal what they get in a clean batch of their own.
    clean = embed_items(clip, dali, [batch[0], batch[2], batch[4]])
    for got, want in zip([results[0], results[2], results[4]], clean, strict=True):
        np.testing.assert_allclose(got.vector, want.vector, atol=1e-5)
    assert all(r.model_id == "deeplens-tiny/random-init-seed0" for r in results)


def test_pillow_decoder_reports_garbage(clip) -> None:
    [bad] = PillowDecoder(clip.preprocess).decode([b"not an image"])
    assert isinstance(bad, DecodeError)


def test_text_encoding_is_normalised(clip) -> None:
    vectors = encode_texts(clip, ["a red car", "a dog on a beach"])
    assert vectors.shape == (2, 64)
    np.testing.assert_allclose(vectors.norm(dim=-1).numpy(), 1.0, atol=1e-5)


def test_out_of_memory_splits_the_batch(clip, monkeypatch) -> None:
    from serve_apps import model as model_mod

    real = model_mod.encode_images
    calls: list[int] = []

    def tight_memory(c, pixels):
        calls.append(len(pixels))
        if len(pixels) > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(c, pixels)

    monkeypatch.setattr(model_mod, "encode_images", tight_memory)
    out = model_mod.encode_with_split(clip, torch.randn(7, 3, 64, 64))
    assert len(out) == 7 and all(isinstance(v, torch.Tensor) for v in out)
    assert calls[0] == 7
    assert sum(c for c in calls if c <= 2) == 7, "every row was encoded once, in halves"


@pytest.mark.parametrize("kind", DECODERS)
def test_a_bomb_or_corrupt_query_fails_alone_in_its_batch(clip, kind) -> None:
    """Query images skip the validation stage: the decoders themselves must refuse a bomb
    (DecompressionBombError is no OSError) without failing another tenant's batch-mates."""
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = 89_478_485  # what the Embedder sets from the upload limit
    decoder = make_decoder(kind, clip=clip, max_batch_size=4)
    batch = [images.jpeg(1), images.bomb_png(), images.corrupt_png(2), b"not an image",
             images.png(3)]
    results = embed_items(clip, decoder, batch)
    assert [r.ok for r in results] == [True, False, False, False, True]
    assert results[1].error_kind == "decode"


def test_a_decoder_that_raises_for_the_batch_fails_only_the_bad_item(clip) -> None:
    from serve_apps.embed_batch import embed_isolated

    class Fragile:
        name = "fragile"

        def __init__(self) -> None:
            self.inner = PillowDecoder(clip.preprocess)

        def decode(self, items):
            if any(item.startswith(b"BOOM") for item in items):
                raise MemoryError("a decoder defect")
            return self.inner.decode(items)

    results = embed_isolated(clip, Fragile(), [images.jpeg(4), b"BOOM", images.jpeg(5)])
    assert [r.ok for r in results] == [True, False, True]
    assert "MemoryError" in (results[1].error or "")


def test_random_weights_are_the_same_on_every_start_and_the_seed_is_in_the_id() -> None:
    """Two starts (or two replicas) under one model id must give identical vectors, or
    an image stops finding itself after a restart."""
    first, second = load_clip(TINY, device="cpu"), load_clip(TINY, device="cpu")
    torch.manual_seed(1234)  # whatever the process did to its RNG before
    third = load_clip(TINY, device="cpu")
    pixels = torch.randn(3, 3, 64, 64)
    reference = encode_images(first, pixels)
    assert torch.equal(encode_images(second, pixels), reference)
    assert torch.equal(encode_images(third, pixels), reference)
    other = load_clip(TINY.model_copy(update={"random_seed": 7}), device="cpu")
    assert other.model_id == "deeplens-tiny/random-init-seed7" != first.model_id
    assert not torch.allclose(encode_images(other, pixels), reference)


# -- decode once: hashes and thumbnails from the Embedder's own decode ---------------------

def _rotated_by_exif(seed: int) -> bytes:
    """A 120x80 landscape stored as 80x120 portrait pixels with orientation tag 6/8."""
    import io

    from PIL import Image

    from cluster.samples import photo

    upright = photo(120, 80, seed)
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # what a sideways camera writes
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 clockwise to view"
    buf = io.BytesIO()
    stored.save(buf, "JPEG", quality=95, exif=exif.tobytes())
    return buf.getvalue()


@pytest.mark.parametrize("kind", DECODERS)
def test_uploads_get_hashes_and_a_thumbnail_from_the_one_decode(clip, kind) -> None:
    from PIL import Image

    decoder = make_decoder(kind, clip=clip, max_batch_size=4)
    big = images.jpeg(5, 800, 600)
    results = embed_items(clip, decoder, [big, images.png(1), images.jpeg(2)],
                          thumbnails=[True, True, False])
    assert all(r.ok for r in results)
    thumb = Image.open(__import__("io").BytesIO(results[0].thumbnail))
    assert thumb.format == "JPEG" and thumb.size == (320, 240)  # longest side 320
    small = Image.open(__import__("io").BytesIO(results[1].thumbnail))
    assert small.size == (96, 72)  # never enlarged
    assert results[0].phash is not None
    assert results[0].fingerprint.startswith("jc1:")  # a JPEG: its coded data
    assert results[1].fingerprint.startswith("px1:")  # a PNG: its pixels
    assert results[2].thumbnail is None and results[2].phash is None  # a query: vector only


def test_both_decoders_agree_on_hashes(clip) -> None:
    """A PNG decodes to the same pixels everywhere: same fingerprint on either path; the
    pHash may move by a few bits between resize filters, far inside the near threshold."""
    from deeplens.image_hashes import phash

    photos = [images.png(seed, 200, 150) for seed in range(3)]
    pillow = PillowDecoder(clip.preprocess).decode(photos)
    dali = make_decoder("dali", clip=clip, max_batch_size=4).decode(photos)
    for p, d in zip(pillow, dali, strict=True):
        assert p.fingerprint == d.fingerprint
        assert bin(phash(p.hash_image) ^ phash(d.hash_image)).count("1") <= 4
    assert len({d.fingerprint for d in dali}) == 3


@pytest.mark.parametrize("kind", DECODERS)
def test_an_exif_rotated_image_is_decoded_upright(clip, kind) -> None:
    from PIL import Image

    from cluster.samples import photo

    decoder = make_decoder(kind, clip=clip, max_batch_size=2)
    [rotated] = embed_items(clip, decoder, [_rotated_by_exif(3)], thumbnails=[True])
    assert rotated.ok
    assert Image.open(__import__("io").BytesIO(rotated.thumbnail)).size == (120, 80)
    upright = images.encode(photo(120, 80, 3), "JPEG", quality=95)
    [plain] = embed_items(clip, decoder, [upright], thumbnails=[True])
    assert bin(rotated.phash ^ plain.phash).count("1") <= 6  # the same picture, upright
    assert float(np.dot(rotated.vector, plain.vector)) > 0.98


def test_damage_only_a_decode_finds_fails_as_a_decode_error_alone(clip) -> None:
    """A PNG whose CRCs are right but whose compressed pixels are not passes validation
    (it decodes nothing); the Embedder's decode refuses it, and its batch-mates embed."""
    import struct
    import zlib

    from actors.validation import validate_image
    from deeplens.settings import IngestionSettings

    good = images.png(4, 64, 64)
    at = good.find(b"IDAT") - 4
    length = struct.unpack(">I", good[at : at + 4])[0]
    body = bytearray(good[at + 8 : at + 8 + length])
    body[2:12] = b"\xff" * 10  # garbage deflate data
    chunk = struct.pack(">I", length) + b"IDAT" + bytes(body)
    chunk += struct.pack(">I", zlib.crc32(b"IDAT" + bytes(body)) & 0xFFFFFFFF)
    bad = good[:at] + chunk + good[at + 12 + length :]
    assert validate_image(bad, IngestionSettings()).format == "PNG"  # structure is intact
    decoder = make_decoder("dali", clip=clip, max_batch_size=4)
    results = embed_items(clip, decoder, [images.jpeg(1), bad, images.jpeg(2)], [True] * 3)
    assert [r.ok for r in results] == [True, False, True]
    assert results[1].error_kind == "decode"


def test_busy_fraction_is_model_time_over_the_recent_window() -> None:
    from serve_apps.embed_batch import BUSY_WINDOW_S, Phases

    phases = Phases()
    assert phases.busy_fraction() == 0.0  # nothing ran yet
    phases._first = 100.0
    phases._model_spans.extend([(100.0, 103.0), (110.0, 115.0), (125.0, 126.0)])
    assert phases.busy_fraction(now=100.0 + BUSY_WINDOW_S) == pytest.approx(9 / BUSY_WINDOW_S)
    assert phases.busy_fraction(now=150.0) == pytest.approx(1 / BUSY_WINDOW_S)  # old spans out


def test_phases_clock_decode_and_model_time_apart() -> None:
    """Through the context managers, on a clock the test moves: decode time is not model
    time, and the busy fraction is model seconds over wall seconds since the first batch."""
    from serve_apps.embed_batch import Phases

    now = [1000.0]
    live = Phases(clock=lambda: now[0])
    with live.decoding():
        now[0] += 2.0
    with live.encoding():
        now[0] += 6.0
    now[0] += 2.0  # idle
    assert (live.decode_s, live.model_s) == (2.0, 6.0)
    assert live.busy_fraction() == pytest.approx(6.0 / 10.0)
