"""Decode + preprocess on the CPU, per decoder: throughput with 1 and 2 threads and CPU
milliseconds per image, at 0.3 MP and 12 MP.

    python -m benchmarks.decode_bench [--decoders cpu dali torch pillow] [--threads 1 2]
        [--repeat 3]

Every decoder makes the Embedder's outputs for ViT-B-32 (224 px model input, 320 px
thumbnail, 64 px hash image, fingerprint) from the same JPEGs: ``cpu`` (Pillow over a
thread pool, JPEGs decoded at a reduced DCT scale), ``dali`` (DALI's CPU pipeline),
``torch`` (torchvision's decode_jpeg and transforms, on the CPU here), ``pillow`` (open_clip's
own transform on a full decode, one thread). "decode phase" adds what the Embedder does
next with the same decode (window hashes, the thumbnail's JPEG), as ``embed_items`` does.

CPU ms per image is the process's CPU time (every thread) over the images. Inputs: the
photo-like scenes of ``benchmarks/stage_cost.py`` (1.5 MB at 12 MP, JPEG quality 90) and
noisier pictures (``cluster.samples.photo``, 4.8 MB at 12 MP): a JPEG's decode cost grows
with its compressed size even at 1/8 scale (every coefficient is still entropy-decoded).
``--repeat N``: the whole table N times, medians with their min-max. Results go to
benchmarks/runs/ (``--record``: results/decode.json).
"""

from __future__ import annotations

import io
import os
import time
from types import SimpleNamespace
from typing import Any

INPUTS = {  # name: (width, height, pictures, images)
    "jpeg 0.3 MP": (640, 480, "scene", 64),
    "jpeg 12 MP": (4000, 3000, "scene", 8),
    "jpeg 12 MP noisy": (4000, 3000, "photo", 4),
}
MEAN, STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


def jpegs(width: int, height: int, kind: str, count: int) -> list[bytes]:
    from benchmarks.stage_cost import photo_bytes
    from cluster.samples import photo

    if kind == "scene":
        return [photo_bytes(width, height, "JPEG", seed) for seed in range(count)]
    out = []
    for seed in range(count):
        buf = io.BytesIO()
        photo(width, height, seed).save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def decode_phase(decoder: Any, items: list[bytes], full: bool) -> None:
    """The decoder's answer; with ``full``, the window hashes and thumbnail JPEGs too."""
    from deeplens.image_hashes import window_hashes
    from serve_apps.decode import Decoded, encode_thumbnails

    decoded = decoder.decode(items)
    assert all(isinstance(d, Decoded) for d in decoded), decoded
    if full:
        encode_thumbnails([d.thumbnail for d in decoded])
        for d in decoded:
            window_hashes(d.hash_image)


def measure(decoder: Any, items: list[bytes], batch: int, full: bool,
            passes: int = 3) -> tuple[float, float]:
    """(images per wall second in the fastest pass, CPU ms per image over all passes),
    after a warm-up. The fastest pass: other work on the machine slows some passes."""
    decode_phase(decoder, items[:batch], full)
    walls, cpu = [], time.process_time()
    for _ in range(passes):
        wall = time.perf_counter()
        for start in range(0, len(items), batch):
            decode_phase(decoder, items[start : start + batch], full)
        walls.append(time.perf_counter() - wall)
    cpu = time.process_time() - cpu
    return len(items) / min(walls), 1000 * cpu / (passes * len(items))


def main() -> None:
    from benchmarks.common import BenchParser

    parser = BenchParser(__doc__)
    parser.add_argument("--decoders", nargs="+", default=["cpu", "dali", "torch", "pillow"])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--inputs", nargs="+", default=list(INPUTS))
    args = parser.parse_args()

    import open_clip
    import torch

    from benchmarks.common import machine, record
    from benchmarks.spread import print_spread, repeated
    from serve_apps.decode import make_decoder

    clip = SimpleNamespace(image_size=224, mean=MEAN, std=STD, device=torch.device("cpu"),
                           preprocess=open_clip.image_transform(224, False, mean=MEAN, std=STD))
    sizes: dict[str, float] = {}
    inputs = {}
    for label in args.inputs:
        width, height, kind, count = INPUTS[label]
        inputs[label] = jpegs(width, height, kind, count)
        sizes[label] = round(sum(map(len, inputs[label])) / len(inputs[label]) / 1e6, 2)

    def one_run(_: int) -> dict:
        rows: list[dict[str, Any]] = []
        for label, items in inputs.items():
            for name in args.decoders:
                for threads in ([1] if name == "pillow" else args.threads):
                    torch.set_num_threads(threads)
                    decoder = make_decoder(name, clip=clip, max_batch_size=args.batch,
                                           threads=threads)
                    rate, cpu_ms = measure(decoder, items, args.batch, False)
                    _, phase_ms = measure(decoder, items, args.batch, True)
                    rows.append({"input": label, "decoder": name, "threads": threads,
                                 "images_per_s": round(rate, 1),
                                 "cpu_ms_per_image": round(cpu_ms, 1),
                                 "decode_phase_cpu_ms_per_image": round(phase_ms, 1)})
                    print(rows[-1], flush=True)
        scaling = {}
        for r in rows:
            if r["threads"] == 2:
                one = next(o for o in rows if o["input"] == r["input"] and
                           o["decoder"] == r["decoder"] and o["threads"] == 1)
                scaling[f"{r['decoder']} {r['input']}"] = round(
                    r["images_per_s"] / one["images_per_s"], 2)
        by = {f"{r['decoder']} {r['threads']}t {r['input']}": r for r in rows}
        return {"rows": rows, "by": by, "two_over_one": scaling}

    figures = repeated(args.repeat, one_run)
    rows, scaling = figures["rows"], figures["two_over_one"]
    print(f"machine: {machine()}; MB per JPEG: {sizes}")
    print("| input | decoder | threads | images/s | CPU ms/image | decode phase CPU ms/image |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['input']} | {r['decoder']} | {r['threads']} | {r['images_per_s']} | "
              f"{r['cpu_ms_per_image']} | {r['decode_phase_cpu_ms_per_image']} |")
    print("2 threads / 1 thread:", scaling)
    print_spread(figures)
    load = round(os.getloadavg()[0], 2)  # other work on the machine shares its cores
    path = record("decode", {"mb_per_jpeg": sizes, **figures, "load_average_after": load})
    print(f"recorded in {path}")


if __name__ == "__main__":
    main()
