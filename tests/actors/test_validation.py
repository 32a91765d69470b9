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
