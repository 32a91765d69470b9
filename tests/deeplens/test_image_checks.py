"""Header and structure checks accept every variant cameras write (issue 23, item 1)."""

from __future__ import annotations

import pytest

from deeplens.image_checks import Invalid, Valid, check_image, check_structure
from deeplens.settings import IngestionSettings
from tests import images

FORMATS = images.camera_formats()
CONTAINER = {"png": "PNG", "webp": "WEBP"}


@pytest.mark.parametrize("kind", sorted(FORMATS))
def test_every_camera_variant_is_valid(kind) -> None:
    verdict = check_image(FORMATS[kind], IngestionSettings())
    assert isinstance(verdict, Valid), verdict
    stored = (72, 96) if kind == "exif_rotated_jpeg" else (96, 72)  # the header's own sides
    assert (verdict.width, verdict.height) == stored
    assert verdict.format == next((v for k, v in CONTAINER.items() if k in kind), "JPEG")


def test_a_multi_picture_jpeg_is_checked_as_the_jpeg_it_is() -> None:
    mpo = FORMATS["mpo"]
    assert check_structure(mpo, "MPO") is None  # Pillow's name for it: was KeyError 'MPO'
    first_cut = mpo[: len(mpo) // 4]  # cut inside the first picture
    assert check_image(first_cut, IngestionSettings()) == Invalid(
        "truncated", "the JPEG data ends before its end marker")
