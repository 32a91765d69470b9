import pytest

from deeplens.formats import JPEG, PNG, WEBP, hostile_trailer, image_end, sniff
from tests import images


@pytest.mark.parametrize(("data", "fmt"), [
    (images.jpeg(), JPEG), (images.png(), PNG), (images.webp(), WEBP),
    (images.bomb_png(64), PNG),
])
def test_sniff_by_content(data, fmt) -> None:
    assert sniff(data) is fmt
    assert image_end(data, fmt) == len(data)  # our own encodings end where the data ends


@pytest.mark.parametrize("data", [b"", b"\x00" * 64, images.HTML, images.SVG, images.PHP,
                                  b"GIF89a" + b"\x00" * 20])
def test_sniff_rejects_other_content(data) -> None:
    assert sniff(data) is None


def test_zip_after_jpeg_is_a_hostile_trailer() -> None:
    assert hostile_trailer(images.zip_polyglot(), JPEG) == "a ZIP archive"


def test_progressive_jpeg_end_is_found() -> None:
    data = images.encode(images.photo(120, 80), "JPEG", progressive=True, quality=85)
    assert image_end(data, JPEG) == len(data)
    assert hostile_trailer(data + b"PK\x03\x04rest", JPEG) == "a ZIP archive"


def test_harmless_trailing_bytes_are_allowed() -> None:
    assert hostile_trailer(images.jpeg() + b"\x00" * 32, JPEG) is None
    assert hostile_trailer(images.png() + b"<?php x", PNG) == "PHP code"
