"""Duplicate-detection thresholds, measured on transformed copies.

    python -m benchmarks.dedup_bench [--originals 80]

Each original (a generated photo-like scene, 512 px) gets six copies: JPEG
re-encoded at quality 60 and 30, resized to 50 %, center-cropped to 90 %,
rotated 3 degrees, brightened 15 %; plus a pixel-identical PNG re-save for the
exact tier. Positives are (original, its copy); negatives are (original, another
original) - the scenes share one generator, so negatives are harder than
unrelated real photos and the precision below is conservative.

Prints per tier and threshold: recall on each transform and overall, precision
over all pairs; writes results/dedup.json. The similar tier needs pretrained
weights (random-weight scores mean nothing) and runs only with --model/--pretrained
pointing at cached weights.
"""

from __future__ import annotations

import argparse
import io
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageEnhance

TRANSFORMS: dict[str, Callable[[Image.Image], Image.Image]] = {
    "jpeg_q60": lambda im: _reencode(im, 60),
    "jpeg_q30": lambda im: _reencode(im, 30),
    "resize_50": lambda im: im.resize((im.width // 2, im.height // 2), Image.BICUBIC),
    "crop_90": lambda im: im.crop((im.width // 20, im.height // 20,
                                   im.width - im.width // 20, im.height - im.height // 20)),
    "rotate_3": lambda im: im.rotate(3, resample=Image.BICUBIC, expand=False),
    "bright_115": lambda im: ImageEnhance.Brightness(im).enhance(1.15),
}


def _reencode(img: Image.Image, quality: int) -> Image.Image:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def to_bytes(img: Image.Image, fmt: str = "JPEG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, quality=92) if fmt == "JPEG" else img.save(buf, fmt)
    return buf.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--originals", type=int, default=80)
    args = parser.parse_args()

    from actors.dedup import content_hashes
    from benchmarks.common import machine, record
    from cluster.samples import scene
    from deeplens.hash_index import hamming

    originals = [scene(1000 + i, 512) for i in range(args.originals)]
    base = [content_hashes(to_bytes(im)) for im in originals]
    base_ph = np.array([h for _, h in base], dtype=np.uint64)

    exact_hits = sum(content_hashes(to_bytes(Image.open(io.BytesIO(to_bytes(im))), "PNG"))[0]
                     == base[i][0] for i, im in enumerate(originals))
    exact_false = sum(base[i][0] == base[j][0] for i in range(len(base))
                      for j in range(i + 1, len(base)))

    distances: dict[str, np.ndarray] = {}
    for name, transform in TRANSFORMS.items():
        copies = [content_hashes(to_bytes(transform(im)))[1] for im in originals]
        distances[name] = np.array([int(hamming(base_ph[i : i + 1], c)[0])
                                    for i, c in enumerate(copies)])
    negatives = np.array([int(hamming(base_ph[i : i + 1], int(base_ph[j]))[0])
                          for i in range(len(base_ph)) for j in range(i + 1, len(base_ph))])

    rows = []
    for threshold in (4, 6, 8, 10, 12, 14, 16):
        positives = np.concatenate(list(distances.values()))
        tp = int((positives <= threshold).sum())
        fp = int((negatives <= threshold).sum())
        rows.append({
            "near_max_distance": threshold,
            "recall": round(tp / len(positives), 3),
            "precision": round(tp / max(tp + fp, 1), 3),
            "false_pairs": fp,
            **{f"recall_{n}": round(float((d <= threshold).mean()), 3)
               for n, d in distances.items()},
        })
    print(f"machine: {machine()}; {args.originals} originals, {len(negatives)} negative pairs")
    print(f"exact tier (pixel hash): recall {exact_hits}/{len(originals)} on PNG re-saves, "
          f"{exact_false} false matches among originals")
    names = list(TRANSFORMS)
    print("| distance <= | recall | precision | false pairs | " + " | ".join(names) + " |")
    print("|---" * (4 + len(names)) + "|")
    for r in rows:
        print(f"| {r['near_max_distance']} | {r['recall']} | {r['precision']} | "
              f"{r['false_pairs']} | " + " | ".join(str(r[f'recall_{n}']) for n in names) + " |")
    print("negative-pair distance: min", int(negatives.min()), "p1",
          int(np.percentile(negatives, 1)), "median", int(np.median(negatives)))
    print(f"recorded in {record('dedup', {'originals': args.originals, 'exact_recall': exact_hits / len(originals), 'exact_false_matches': exact_false, 'near': rows})}")  # noqa: E501


if __name__ == "__main__":
    main()
