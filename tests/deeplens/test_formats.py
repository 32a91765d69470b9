import io

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


def test_a_zip_padded_past_a_mebibyte_is_refused() -> None:
    import io
    import zipfile

    data = images.zip_padded_polyglot()
    assert zipfile.ZipFile(io.BytesIO(data)).namelist() == ["payload.php"]
    assert hostile_trailer(data, JPEG) == "a ZIP archive"


def test_a_zip_inside_a_png_ancillary_chunk_is_refused() -> None:
    import io
    import zipfile

    data = images.zip_in_png_chunk()
    assert image_end(data, PNG) == len(data)  # nothing after IEND: no trailer at all
    assert zipfile.ZipFile(io.BytesIO(data)).namelist() == ["payload.php"]
    assert hostile_trailer(data, PNG) == "a ZIP archive"


@pytest.mark.parametrize(("body", "what"), [
    (b"PK\x03\x04" + b"\x00" * 26 + b"payload.php", "a ZIP archive"),  # no end record
    (b"\x00" * (2 << 20) + b"<?php system($_GET['c']); ?>", "PHP code"),
])
def test_an_unknown_png_chunk_holding_an_archive_or_script_is_refused(body, what) -> None:
    data = images.png_with_chunk(b"prVt", body)
    assert hostile_trailer(data, PNG) == f"{what} in its 'prVt' chunk"


def test_chunks_the_format_defines_and_harmless_private_ones_are_allowed() -> None:
    text = images.png_with_chunk(b"tEXt", b"Comment\x00made with a camera")
    private = images.png_with_chunk(b"prVt", b"\x01\x02 vendor calibration data")
    assert hostile_trailer(text, PNG) is None and hostile_trailer(private, PNG) is None


def test_any_trailer_that_is_not_image_data_is_refused_whatever_its_length() -> None:
    import numpy as np

    noise = np.random.default_rng(0).integers(1, 255, 3 << 20, dtype=np.uint8).tobytes()
    for trailer in (noise[:64], noise, b"\x00" * (1 << 20) + b"<?php x"):
        verdict = hostile_trailer(images.jpeg() + trailer, JPEG)
        assert verdict is not None and ("not image data" in verdict or verdict == "PHP code")
    assert hostile_trailer(images.png() + noise, PNG) is not None
    assert hostile_trailer(images.webp() + noise[:100], WEBP) is not None
    # A damaged second picture is not image data either.
    cut = images.jpeg(1)[:-200]
    assert "not a whole picture" in hostile_trailer(images.jpeg() + cut, JPEG)


def test_pictures_after_the_first_and_padding_are_image_data() -> None:
    formats = images.camera_formats()
    mpo = formats["mpo"]
    assert image_end(mpo, JPEG) < len(mpo)  # the second picture follows the first's EOI
    assert hostile_trailer(mpo, JPEG) is None
    assert hostile_trailer(mpo + b"\xff" * 300 + images.jpeg(3) + b"\x00" * 64, JPEG) is None
    for name, data in formats.items():
        assert hostile_trailer(data, sniff(data)) is None, name


def _box(kind: bytes, body: bytes) -> bytes:
    return (8 + len(body)).to_bytes(4, "big") + kind + body


def test_a_motion_photo_video_is_allowed_and_scanned_whole() -> None:
    video = _box(b"ftyp", b"mp42\x00\x00\x00\x00isommp42") + _box(b"mdat", b"\x00" * (2 << 20))
    video += _box(b"moov", b"\x00" * 64)
    assert hostile_trailer(images.jpeg() + video, JPEG) is None
    script = _box(b"ftyp", b"mp42") + _box(b"mdat", b"\x00" * (2 << 20) + b"<script>x")
    assert hostile_trailer(images.jpeg() + script, JPEG) == "a script"
    broken = video[:-10]  # the boxes do not reach the end: not a video
    assert "not image data" in hostile_trailer(images.jpeg() + broken, JPEG)


def test_a_samsung_trailer_is_allowed_and_scanned_whole() -> None:
    block = b"\x00\x00\x01\x0a" + (14).to_bytes(4, "little") + b"Image_UTC_Data1700000000000"
    directory = b"SEFH" + b"\x6b\x00\x00\x00" + (1).to_bytes(4, "little") + \
        b"\x00\x00\x01\x0a" + len(block).to_bytes(4, "little") + len(block).to_bytes(4, "little")
    trailer = block + directory + len(directory).to_bytes(4, "little") + b"SEFT"
    assert hostile_trailer(images.jpeg() + trailer, JPEG) is None
    hostile = b"<?php x" + trailer
    assert hostile_trailer(images.jpeg() + hostile, JPEG) == "PHP code"


def test_upright_rgb_shows_every_variant_at_its_true_levels() -> None:
    import numpy as np
    from PIL import Image

    from deeplens.formats import upright_rgb

    picture = np.asarray(images.photo(96, 72, 0), dtype=np.float64)
    grey = np.asarray(images.photo(96, 72, 0).convert("L").convert("RGB"), dtype=np.float64)
    for name, data in images.camera_formats().items():
        with Image.open(io.BytesIO(data)) as img:
            shown = np.asarray(upright_rgb(img), dtype=np.float64)
        expected = grey if "grey" in name else picture
        assert shown.shape == expected.shape, name
        assert np.abs(shown - expected).mean() < 12, name  # 16-bit grey clipped: 128


def test_jpeg_components_from_the_frame_header() -> None:
    from deeplens.containers import jpeg_components

    kinds = images.camera_formats()
    assert {k: jpeg_components(v) for k, v in kinds.items() if "jpeg" in k or k == "mpo"} == {
        "mpo": 3, "cmyk_jpeg": 4, "grey_jpeg": 1, "progressive_jpeg": 3,
        "exif_rotated_jpeg": 3}
    assert jpeg_components(kinds["png16_grey"]) is None
