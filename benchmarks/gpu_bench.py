"""GPU figures for a lent card: JPEG decode and CLIP image encoding vs the card's own peak.

    python benchmarks/gpu_bench.py [--models ViT-B-32 ViT-L-14] [--batches 64 256 1024]
    python benchmarks/gpu_bench.py --smoke      # CPU, tiny sizes: checks the script here

Needs only torch (+ torchvision); uses what else is there:
- decode: DALI ``device="mixed"`` (nvJPEG) when nvidia-dali is importable, else
  ``torchvision.io.decode_jpeg(device="cuda")``;
- model: open_clip (e.g. carried as a wheel) when importable, else timm's identical
  CLIP vision towers (``vit_base_patch32_clip_224``, ``vit_large_patch14_clip_224``),
  random weights either way (speed does not depend on weight values).

The peak is measured, not quoted: a large bf16 matmul on this card. Each model's
share of it is images/s x FLOPs per image (counted by torch's FlopCounterMode) / peak.

**The whole Embedder** (when open_clip and pydantic import):
``serve_apps.embed_batch.embed_items`` with DALI ``mixed`` decoding (Pillow on the host where
DALI is not installed, as on this workplace's lent cards), the dedup hashes and
thumbnails, and ViT-B-32 in bf16, over 0.3 MP and 12 MP JPEGs, two batches in flight
(one decoding while the other is on the model, as the Serve deployment runs them).
Reports images/s and the model's busy fraction.

Prints markdown tables and writes results/gpu.json.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
from pathlib import Path

import torch

TIMM_NAMES = {"ViT-B-32": "vit_base_patch32_clip_224", "ViT-L-14": "vit_large_patch14_clip_224"}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def matmul_peak_tflops(device: torch.device, n: int, dtype: torch.dtype) -> float:
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(device)
    reps = 20 if device.type == "cuda" else 2
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - start) / 1e12


def make_jpegs(count: int, size: int) -> list[bytes]:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    out = []
    base = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
    for i in range(count):
        img = Image.fromarray(np.roll(base, i * 7, axis=1))
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def decode_rate(jpegs: list[bytes], device: torch.device, batch: int) -> tuple[str, float]:
    try:
        from nvidia.dali import fn, pipeline_def, types

        if device.type != "cuda":
            raise ImportError("DALI mixed decoding needs CUDA")
        import numpy as np

        @pipeline_def(batch_size=batch, num_threads=4, device_id=0)
        def pipe():  # type: ignore[no-untyped-def]
            enc = fn.external_source(name="enc", dtype=types.UINT8)
            img = fn.decoders.image(enc, device="mixed", output_type=types.RGB)
            return fn.resize(img, resize_shorter=224)

        p = pipe()
        p.build()
        arrays = [np.frombuffer(j, dtype=np.uint8) for j in jpegs]
        p.feed_input("enc", arrays[:batch])
        p.run()
        start = time.perf_counter()
        for i in range(0, len(arrays) - batch + 1, batch):
            p.feed_input("enc", arrays[i : i + batch])
            p.run()
        done = (len(arrays) // batch) * batch
        return "dali-mixed (nvJPEG)", done / (time.perf_counter() - start)
    except ImportError:
        from torchvision.io import decode_jpeg

        datas = [torch.frombuffer(bytearray(j), dtype=torch.uint8) for j in jpegs]
        where = "cuda" if device.type == "cuda" else "cpu"
        decode_jpeg(datas[:batch], device=where)
        sync(device)
        start = time.perf_counter()
        for i in range(0, len(datas), batch):
            decode_jpeg(datas[i : i + batch], device=where)
        sync(device)
        return f"torchvision decode_jpeg ({where})", len(datas) / (time.perf_counter() - start)


def vision_tower(name: str, device: torch.device, dtype: torch.dtype, smoke: bool):
    try:
        import open_clip

        model = open_clip.create_model(name, pretrained=None)
        tower, size, source = model.visual, model.visual.image_size, "open_clip"
        size = size[0] if isinstance(size, tuple | list) else size
    except ImportError:
        import timm

        tower = timm.create_model(TIMM_NAMES[name], pretrained=False, num_classes=0)
        size, source = 224, "timm"
    if smoke:
        size = 224
    return tower.to(device=device, dtype=dtype).eval(), size, source


def flops_per_image(tower, size: int, device: torch.device, dtype: torch.dtype) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.randn(1, 3, size, size, device=device, dtype=dtype)
    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        tower(x)
    return float(counter.get_total_flops())


def encode_rate(tower, size: int, batch: int, device: torch.device, dtype: torch.dtype,
                reps: int) -> float:
    x = torch.randn(batch, 3, size, size, device=device, dtype=dtype)
    with torch.inference_mode():
        tower(x)
        sync(device)
        start = time.perf_counter()
        for _ in range(reps):
            tower(x)
        sync(device)
    return batch * reps / (time.perf_counter() - start)


def embedder_rates(device: torch.device, smoke: bool) -> list[dict]:
    """The Embedder's own code end to end, per input size; [] without DALI/open_clip."""
    try:
        import open_clip  # noqa: F401
    except ImportError as exc:
        print(f"whole Embedder: skipped ({exc})")
        return []
    try:
        import nvidia.dali  # noqa: F401

        kind = "dali"
    except ImportError:  # a lent card without DALI (its wheel is too big to carry there)
        kind = "pillow"
        print("whole Embedder: DALI not installed, decoding with Pillow on the host (one thread)")
    from concurrent.futures import ThreadPoolExecutor

    from cluster.samples import photo
    from deeplens.settings import ModelSettings
    from serve_apps.decode import make_decoder
    from serve_apps.embed_batch import Phases, embed_items
    from serve_apps.model import load_clip

    name = "deeplens-tiny" if smoke else "ViT-B-32"
    clip = load_clip(ModelSettings(name=name, pretrained="random", precision="bf16"),
                     device=str(device))
    rows = []
    sizes = {"0.3 MP": (640, 480), "12 MP": (4000, 3000)}
    for label, (width, height) in sizes.items():
        if smoke:
            width, height = width // 8, height // 8
        batch = 4 if smoke else (256 if width < 1000 else 32)
        rounds = 2 if smoke or (kind == "pillow" and width > 1000) else 8
        distinct = [photo(width, height, seed) for seed in range(8)]
        jpegs = []
        for i in range(batch * rounds):
            buf = io.BytesIO()
            distinct[i % 8].save(buf, "JPEG", quality=90)
            jpegs.append(buf.getvalue())
        decoder = make_decoder(kind, clip=clip, max_batch_size=batch)
        chunks = [jpegs[i : i + batch] for i in range(0, len(jpegs), batch)]
        embed_items(clip, decoder, chunks[0], [True] * batch)  # warm-up
        phases = Phases()
        start = time.perf_counter()
        with ThreadPoolExecutor(2) as pool:  # two batches in flight, as in the deployment
            results = list(pool.map(
                lambda c, d=decoder, p=phases: embed_items(clip, d, c, [True] * len(c), p),
                chunks))
        elapsed = time.perf_counter() - start
        assert all(r.ok for chunk in results for r in chunk)
        rows.append({"input": label, "model": clip.model_id, "decoder": decoder.name,
                     "batch": batch, "images_per_s": round(len(jpegs) / elapsed, 1),
                     "busy_fraction": round(phases.model_s / elapsed, 3),
                     "decode_s": round(phases.decode_s, 2), "model_s": round(phases.model_s, 2)})
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", nargs="+", default=["ViT-B-32", "ViT-L-14"])
    parser.add_argument("--batches", type=int, nargs="+", default=[64, 256, 1024])
    parser.add_argument("--dtypes", nargs="+", default=["bf16", "fp16"])
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny sizes")
    parser.add_argument("--out", default=None,
                        help="results file; default benchmarks/runs/gpu-<UTC time>.json")
    parser.add_argument("--record", action="store_true",
                        help="write benchmarks/results/gpu.json (rename it per card)")
    args = parser.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    if device.type != "cuda" and not args.smoke:
        sys.exit("no CUDA device: run on a GPU machine, or --smoke to check the script on CPU")
    if args.smoke:
        args.models, args.batches, args.dtypes = ["ViT-B-32"], [2], ["bf16"]
    card = torch.cuda.get_device_name(0) if device.type == "cuda" else "CPU (smoke run)"
    dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16}
    peak = matmul_peak_tflops(device, 256 if args.smoke else 8192, torch.bfloat16)
    print(f"card: {card}; torch {torch.__version__}; measured bf16 matmul peak {peak:.1f} TFLOP/s")

    jpegs = make_jpegs(8 if args.smoke else 1024, 64 if args.smoke else 512)
    decoder, rate = decode_rate(jpegs, device, 4 if args.smoke else 128)
    print(f"decode 512x512 JPEG, {decoder}: {rate:.0f} images/s")
    rows = []
    for name in args.models:
        for dname in args.dtypes:
            tower, size, source = vision_tower(name, device, dtypes[dname], args.smoke)
            flops = flops_per_image(tower, size, device, dtypes[dname])
            for batch in args.batches:
                try:
                    ips = encode_rate(tower, size, batch, device, dtypes[dname],
                                      reps=1 if args.smoke else 10)
                except torch.cuda.OutOfMemoryError:
                    print(f"{name} {dname} batch {batch}: out of memory")
                    torch.cuda.empty_cache()
                    continue
                share = ips * flops / (peak * 1e12)
                rows.append({"model": name, "source": source, "dtype": dname, "batch": batch,
                             "images_per_s": round(ips, 1), "gflops_per_image": round(flops / 1e9, 2),
                             "share_of_peak": round(share, 3)})
                print(rows[-1], flush=True)
            del tower
            if device.type == "cuda":
                torch.cuda.empty_cache()
    embedder = embedder_rates(device, args.smoke)
    if embedder:
        print("| whole Embedder | decoder | batch | images/s | model busy |\n|---|---|---|---|---|")
        for r in embedder:
            print(f"| {r['input']} JPEG, {r['model']} | {r['decoder']} | {r['batch']} | "
                  f"{r['images_per_s']} | {r['busy_fraction']:.0%} |")
    print("| model | dtype | batch | images/s | GFLOP/image | share of bf16 peak |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['dtype']} | {r['batch']} | {r['images_per_s']} | "
              f"{r['gflops_per_image']} | {r['share_of_peak']:.0%} |")
    sys.path.insert(0, str(Path(__file__).parent.parent))  # run as a file: the repo root
    from benchmarks.common import destination, provenance

    out = destination("gpu", Path(args.out) if args.out else None, args.record)
    out.parent.mkdir(parents=True, exist_ok=True)

    out.write_text(json.dumps({"benchmark": "gpu", **provenance(
                                   f"{card}, {os.cpu_count()} host cores"),
                               "card": card, "torch": torch.__version__,
                               "bf16_peak_tflops": round(peak, 1), "decoder": decoder,
                               "decode_images_per_s": round(rate, 1), "rows": rows,
                               "whole_embedder": embedder}, indent=2))
    print(f"recorded in {out}")


if __name__ == "__main__":
    main()
