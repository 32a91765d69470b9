"""Near-duplicate detection on real photographs and transformed copies.

    python -m benchmarks.dedup_bench [--seed 0] [--lookup-rows 100000]

Originals: the photographs shipped in installed packages (scikit-learn's china and
flower, matplotlib's Grace Hopper and backpack; ``tests.images.real_photos``) and
the four quarters of each, which are different pictures of the same scenes: 20
originals. Each gets copies as people re-share them: JPEG re-encodes (quality 30,
50), resizes (25 %, 50 %), three random crops of up to 15 % per side, rotations
(-5, -3, +3, +5 degrees), brightness and contrast +-30 %, PNG and WebP re-saves.

Every image goes through the Embedder's own decode (DALI, CPU here), which yields the
hash image and the window pHashes exactly as in production; pairs are then scored
with ``deeplens.hash_index.near_distances`` and the thresholds in settings.

Prints recall per transform, precision over all pairs of images (a pair is true
when both come from the same original; a photo and its own quarters, 50 % crops
outside the goal, are left out), the closest pair of different originals, and the
in-memory look-up time at ``--lookup-rows`` stored images. Writes results/dedup.json.
"""

from __future__ import annotations

import io
import itertools
import random
import time

import numpy as np
from PIL import Image, ImageEnhance


def _saved(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def copies_of(img: Image.Image, rng: random.Random) -> dict[str, bytes]:
    w, h = img.size
    out = {f"jpeg q{q}": _saved(img, "JPEG", quality=q) for q in (30, 50)}
    for pct in (25, 50):
        out[f"resize {pct}%"] = _saved(img.resize((w * pct // 100, h * pct // 100),
                                                  Image.Resampling.BICUBIC), "JPEG", quality=90)
    for k in range(3):
        left, top, right, bottom = (rng.uniform(0, 0.15) for _ in range(4))
        box = (int(left * w), int(top * h), w - int(right * w), h - int(bottom * h))
        out[f"crop #{k}"] = _saved(img.crop(box), "JPEG", quality=90)
    for degrees in (-5, -3, 3, 5):
        out[f"rotate {degrees:+d}"] = _saved(img.rotate(degrees, Image.Resampling.BICUBIC),
                                             "JPEG", quality=90)
    for name, enhance in (("brightness", ImageEnhance.Brightness),
                          ("contrast", ImageEnhance.Contrast)):
        for factor in (0.7, 1.3):
            out[f"{name} {factor - 1:+.0%}"] = _saved(enhance(img).enhance(factor), "JPEG",
                                                      quality=90)
    out["png re-save"] = _saved(img, "PNG")
    out["webp re-save"] = _saved(img, "WEBP", quality=80)
    return out


def main() -> None:
    from benchmarks.common import BenchParser

    parser = BenchParser(__doc__, repeat=False)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lookup-rows", type=int, default=100_000)
    parser.add_argument("--scenes", type=int, default=80,
                        help="generated look-alike scenes: a second, harder negative set")
    args = parser.parse_args()

    from benchmarks.common import machine, record
    from deeplens.hash_index import near_distances
    from deeplens.image_hashes import WINDOWS, window_hashes
    from deeplens.settings import DedupThresholds, ModelSettings
    from serve_apps.decode import make_decoder
    from serve_apps.model import load_clip
    from tests.images import quadrants, real_photos

    limits = DedupThresholds()
    rng = random.Random(args.seed)
    originals: dict[str, Image.Image] = {}
    for name, photo in real_photos().items():
        originals[name] = photo
        for i, quarter in enumerate(quadrants(photo)):
            originals[f"{name}/q{i}"] = quarter
    items: list[tuple[str, str, bytes]] = []  # (original, transform, bytes)
    for name, img in originals.items():
        items.append((name, "original", _saved(img, "JPEG", quality=95)))
        items.extend((name, t, data) for t, data in copies_of(img, rng).items())

    clip = load_clip(ModelSettings(name="deeplens-tiny", pretrained="random"), device="cpu")
    decoder = make_decoder("dali", clip=clip, max_batch_size=32)
    decoded = decoder.decode([data for _, _, data in items])
    hashes = np.stack([window_hashes(d.hash_image) for d in decoded])

    def family(name: str) -> str:
        return name.split("/")[0]

    def comparable(a: str, b: str) -> bool:
        # A photo against one of its own quarters: a 50 % crop, outside the goal either way.
        return a == b or family(a) != family(b) or ("/" in a) == ("/" in b)

    whole = np.zeros((len(items), len(items)), dtype=np.int64)
    windowed = np.zeros_like(whole)
    for i in range(len(items)):
        whole[i], windowed[i] = near_distances(hashes, hashes[i])
    linked = (whole <= limits.near_max_distance) | (windowed <= limits.near_window_max_distance)

    recall: dict[str, list[bool]] = {}
    index_of = {(name, t): i for i, (name, t, _) in enumerate(items)}
    for i, (name, transform, _) in enumerate(items):
        if transform != "original":
            key = transform.split(" #")[0]
            recall.setdefault(key, []).append(bool(linked[i, index_of[(name, "original")]]))
    true_links = false_links = 0
    closest = (99, "", "")
    for i, j in itertools.combinations(range(len(items)), 2):
        a, b = items[i][0], items[j][0]
        if not comparable(a, b):
            continue
        if a == b:
            true_links += bool(linked[i, j])
        else:
            false_links += bool(linked[i, j])
            if items[i][1] == items[j][1] == "original":
                closest = min(closest, (int(min(whole[i, j], windowed[i, j])), a, b))
    precision = true_links / max(true_links + false_links, 1)

    # Generated scenes share one generator (sky, ground, a few shapes): harder negatives
    # than photographs, reported apart.
    from cluster.samples import jpeg_bytes, scene

    scene_hashes = np.stack([window_hashes(d.hash_image) for d in decoder.decode(
        [jpeg_bytes(scene(i)) for i in range(args.scenes)])])
    scene_false = {"whole": 0, "windowed": 0}
    for i in range(args.scenes):
        w_, win = near_distances(scene_hashes[i + 1 :], scene_hashes[i])
        scene_false["whole"] += int((w_ <= limits.near_max_distance).sum())
        scene_false["windowed"] += int(((w_ <= limits.near_max_distance)
                                        | (win <= limits.near_window_max_distance)).sum())
    scene_pairs = args.scenes * (args.scenes - 1) // 2

    stored = np.random.default_rng(args.seed).integers(
        0, 2**63, size=(args.lookup_rows, len(WINDOWS)), dtype=np.int64).view(np.uint64)
    times = []
    for query in hashes[:40]:
        start = time.perf_counter()
        w_, win = near_distances(stored, query)
        np.nonzero((w_ <= limits.near_max_distance) | (win <= limits.near_window_max_distance))
        times.append(time.perf_counter() - start)
    lookup_ms = 1000 * float(np.median(times))

    rows = {t: round(float(np.mean(v)), 3) for t, v in recall.items()}
    print(f"machine: {machine()}")
    print(f"{len(originals)} originals, {len(items)} images; near: whole <= "
          f"{limits.near_max_distance} or windowed <= {limits.near_window_max_distance}")
    print("| copy | recall |\n|---|---|")
    for t, r in rows.items():
        print(f"| {t} | {r:.0%} |")
    print(f"precision over all pairs: {precision:.4f} ({true_links} true, {false_links} false "
          f"links); closest pair of different originals: {closest[0]} ({closest[1]}, "
          f"{closest[2]})")
    print(f"generated look-alike scenes: {scene_pairs} pairs; linked by the whole-image pHash "
          f"alone: {scene_false['whole']}, with the windows too: {scene_false['windowed']}")
    print(f"look-up among {args.lookup_rows:,} stored images: {lookup_ms:.2f} ms (median)")
    figures = {"originals": len(originals), "images": len(items),
               "near_max_distance": limits.near_max_distance,
               "near_window_max_distance": limits.near_window_max_distance,
               "recall": rows, "precision": round(precision, 4), "true_links": true_links,
               "false_links": false_links, "closest_negative": list(closest),
               "scene_pairs": scene_pairs, "scene_false_links": scene_false,
               "lookup_rows": args.lookup_rows, "lookup_ms": round(lookup_ms, 2)}
    print(f"recorded in {record('dedup', figures)}")


if __name__ == "__main__":
    main()
