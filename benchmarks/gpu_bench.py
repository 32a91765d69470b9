"""The whole Embedder on a lent card, per decoder, at 0.3 and 12 MP; and the model alone.

    python benchmarks/gpu_bench.py [--out PATH]     # a GPU machine: < 5 minutes
    python benchmarks/gpu_bench.py --smoke          # CPU, tiny sizes: checks the script here
    python benchmarks/gpu_bench.py --model-sweep    # also ViT-B-32/L-14 x bf16/fp16 x batches

Needs torch, torchvision, numpy, Pillow, and open_clip + pydantic (carried as wheels:
``benchmarks/gpu_carry.sh``); no Ray, no DALI, no Kafka. For each decoder available:
``dali`` (DALI ``mixed``; only where nvidia-dali imports), ``torch`` (torchvision's
nvJPEG with the transforms on the card) and ``cpu`` (the Pillow pool over every host
core), ``serve_apps.embed_batch.embed_items`` runs the Embedder's own work: decode, model
input, pHash and window hashes, fingerprint, thumbnail JPEG, ViT-B-32 in bf16, two
batches in flight (one decoding while the other is on the model, as the deployment runs
them). Each row: images/s, the model's busy fraction, host CPU ms per image (the
process's CPU time over the images). The results file records card, driver, torch,
torchvision and the decoder of each row.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a file: the repo root

import torch  # noqa: E402

SIZES = {"0.3 MP": (640, 480, 256, 8), "12 MP": (4000, 3000, 32, 4)}  # w, h, batch, rounds


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def card_facts(device: torch.device) -> dict[str, Any]:
    import torchvision

    facts: dict[str, Any] = {"torch": torch.__version__, "torchvision": torchvision.__version__,
                             "host_cores": os.cpu_count()}
    if device.type != "cuda":
        return {"card": "CPU (smoke run)", **facts}
    facts["card"] = torch.cuda.get_device_name(0)
    facts["cuda"] = torch.version.cuda
    try:
        facts["driver"] = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=20).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        facts["driver"] = None
    return facts


def available_decoders(device: torch.device) -> list[str]:
    kinds = []
    try:
        import nvidia.dali  # noqa: F401

        kinds.append("dali")
    except ImportError:
        print("DALI not installed here: its decoder is not measured")
    return [*kinds, "torch", "cpu"]


def jpegs(width: int, height: int, count: int) -> list[bytes]:
    from cluster.samples import scene

    out = []
    for seed in range(8):
        buf = io.BytesIO()
        scene(seed, 1024).resize((width, height)).save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return [out[i % 8] for i in range(count)]


def embedder_row(clip: Any, kind: str, label: str, width: int, height: int, batch: int,
                 rounds: int) -> dict[str, Any]:
    from serve_apps.decode import make_decoder
    from serve_apps.embed_batch import Phases, embed_items

    items = jpegs(width, height, batch * rounds)
    decoder = make_decoder(kind, clip=clip, max_batch_size=batch)
    chunks = [items[i : i + batch] for i in range(0, len(items), batch)]
    embed_items(clip, decoder, chunks[0], [True] * batch)  # warm-up: kernels, pools
    sync(clip.device)
    phases = Phases()
    wall, cpu = time.perf_counter(), time.process_time()
    with ThreadPoolExecutor(2) as pool:  # two batches in flight, as in the deployment
        results = list(pool.map(
            lambda c: embed_items(clip, decoder, c, [True] * len(c), phases), chunks))
    sync(clip.device)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    failed = sum(not r.ok for chunk in results for r in chunk)
    row = {"input": f"{label} JPEG", "decoder": decoder.name, "model": clip.model_id,
           "batch": batch, "images": len(items), "failed": failed,
           "images_per_s": round(len(items) / wall, 1),
           "busy_fraction": round(phases.model_s / wall, 3),
           "host_cpu_ms_per_image": round(1000 * cpu / len(items), 2),
           "decode_s": round(phases.decode_s, 2), "model_s": round(phases.model_s, 2)}
    print(row, flush=True)
    return row


def model_rate(clip: Any, batch: int, reps: int) -> float:
    from serve_apps.model import encode_images

    x = torch.randn(batch, 3, clip.image_size, clip.image_size, device=clip.device)
    encode_images(clip, x)
    sync(clip.device)
    start = time.perf_counter()
    for _ in range(reps):
        encode_images(clip, x)
    sync(clip.device)
    return batch * reps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny model and sizes")
    parser.add_argument("--decoders", nargs="+", default=None, help="default: all available")
    parser.add_argument("--model-sweep", action="store_true",
                        help="also the model-only sweep (benchmarks/gpu_sweep.py)")
    parser.add_argument("--out", default=None,
                        help="results file; default benchmarks/runs/gpu-<UTC time>.json")
    parser.add_argument("--record", action="store_true",
                        help="write benchmarks/results/gpu.json (rename it per card)")
    args = parser.parse_args()
    started = time.perf_counter()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    if device.type != "cuda" and not args.smoke:
        sys.exit("no CUDA device: run on a GPU machine, or --smoke to check the script on CPU")
    from deeplens.settings import ModelSettings
    from serve_apps.model import load_clip

    facts = card_facts(device)
    print(facts, flush=True)
    name = "deeplens-tiny" if args.smoke else "ViT-B-32"
    clip = load_clip(ModelSettings(name=name, pretrained="random", precision="bf16"),
                     device=str(device))
    model_batch = 8 if args.smoke else 256
    model_only = {"batch": model_batch, "images_per_s": round(model_rate(
        clip, model_batch, 1 if args.smoke else 20), 1)}
    print(f"model only, {clip.model_id} {clip.dtype}: {model_only}", flush=True)
    rows = []
    for kind in args.decoders or available_decoders(device):
        for label, (width, height, batch, rounds) in SIZES.items():
            if args.smoke:
                width, height, batch, rounds = width // 8, height // 8, 4, 2
            try:
                rows.append(embedder_row(clip, kind, label, width, height, batch, rounds))
            except Exception as exc:  # noqa: BLE001 - one decoder's failure is a finding
                print(f"{kind} at {label}: {type(exc).__name__}: {exc}", flush=True)
                rows.append({"input": f"{label} JPEG", "decoder": kind,
                             "error": f"{type(exc).__name__}: {str(exc)[:300]}"})
    sweep = []
    if args.model_sweep:
        from benchmarks.gpu_sweep import sweep_rows

        sweep = sweep_rows(device, args.smoke)
    print("| whole Embedder | decoder | batch | images/s | model busy | host CPU ms/image |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        if "error" not in r:
            print(f"| {r['input']}, {r['model']} | {r['decoder']} | {r['batch']} | "
                  f"{r['images_per_s']} | {r['busy_fraction']:.0%} | "
                  f"{r['host_cpu_ms_per_image']} |")
    from benchmarks.common import destination, provenance

    out = destination("gpu", Path(args.out) if args.out else None, args.record)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "benchmark": "gpu", **provenance(f"{facts['card']}, {os.cpu_count()} host cores"),
        **facts, "model_only": model_only, "whole_embedder": rows, "rows": sweep,
        "seconds": round(time.perf_counter() - started, 1)}, indent=2))
    print(f"recorded in {out} ({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
