"""Images made on the fly for tests: real encodings, plus every kind of bad input."""

from __future__ import annotations

import io
import struct
import zlib

from PIL import Image

from cluster.samples import photo


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def jpeg(seed: int = 0, width: int = 96, height: int = 72) -> bytes:
    return encode(photo(width, height, seed), "JPEG", quality=90)


def png(seed: int = 0, width: int = 96, height: int = 72) -> bytes:
    return encode(photo(width, height, seed), "PNG")


def webp(seed: int = 0) -> bytes:
    return encode(photo(seed=seed), "WEBP")


def truncated_jpeg(seed: int = 0) -> bytes:
    data = jpeg(seed, 256, 256)
    return data[: len(data) // 2]


def zip_polyglot(seed: int = 0) -> bytes:
    archive = io.BytesIO()
    import zipfile

    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("payload.php", "<?php system($_GET['c']); ?>")
    return jpeg(seed) + archive.getvalue()


def bomb_png(side: int = 20_000) -> bytes:
    """A valid 1-bit PNG of side x side pixels, all black, compressed to a few KB."""
    row = b"\x00" + b"\x00" * ((side + 7) // 8)
    comp = zlib.compressobj(9)
    idat = b"".join(comp.compress(row) for _ in range(side)) + comp.flush()

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(
            ">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def corrupt_png(seed: int = 0) -> bytes:
    """A PNG whose pixel data is damaged (CRC mismatch in IDAT)."""
    data = bytearray(png(seed))
    idat = data.find(b"IDAT")
    data[idat + 20 : idat + 40] = b"\x00" * 20
    return bytes(data)


HTML = b"<!DOCTYPE html><html><body><script>alert(1)</script></body></html>"
SVG = b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>'
PHP = b"<?php echo shell_exec($_GET['cmd']); ?>"


def real_photos() -> dict[str, Image.Image]:
    """Photographs shipped inside installed packages: scikit-learn's two sample images
    and matplotlib's photos (scikit-image's are kept for an independent check)."""
    from pathlib import Path

    import matplotlib
    from sklearn.datasets import load_sample_images

    photos = {name: Image.fromarray(pixels) for name, pixels in
              zip(("china", "flower"), load_sample_images().images, strict=True)}
    sample_data = Path(matplotlib.get_data_path()) / "sample_data"
    for name, file in (("hopper", "grace_hopper.jpg"), ("backpack", "Minduka_Present_Blue_Pack.png")):
        with Image.open(sample_data / file) as img:
            photos[name] = img.convert("RGB")
    return photos


def quadrants(img: Image.Image) -> list[Image.Image]:
    """Four different pictures of the same scene: the photo's quarters."""
    w, h = img.size
    return [img.crop((x * w // 2, y * h // 2, (x + 1) * w // 2, (y + 1) * h // 2))
            for y in (0, 1) for x in (0, 1)]


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(
        ">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def png16_rgb(seed: int = 0, width: int = 96, height: int = 72) -> bytes:
    """A 48-bit (16 bits a channel) RGB PNG, which Pillow reads but cannot write."""
    import numpy as np

    pixels = np.asarray(photo(width, height, seed)).astype(">u2") * 257
    rows = b"".join(b"\x00" + row.tobytes() for row in pixels)
    ihdr = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr)
            + png_chunk(b"IDAT", zlib.compress(rows)) + png_chunk(b"IEND", b""))


def camera_formats(seed: int = 0, width: int = 96, height: int = 72) -> dict[str, bytes]:
    """One file of every variant cameras and editors write that the decoders accept: the
    same picture (``photo(width, height, seed)``) in each, upright."""
    import numpy as np

    img = photo(width, height, seed)
    rotated = encode(img.transpose(Image.Transpose.ROTATE_90), "JPEG", quality=90,
                     exif=_orientation(6))  # stored sideways, shown upright
    grey16 = Image.fromarray(np.asarray(img.convert("L")).astype(np.uint16) * 257)
    rgba = img.copy()
    rgba.putalpha(200)
    return {
        "mpo": encode(img, "MPO", save_all=True, quality=90,
                      append_images=[photo(width, height, seed + 1000)]),
        "cmyk_jpeg": encode(img.convert("CMYK"), "JPEG", quality=90),
        "grey_jpeg": encode(img.convert("L"), "JPEG", quality=90),
        "progressive_jpeg": encode(img, "JPEG", quality=90, progressive=True),
        "exif_rotated_jpeg": rotated,
        "png16_grey": encode(grey16, "PNG"),
        "png16_rgb": png16_rgb(seed, width, height),
        "palette_png": encode(img.convert("P", palette=Image.Palette.ADAPTIVE), "PNG"),
        "rgba_png": encode(rgba, "PNG"),
        "webp_lossy": encode(img, "WEBP", quality=80),
        "webp_lossless": encode(img, "WEBP", lossless=True),
    }


def _orientation(tag: int) -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = tag
    return exif


def zip_archive() -> bytes:
    archive = io.BytesIO()
    import zipfile

    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("payload.php", "<?php system($_GET['c']); ?>")
    return archive.getvalue()


def zip_padded_polyglot(seed: int = 0, padding: int = (1 << 20) + 4096) -> bytes:
    """A JPEG, then ``padding`` bytes, then a ZIP: past a 1 MiB scan window, still a ZIP
    that ``zipfile`` opens."""
    return jpeg(seed) + b"\x00" * padding + zip_archive()


def png_with_chunk(kind: bytes, body: bytes, seed: int = 0) -> bytes:
    """A PNG with one extra chunk just before IEND."""
    data = png(seed)
    iend = len(data) - 12
    return data[:iend] + png_chunk(kind, body) + data[iend:]


def zip_in_png_chunk(seed: int = 0) -> bytes:
    """A PNG whose private ancillary chunk holds a ZIP: ``zipfile`` opens the PNG."""
    return png_with_chunk(b"prVt", zip_archive(), seed)
