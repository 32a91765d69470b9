import pytest

from actors.validation import Invalid, Valid, validate_image
from deeplens.settings import IngestionSettings
from tests import images

LIMITS = IngestionSettings()


@pytest.mark.parametrize(("data", "fmt"), [
    (images.jpeg(), "JPEG"), (images.png(), "PNG"), (images.webp(), "WEBP"),
])
def test_good_images_pass_with_their_size(data, fmt) -> None:
    assert validate_image(data, LIMITS) == Valid(96, 72, fmt)


@pytest.mark.parametrize(("data", "reason"), [
    (b"", "corrupt"),
    (b"\x13\x37" * 500, "unsupported_format"),
    (images.HTML, "unsupported_format"),
    (images.truncated_jpeg(), "truncated"),
    (images.corrupt_png(), "corrupt"),
    (images.bomb_png(), "decompression_bomb"),
    (images.jpeg(width=8, height=64), "too_small"),
    (b"\xff\xd8\xff\xe0" + b"\x00" * 100, "corrupt"),
])
def test_bad_images_fail_with_a_reason(data, reason) -> None:
    verdict = validate_image(data, LIMITS)
    assert isinstance(verdict, Invalid), verdict
    assert verdict.reason == reason, verdict.message
    assert verdict.message


def test_limits_come_from_settings() -> None:
    strict = IngestionSettings(max_side=80, max_image_pixels=10_000_000)
    assert validate_image(images.jpeg(width=96), strict).reason == "too_large"
    tiny_budget = IngestionSettings(max_image_pixels=1000)
    verdict = validate_image(images.jpeg(), tiny_budget)
    assert verdict.reason == "decompression_bomb"
    assert "DEEPLENS_INGESTION__MAX_IMAGE_PIXELS" in verdict.message


def _damaged_mid_scan(marker: int) -> bytes:
    """A JPEG with a marker written into the middle of its entropy-coded data."""
    data = bytearray(images.jpeg(1, 256, 256))
    sos = data.find(b"\xff\xda")
    middle = (sos + len(data)) // 2
    data[middle : middle + 2] = bytes([0xFF, marker])
    return bytes(data)


@pytest.mark.parametrize("marker", [0xC0, 0xC4, 0xD8, 0xDA, 0xDB, 0xDD])
def test_a_jpeg_damaged_in_the_middle_is_corrupt(marker) -> None:
    """Pillow's full decode refused these ("broken data stream"); the structure walk must
    too, without decoding."""
    verdict = validate_image(_damaged_mid_scan(marker), LIMITS)
    assert isinstance(verdict, Invalid) and verdict.reason == "corrupt", verdict


def test_validation_decodes_no_pixels(monkeypatch) -> None:
    """The one full decode is the Embedder's: validation must reach its verdicts from the
    header and the container alone."""
    from PIL import Image, ImageFile

    def no_decoding(self, *args, **kwargs):
        raise AssertionError("validation decoded pixels")

    good = ((images.jpeg(), "JPEG"), (images.png(), "PNG"), (images.webp(), "WEBP"))
    bad = ((images.truncated_jpeg(), "truncated"), (images.corrupt_png(), "corrupt"),
           (images.bomb_png(), "decompression_bomb"), (_damaged_mid_scan(0xC0), "corrupt"))
    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    monkeypatch.setattr(Image.Image, "load", no_decoding)
    for data, fmt in good:
        assert validate_image(data, LIMITS).format == fmt
    for data, reason in bad:
        assert validate_image(data, LIMITS).reason == reason


def test_progressive_and_restart_marker_jpegs_pass() -> None:
    from cluster.samples import photo

    progressive = images.encode(photo(300, 200, 1), "JPEG", quality=80, progressive=True)
    assert validate_image(progressive, LIMITS) == Valid(300, 200, "JPEG")
    assert validate_image(_damaged_mid_scan(0xD3), LIMITS).format == "JPEG"  # a restart marker
