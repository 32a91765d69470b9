"""Decode + preprocess throughput: DALI's CPU pipeline vs Pillow with open_clip's transform.

    python -m benchmarks.decode_bench [--images 256] [--size 640x480] [--batch 32]

Both produce the model's input (shorter side to 224, center crop, normalise) from
the same JPEGs, with 1 and 2 threads. Pillow's "threads" are a thread pool over
items (Pillow releases the GIL while decoding); DALI's are its own worker threads.
Writes results/decode.json.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor


def main() -> None:
    from benchmarks.common import BenchParser

    parser = BenchParser(__doc__, repeat=False)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--size", default="640x480")
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))

    import open_clip

    from benchmarks.common import machine, record
    from cluster.samples import jpeg_bytes, scene
    from serve_apps.decode import DaliDecoder, PillowDecoder

    _, _, preprocess = open_clip.create_model_and_transforms("ViT-B-32", pretrained=None)
    cfg_mean, cfg_std = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
    photos = [jpeg_bytes(scene(i, max(width, height)).resize((width, height)))
              for i in range(args.images)]
    pillow = PillowDecoder(preprocess)
    rows = []
    for threads in (1, 2):
        dali = DaliDecoder(image_size=224, mean=cfg_mean, std=cfg_std,
                           max_batch_size=args.batch, device="cpu", fallback=pillow,
                           num_threads=threads)
        dali.decode(photos[: args.batch])  # warm-up
        start = time.perf_counter()
        for i in range(0, len(photos), args.batch):
            dali.decode(photos[i : i + args.batch])
        dali_rate = len(photos) / (time.perf_counter() - start)

        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(pillow.decode_one, photos[: args.batch]))
            start = time.perf_counter()
            list(pool.map(pillow.decode_one, photos))
            pillow_rate = len(photos) / (time.perf_counter() - start)
        rows.append({"threads": threads, "dali_cpu_images_per_s": round(dali_rate, 1),
                     "pillow_images_per_s": round(pillow_rate, 1),
                     "dali_over_pillow": round(dali_rate / pillow_rate, 2)})
        print(rows[-1], flush=True)
    print(f"machine: {machine()}; {args.images} JPEGs of {args.size}")
    print("| threads | DALI CPU images/s | Pillow images/s | DALI / Pillow |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['threads']} | {r['dali_cpu_images_per_s']} | {r['pillow_images_per_s']} | "
              f"{r['dali_over_pillow']} |")
    print(f"recorded in {record('decode', {'size': args.size, 'rows': rows})}")


if __name__ == "__main__":
    main()
