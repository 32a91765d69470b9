"""The decoders behind one protocol (issue 26): torchvision's path and the CPU pool agree
with DALI's CPU path; a replica's choice of decoder and the refusal of host decoding on
a GPU; one bad item fails alone everywhere; the exact tier stays pixel-identical."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from cluster.samples import scene
from deeplens.image_hashes import phash
from serve_apps.decode import (
    Decoded,
    DecoderRefused,
    choose_decoder,
    make_decoder,
)
from serve_apps.decode_common import replica_cpus
from serve_apps.embed_batch import embed_items
from serve_apps.model import load_clip
from serve_apps.torch_decoder import upright
from tests import images
from tests.serve_apps.test_model_and_decode import MEAN_TOLERANCE, PIXEL_TOLERANCE, TINY

KINDS = ["pillow", "dali", "cpu", "torch"]


@pytest.fixture(scope="module")
def clip():
    return load_clip(TINY, device="cpu")


def batch_of_every_format() -> list[bytes]:
    """Small and large JPEGs (the large ones decoded at a reduced DCT scale by the CPU
    pool, the largest reduced by area first on the torch path), a PNG, a WebP."""
    return [images.jpeg(1), images.jpeg(2, 640, 480), images.png(3, 200, 150),
            images.webp(4), images.jpeg(5, 150, 200),
            # A scene: a 1800 x 2400 wave picture is so smooth that its pHash moves ~30
            # bits with 0.3 levels of resampling difference (open_clip's own too).
            images.encode(scene(6, 1024).resize((1800, 2400)), "JPEG", quality=90)]


@pytest.mark.parametrize("kind", ["torch", "cpu"])
def test_torch_and_cpu_paths_agree_with_dali_cpu(clip, kind) -> None:
    photos = batch_of_every_format()
    dali = make_decoder("dali", clip=clip, max_batch_size=8).decode(photos)
    ours = make_decoder(kind, clip=clip, max_batch_size=8).decode(photos)
    for d, o in zip(dali, ours, strict=True):
        assert isinstance(d, Decoded) and isinstance(o, Decoded)
        assert o.pixels.shape == d.pixels.shape and o.pixels.device.type == "cpu"
        assert np.asarray(o.thumbnail).shape == np.asarray(d.thumbnail).shape
        assert o.hash_image.shape == d.hash_image.shape and o.hash_image.dtype == np.uint8
        assert o.fingerprint == d.fingerprint  # the same scheme and value on every decoder
        difference = (o.pixels - d.pixels).abs()
        # DCT-domain downscaling (the CPU pool, 640 x 480 at half scale) adds a little:
        # measured mean 0.005, max 0.06 there (0.001 and 0.06 on the torch path). At a 37x
        # reduction (2400 px to 64) DALI's edge pixels differ from open_clip's own
        # transform's by 0.117 (8 levels), and so from ours.
        assert difference.mean().item() < MEAN_TOLERANCE * (1.5 if kind == "cpu" else 1)
        assert difference.max().item() < PIXEL_TOLERANCE * 3
        thumbs = np.abs(np.asarray(o.thumbnail, float) - np.asarray(d.thumbnail, float))
        assert thumbs.mean() < 3.0  # levels
        assert bin(phash(o.hash_image) ^ phash(d.hash_image)).count("1") <= 6


def test_exif_orientations_are_applied_as_pillow_applies_them() -> None:
    stored = images.photo(12, 7, 1)  # not square, not symmetric
    tensor = torch.from_numpy(np.asarray(stored).copy()).permute(2, 0, 1)
    for orientation in range(1, 9):
        exif = Image.Exif()
        exif[0x0112] = orientation
        tagged = Image.open(io.BytesIO(images.encode(stored, "PNG", exif=exif.tobytes())))
        want = np.asarray(ImageOps.exif_transpose(tagged).convert("RGB"))
        got = upright(tensor, orientation).permute(1, 2, 0).numpy()
        assert np.array_equal(got, want), orientation


@pytest.mark.parametrize("kind", KINDS)
def test_one_corrupt_image_fails_alone_on_every_decoder(clip, kind) -> None:
    decoder = make_decoder(kind, clip=clip, max_batch_size=8)
    batch = [images.jpeg(1), b"\xff\xd8\xff\xe0" + b"garbage" * 40, images.png(2),
             images.truncated_jpeg(3), images.jpeg(4, 640, 480), b"not an image"]
    results = embed_items(clip, decoder, batch, [True] * len(batch))
    assert [r.ok for r in results] == [True, False, True, False, True, False]
    assert {r.error_kind for r in results if not r.ok} == {"decode"}
    clean = embed_items(clip, decoder, [batch[0], batch[2], batch[4]], [True] * 3)
    for got, want in zip([results[0], results[2], results[4]], clean, strict=True):
        np.testing.assert_allclose(got.vector, want.vector, atol=1e-5)
        assert got.fingerprint == want.fingerprint


def _changed(picture: Image.Image, xy: tuple[int, int], by: int) -> Image.Image:
    copy = picture.copy()
    r, g, b = copy.getpixel(xy)  # type: ignore[misc]
    copy.putpixel(xy, (min(255, r + by), g, b))
    return copy


def _decoded(data: bytes, draft: bool) -> np.ndarray:
    from serve_apps.decode_common import draft_size

    img = Image.open(io.BytesIO(data))
    if draft:
        img.draft("RGB", draft_size(img.size, TINY_SIDE))
    return np.asarray(img.convert("RGB"))


TINY_SIDE = 64  # the tiny model's input side


@pytest.fixture(scope="module")
def one_pixel_copies() -> dict[str, tuple[bytes, list[bytes]]]:
    """A PNG and a JPEG, each with copies that differ from it by one pixel. The JPEG
    copies are chosen so that the change is there at full resolution but at least two
    are gone at the quarter DCT scale the CPU pool decodes them at: a fingerprint of
    what that decode sees would call them exact."""
    picture = images.photo(1280, 960, 7)
    pngs = [images.encode(_changed(picture, xy, 1), "PNG")
            for xy in ((0, 0), (333, 217), (1279, 959))]
    jpeg = images.encode(picture, "JPEG", quality=100)
    jpegs = [images.encode(_changed(picture, xy, 3), "JPEG", quality=100)
             for xy in ((100, 37), (1001, 777), (3, 900), (640, 480))]
    hidden = 0
    for copy in jpegs:
        assert not np.array_equal(_decoded(jpeg, False), _decoded(copy, False))
        hidden += np.array_equal(_decoded(jpeg, True), _decoded(copy, True))
    assert hidden >= 2  # the hazard is really exercised
    return {"PNG": (images.encode(picture, "PNG"), pngs), "JPEG": (jpeg, jpegs)}


@pytest.mark.parametrize("kind", KINDS)
def test_a_copy_with_one_pixel_changed_is_never_exact(clip, kind, one_pixel_copies) -> None:
    decoder = make_decoder(kind, clip=clip, max_batch_size=8)
    for fmt, (original, copies) in one_pixel_copies.items():
        first, *others = decoder.decode([original, *copies, original])
        assert all(isinstance(d, Decoded) for d in [first, *others])
        prints = [d.fingerprint for d in others]  # type: ignore[union-attr]
        assert first.fingerprint not in prints[:-1], fmt  # type: ignore[union-attr]
        assert prints[-1] == first.fingerprint  # type: ignore[union-attr] - same bytes: exact


def test_jpeg_fingerprint_ignores_metadata_but_not_orientation(clip) -> None:
    decoder = make_decoder("cpu", clip=clip, max_batch_size=4)
    picture = images.photo(120, 80, 2)
    plain = images.encode(picture, "JPEG", quality=90)
    commented = plain[:2] + b"\xff\xfe\x00\x0bhello-xmp" + plain[2:]  # a COM segment
    exif = Image.Exif()
    exif[0x0112] = 3
    turned = images.encode(picture, "JPEG", quality=90, exif=exif.tobytes())
    a, b, c = (d.fingerprint for d in decoder.decode([plain, commented, turned]))
    assert a == b and a.startswith("jc1:")
    assert c != a  # same coded pixels, shown upside down: another picture


class FakeGpuClip:
    """What the choice reads of a model on a GPU, on a machine with no GPU: every GPU
    decoder then fails to start, as on a card whose libraries are missing."""

    def __init__(self, real) -> None:
        self.device = torch.device("cuda")
        self.image_size, self.mean, self.std = real.image_size, real.mean, real.std
        self.preprocess = real.preprocess


def test_a_cpu_replica_chooses_the_cpu_pool_over_every_core(clip) -> None:
    decoder, passed_over = choose_decoder("auto", clip=clip, max_batch_size=8)
    assert decoder.name == f"cpu-pool-{replica_cpus()}" and passed_over == []
    dali = make_decoder("dali", clip=clip, max_batch_size=8)
    assert dali.num_threads == replica_cpus()  # not a fixed 2


def test_a_gpu_replica_refuses_host_decoding_unless_allowed(clip, caplog) -> None:
    gpu = FakeGpuClip(clip)
    with pytest.raises(DecoderRefused, match="ALLOW_CPU_DECODE") as refused:
        choose_decoder("auto", clip=gpu, max_batch_size=8)
    assert "dali:" in str(refused.value) and "torch:" in str(refused.value)
    with pytest.raises(DecoderRefused):
        choose_decoder("cpu", clip=gpu, max_batch_size=8)  # named, still refused
    decoder, passed_over = choose_decoder("auto", clip=gpu, max_batch_size=8,
                                          allow_cpu_decode=True)
    assert decoder.name.startswith("cpu-pool") and [n[:6] for n in passed_over] == [
        "dali: ", "torch:"]
    assert any("chosen" in r.message and r.levelname == "WARNING" for r in caplog.records)


def test_a_gpu_replica_takes_dali_then_torchvision(clip, monkeypatch) -> None:
    from serve_apps import decoder_choice

    gpu = FakeGpuClip(clip)
    working = {kind: make_decoder(kind, clip=clip, max_batch_size=4) for kind in ("dali", "torch")}

    def broken(*_args):
        raise ImportError("libnvimgcodec.so: cannot open shared object file")

    monkeypatch.setitem(decoder_choice.BUILDERS, "dali", lambda *a: working["dali"])
    monkeypatch.setitem(decoder_choice.BUILDERS, "torch", lambda *a: working["torch"])
    assert choose_decoder("auto", clip=gpu, max_batch_size=4)[0] is working["dali"]
    monkeypatch.setitem(decoder_choice.BUILDERS, "dali", broken)
    decoder, passed_over = choose_decoder("auto", clip=gpu, max_batch_size=4)
    assert decoder is working["torch"] and "libnvimgcodec" in passed_over[0]


def test_the_embedder_reports_its_decoder() -> None:
    from serve_apps.embedder import Embedder, EmbedderArgs

    replica = Embedder.func_or_class(EmbedderArgs(model=TINY, device="cpu"))
    stats = replica.stats()
    assert stats["decoder"].startswith("cpu-pool") and stats["decoders_passed_over"] == []


def test_the_torch_path_raises_a_device_fault_instead_of_decoding_around_it(
        clip, monkeypatch) -> None:
    """nvJPEG on a dead card must fail the call (the replica is broken), never send the
    batch to the host pool item by item as if the images were bad."""
    import torchvision.io

    def dead_card(*_args, **_kwargs):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(torchvision.io, "decode_jpeg", dead_card)
    decoder = make_decoder("torch", clip=clip, max_batch_size=4)
    with pytest.raises(RuntimeError, match="illegal memory access"):
        decoder.decode([images.jpeg(1), images.jpeg(2)])
    assert decoder.fallbacks == 0
